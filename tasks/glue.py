"""GLUE tasks: SST-2, RTE, QNLI (iapt.txt Table 1) and MNLI, MRPC, QQP (id-spam.txt Table 1).

Hub `nyu-mll/glue`, or the original GLUE `.tsv` files via `data_dir=` (train.tsv, dev.tsv; MNLI
dev_matched.tsv / dev_mismatched.tsv). Splits follow iapt.txt Appendix C. SST-2, MRPC and QQP can be
trained on their transfer partner (`task.source=imdb|qqp|mrpc`, id-spam.txt 3.4).

    python run.py backbone=tiny task=rte runner=debug data_dir=../shared/data/glue/RTE
    python run.py task=mrpc task.source=qqp                          # QQP -> MRPC zero-shot transfer
"""

from __future__ import annotations

from dataclasses import dataclass

from core.errors import UserError
from tasks.base import DataError, Example, TaskConfig
from tasks.common import (
    BadLabel,
    BenchTask,
    CarveConfig,
    label_name,
    load_hub,
    load_local,
    transfer_splits,
    tsv_problem,
)
from tasks.metrics import acc_f1
from tasks.registry import register_task

# Hub ClassLabel names, in class-id order (the local TSVs store either these names or the ids).
GLUE_LABELS = {
    "sst2": ["negative", "positive"],
    "qnli": ["entailment", "not_entailment"],
    "rte": ["entailment", "not_entailment"],
    "mnli": ["entailment", "neutral", "contradiction"],
    "mrpc": ["not_equivalent", "equivalent"],
    "qqp": ["not_duplicate", "duplicate"],
}
# Original TSV column -> hub column.
LOCAL_COLUMNS = {
    "sst2": {"sentence": "sentence", "label": "label"},
    "qnli": {"index": "idx", "question": "question", "sentence": "sentence", "label": "label"},
    "rte": {"index": "idx", "sentence1": "sentence1", "sentence2": "sentence2", "label": "label"},
    "mnli": {"index": "idx", "sentence1": "premise", "sentence2": "hypothesis", "gold_label": "label"},
    "mrpc": {"#1 String": "sentence1", "#2 String": "sentence2", "Quality": "label"},
    "qqp": {"id": "idx", "question1": "question1", "question2": "question2", "is_duplicate": "label"},
}
NLI_QUESTION = "Are sentence 1 and sentence 2 have entailment relation or not?"  # Appendix D, verbatim
PARAPHRASE_QUESTION = "Are sentence 1 and sentence 2 equivalent or not?"


def load_glue(hub_config: str, data_dir: str | None, splits=("train", "validation"),
              hub_validation: str = "validation", local_validation: str = "dev.tsv") -> dict[str, list[dict]]:
    """Rows of a GLUE task through `datasets.load_dataset`, from the hub or from the original TSVs.

    Rows come back with the hub's column names and the label as the hub's label name (e.g.
    'not_entailment'); local TSVs are renamed and their integer labels mapped to those names.
    """
    names = GLUE_LABELS[hub_config]
    if data_dir is None:
        hub_split = {"train": "train", "validation": hub_validation}
        raw = load_hub("nyu-mll/glue", hub_config, tuple(hub_split[s] for s in splits))
        return {
            s: [dict(r, label=names[r["label"]] if r["label"] >= 0 else None) for r in raw[hub_split[s]]]
            for s in splits
        }
    from tasks.base import local_files

    names_of = {s: local_validation if s == "validation" else f"{s}.tsv" for s in splits}
    paths = local_files(data_dir, list(dict.fromkeys(names_of.values())), hub_config)
    files = {s: paths[n] for s, n in names_of.items()}
    cols = LOCAL_COLUMNS[hub_config]
    label_col = next(old for old, new in cols.items() if new == "label")
    out = {}
    for s, path in files.items():
        try:
            # GLUE TSVs contain unbalanced quotes: read them with quoting disabled (csv.QUOTE_NONE == 3);
            # utf-8-sig drops the byte-order mark that starts MRPC's header.
            rows = load_local("csv", {s: path}, delimiter="\t", quoting=3, keep_default_na=False,
                              encoding="utf-8-sig")[s]
        except UserError as e:  # e.g. a short row or a text label in an integer column: name its line
            raise tsv_problem(path, s, label_col, names) or e from None
        missing = [c for c in cols if c not in rows[0]]
        if missing:
            raise DataError(f"data file '{path}' ({s}) lacks column(s) {', '.join(missing)} of the original GLUE "
                            f"{hub_config} TSV; its header: {', '.join(rows[0])}")
        last = list(rows[0])[-1]  # a row with fewer fields than the header is read with '' in its last column
        if any(r[last] in ("", None) for r in rows) and (problem := tsv_problem(path, s)):
            raise problem
        try:
            out[s] = [{new: (label_name(r[old], names) if new == "label" else r[old]) for old, new in cols.items()}
                      for r in rows]
        except BadLabel as e:
            raise tsv_problem(path, s, label_col, names) or UserError(f"data file '{path}' ({s}): {e}") from None
    return out


class GlueTask(BenchTask):
    """A GLUE classification task; `words` maps hub label names to the Appendix D label words."""

    hub_id = "nyu-mll/glue"
    hub_config = ""
    words: dict[str, str] = {}  # hub label name -> label word
    labels: list[str] = []  # label words in hub class-id order (encoder heads use this order)
    metric = "acc"  # 'acc' (iapt.txt) or 'acc-f1' (id-spam.txt: MRPC, QQP)

    def load_raw(self, data_dir):
        return load_glue(self.hub_config, data_dir, self.raw_splits())

    def word(self, row) -> str:
        return self.words[str(row["label"])]

    def example(self, row, idx, query, text: tuple[str, ...] = ()) -> Example:
        label = self.word(row)
        return Example(id=str(row.get("idx", idx)), query=query, response=label, label=label, text=text)

    def score(self, predictions, examples):
        refs = [e.references for e in examples]
        if self.metric == "acc-f1":
            return acc_f1(predictions, refs, self.labels)
        out = acc_f1(predictions, refs, self.labels)
        return {"acc": out["acc"], "f1": out["f1"], "acc-f1": out["acc-f1"]}

    def splits(self, data_dir=None):
        if getattr(self.cfg, "source", None) not in (None, self.cfg.name):
            return transfer_splits(self, data_dir, super().splits)
        return super().splits(data_dir)


def nli_query(s1: str, s2: str, question: str = NLI_QUESTION) -> str:
    return f"sentence 1: {s1}\nsentence 2: {s2}\n{question}"


# --- SST-2 ---------------------------------------------------------------------------------------
@dataclass
class Sst2Config(TaskConfig):
    name: str = "sst2"
    local_dir: str | None = "glue/SST-2"  # its original files under data_root (../shared/data layout)
    max_new_tokens: int = 4  # 'positive' / 'negative'
    source: str | None = None  # training task: null/sst2 = SST-2 itself; imdb = IMDB -> SST-2 transfer
    source_data_dir: str | None = None  # local folder of the source task's files (when data_dir is set)


@register_task("sst2", Sst2Config)
class Sst2(GlueTask):
    """SST-2 with the Appendix D sentiment template; labels 'negative' / 'positive'."""

    hub_config = "sst2"
    words = {"negative": "negative", "positive": "positive"}
    labels = ["negative", "positive"]
    transfer_sources = ("imdb",)

    def to_example(self, row, idx):
        return self.example(row, idx, sentiment_query(row["sentence"]), (row["sentence"].strip(),))


def sentiment_query(text: str) -> str:
    """Appendix D SST-2 template (also used for IMDB, the SST-2 -> IMDB transfer target)."""
    return f"{text.strip()}\nThe sentiment of the given sentence is:"


# --- RTE / QNLI ----------------------------------------------------------------------------------
@dataclass
class RteConfig(TaskConfig):
    name: str = "rte"
    local_dir: str | None = "glue/RTE"  # its original files under data_root (../shared/data layout)
    max_new_tokens: int = 8  # 'not entailment' is 3-4 tokens


@register_task("rte", RteConfig)
class Rte(GlueTask):
    """RTE with the Appendix D NLI template; labels 'entailment' / 'not entailment'."""

    hub_config = "rte"
    words = {"entailment": "entailment", "not_entailment": "not entailment"}
    labels = ["entailment", "not entailment"]

    def to_example(self, row, idx):
        return self.example(row, idx, nli_query(row["sentence1"], row["sentence2"]), (row["sentence1"], row["sentence2"]))


@dataclass
class QnliConfig(CarveConfig):
    name: str = "qnli"
    local_dir: str | None = "glue/QNLI"  # its original files under data_root (../shared/data layout)
    max_new_tokens: int = 8  # 'not entailment' is 3-4 tokens


@register_task("qnli", QnliConfig)
class Qnli(GlueTask):
    """QNLI with the Appendix D NLI template (sentence 1 = question, sentence 2 = context sentence)."""

    hub_config = "qnli"
    words = {"entailment": "entailment", "not_entailment": "not entailment"}
    labels = ["entailment", "not entailment"]

    def to_example(self, row, idx):
        return self.example(row, idx, nli_query(row["question"], row["sentence"]), (row["question"], row["sentence"]))


# --- MNLI ----------------------------------------------------------------------------------------
@dataclass
class MnliConfig(TaskConfig):
    name: str = "mnli"
    max_new_tokens: int = 6  # 'entailment' / 'neutral' / 'contradiction'
    validation: str = "matched"  # which original validation set is the test set: matched | mismatched


@register_task("mnli", MnliConfig)
class Mnli(GlueTask):
    """MNLI (id-spam.txt) with an Appendix-D-style template; labels entailment / neutral / contradiction."""

    hub_config = "mnli"
    words = {"entailment": "entailment", "neutral": "neutral", "contradiction": "contradiction"}
    labels = ["entailment", "neutral", "contradiction"]

    def load_raw(self, data_dir):
        which = self.cfg.validation
        if which not in ("matched", "mismatched"):
            raise DataError(f"task.validation='{which}' is not one of matched, mismatched")
        return load_glue("mnli", data_dir, self.raw_splits(), f"validation_{which}", f"dev_{which}.tsv")

    def to_example(self, row, idx):
        question = "Are sentence 1 and sentence 2 have entailment, neutral or contradiction relation?"
        return self.example(row, idx, nli_query(row["premise"], row["hypothesis"], question),
                            (row["premise"], row["hypothesis"]))


# --- MRPC / QQP ----------------------------------------------------------------------------------
@dataclass
class MrpcConfig(TaskConfig):
    name: str = "mrpc"
    local_dir: str | None = "glue/MRPC"  # its original files under data_root (../shared/data layout)
    max_new_tokens: int = 6  # 'not equivalent' is 3-4 tokens
    source: str | None = None  # training task: null/mrpc = MRPC itself; qqp = QQP -> MRPC transfer
    source_data_dir: str | None = None  # local folder of the source task's files (when data_dir is set)


@register_task("mrpc", MrpcConfig)
class Mrpc(GlueTask):
    """MRPC (id-spam.txt): labels 'equivalent' / 'not equivalent'; score = mean of accuracy and macro-F1."""

    hub_config = "mrpc"
    words = {"not_equivalent": "not equivalent", "equivalent": "equivalent"}
    labels = ["not equivalent", "equivalent"]
    metric = "acc-f1"
    transfer_sources = ("qqp",)

    def to_example(self, row, idx):
        return self.example(row, idx, nli_query(row["sentence1"], row["sentence2"], PARAPHRASE_QUESTION),
                            (row["sentence1"], row["sentence2"]))


@dataclass
class QqpConfig(TaskConfig):
    name: str = "qqp"
    max_new_tokens: int = 6  # 'not equivalent' is 3-4 tokens
    source: str | None = None  # training task: null/qqp = QQP itself; mrpc = MRPC -> QQP transfer
    source_data_dir: str | None = None  # local folder of the source task's files (when data_dir is set)


@register_task("qqp", QqpConfig)
class Qqp(GlueTask):
    """QQP (id-spam.txt) with MRPC's template and label words, so the two transfer into each other."""

    hub_config = "qqp"
    words = {"not_duplicate": "not equivalent", "duplicate": "equivalent"}
    labels = ["not equivalent", "equivalent"]
    metric = "acc-f1"
    transfer_sources = ("mrpc",)

    def to_example(self, row, idx):
        return self.example(row, idx, nli_query(row["question1"], row["question2"], PARAPHRASE_QUESTION),
                            (row["question1"], row["question2"]))
