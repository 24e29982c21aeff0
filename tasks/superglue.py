"""SuperGLUE tasks: BoolQ, COPA, ReCoRD (iapt.txt Table 1) and CB, MultiRC (id-spam.txt 3.3).

Hub `aps/super_glue`, or the original SuperGLUE `.jsonl` files via `data_dir=` (train.jsonl, val.jsonl;
ReCoRD and MultiRC in their nested original format). Splits follow iapt.txt Appendix C. The local copy
of BoolQ, COPA and MultiRC has no train split: `task.carve_from_validation=true` carves one out of
validation, which is NOT the papers' protocol and is recorded as such (tasks/common.py).

    python run.py task=boolq                                                    # hub
    python run.py task=copa data_dir=../shared/data/superglue/COPA task.carve_from_validation=true
"""

from __future__ import annotations

from dataclasses import dataclass

from tasks.base import Example, TaskConfig, local_files
from tasks.common import (
    BadLabel,
    BenchTask,
    CarveConfig,
    check_fields,
    label_name,
    load_hub,
    load_local,
    row_error,
)
from tasks.metrics import acc_f1, accuracy, normalize_label, squad_f1_em
from tasks.registry import register_task


class SuperGlueTask(BenchTask):
    hub_id = "aps/super_glue"
    hub_config = ""

    def load_raw(self, data_dir):
        splits = self.raw_splits()
        if data_dir is None:
            return load_hub(self.hub_id, self.hub_config, splits)
        names = {s: "val.jsonl" if s == "validation" else f"{s}.jsonl" for s in splits}
        paths = local_files(data_dir, list(names.values()), self.cfg.name)
        files = {s: paths[n] for s, n in names.items()}
        raw = load_local("json", files)
        return {s: self.checked_original(rows, files[s], s) for s, rows in raw.items()}

    fields: tuple[str, ...] = ()  # fields every original row needs (flat tasks; the reader fills a missing one with None)

    def checked_original(self, rows: list[dict], path: str, split: str) -> list[dict]:
        """`from_original(rows)`, after checking each row's fields and label; a bad row is one line
        naming the file and its line."""
        if self.fields:
            check_fields(rows, path, split, self.cfg.name, self.fields, self.labels)
            return self.from_original(rows)
        out = []
        for i, row in enumerate(rows):
            try:
                out.extend(self.from_original([row]))
            except BadLabel as e:
                raise row_error(path, split, i, str(e)) from None
            except (KeyError, TypeError, IndexError) as e:  # the json reader fills a missing key with None
                absent = [k for k, v in row.items() if v is None]
                why = f"no {', '.join(repr(k) for k in absent)}" if absent else f"{type(e).__name__}: {e}"
                raise row_error(path, split, i, f"not an original {self.cfg.name} row ({why}); "
                                                "expected the nested SuperGLUE .jsonl format") from None
        return out

    def from_original(self, rows: list[dict]) -> list[dict]:
        """Original-format rows -> the hub's row shape (identity where they already agree)."""
        return rows


# --- BoolQ ---------------------------------------------------------------------------------------
@dataclass
class BoolqConfig(CarveConfig):
    name: str = "boolq"
    local_dir: str | None = "superglue/BoolQ"  # its original files under data_root (../shared/data layout)
    max_new_tokens: int = 4  # 'yes' / 'no'


@register_task("boolq", BoolqConfig)
class Boolq(SuperGlueTask):
    """BoolQ with the Appendix D template (reference document + question); labels 'no' / 'yes'."""

    hub_config = "boolq"
    labels = ["no", "yes"]  # hub class ids 0 = False, 1 = True
    fields = ("question", "passage", "label")

    def to_example(self, row, idx):
        label = label_name(row["label"], self.labels)
        query = f"Reference document:\n{row['passage']}\nQuestion:\n{row['question']}"
        return Example(id=str(row.get("idx", idx)), query=query, response=label, label=label,
                       text=(row["question"], row["passage"]))

    def score(self, predictions, examples):
        return accuracy(predictions, [e.references for e in examples])


# --- COPA ----------------------------------------------------------------------------------------
COPA_QUESTIONS = {"cause": "What was the cause?", "effect": "What happened as a result?"}


@dataclass
class CopaConfig(CarveConfig):
    name: str = "copa"
    local_dir: str | None = "superglue/COPA"  # its original files under data_root (../shared/data layout)
    max_new_tokens: int = 3  # '1' / '2'


@register_task("copa", CopaConfig)
class Copa(SuperGlueTask):
    """COPA with the Appendix D template; the answer is the number of the right choice, '1' or '2'."""

    hub_config = "copa"
    labels = ["1", "2"]  # hub class ids 0 = choice1, 1 = choice2
    fields = ("premise", "choice1", "choice2", "question", "label")

    def to_example(self, row, idx):
        label = label_name(row["label"], self.labels)
        query = (
            f"Premise:\n{row['premise']}\nChoice 1: {row['choice1']}\nChoice 2: {row['choice2']}\n"
            f"Question:\n{COPA_QUESTIONS[row['question']]}"
        )
        return Example(id=str(row.get("idx", idx)), query=query, response=label, label=label)

    def score(self, predictions, examples):
        return accuracy(predictions, [e.references for e in examples])


# --- CB ------------------------------------------------------------------------------------------
@dataclass
class CbConfig(TaskConfig):
    name: str = "cb"
    local_dir: str | None = "superglue/CB"  # its original files under data_root (../shared/data layout)
    max_new_tokens: int = 6  # 'entailment' / 'contradiction' / 'neutral'


@register_task("cb", CbConfig)
class Cb(SuperGlueTask):
    """CB (id-spam.txt) with the NLI template of MNLI; score = mean of accuracy and macro-F1 (SuperGLUE)."""

    hub_config = "cb"
    labels = ["entailment", "contradiction", "neutral"]  # hub class-id order
    fields = ("premise", "hypothesis", "label")

    def to_example(self, row, idx):
        label = label_name(row["label"], self.labels)
        query = (
            f"sentence 1: {row['premise']}\nsentence 2: {row['hypothesis']}\n"
            "Are sentence 1 and sentence 2 have entailment, neutral or contradiction relation?"
        )
        return Example(id=str(row.get("idx", idx)), query=query, response=label, label=label,
                       text=(row["premise"], row["hypothesis"]))

    def score(self, predictions, examples):
        return acc_f1(predictions, [e.references for e in examples], self.labels)


# --- MultiRC -------------------------------------------------------------------------------------
@dataclass
class MultircConfig(CarveConfig):
    name: str = "multirc"
    local_dir: str | None = "superglue/MultiRC"  # its original files under data_root (../shared/data layout)
    max_new_tokens: int = 4  # 'yes' / 'no'


@register_task("multirc", MultircConfig)
class Multirc(SuperGlueTask):
    """MultiRC (id-spam.txt): one example per (paragraph, question, candidate answer), labels 'no' / 'yes'.

    Scored as SuperGLUE does: F1a (binary F1 over all answer options) and EM (a question counts only if
    all its options are right); the main number 'f1a-em' is their mean.
    """

    hub_config = "multirc"
    labels = ["no", "yes"]  # hub class ids 0 = False, 1 = True

    def from_original(self, rows):
        out = []
        for p in rows:
            for q in p["passage"]["questions"]:
                for a in q["answers"]:
                    idx = {"paragraph": p["idx"], "question": q["idx"], "answer": a["idx"]}
                    label_name(a["label"], self.labels)  # a bad one raises BadLabel (checked_original adds the line)
                    out.append({"paragraph": p["passage"]["text"], "question": q["question"], "answer": a["text"],
                                "idx": idx, "label": a["label"]})
        return out

    def to_example(self, row, idx):
        label = label_name(row["label"], self.labels)
        i = row["idx"]
        query = (
            f"Reference document:\n{row['paragraph']}\nQuestion:\n{row['question']}\n"
            f"Candidate answer: {row['answer']}\nIs the candidate answer correct?"
        )
        return Example(id=f"{i['paragraph']}-{i['question']}-{i['answer']}", query=query, response=label, label=label,
                       text=(row["paragraph"], f"{row['question']} {row['answer']}"))

    def score(self, predictions, examples):
        assert len(predictions) == len(examples), f"{len(predictions)} predictions vs {len(examples)} examples"
        if not predictions:
            return {"f1a-em": 0.0, "f1a": 0.0, "em": 0.0, "acc": 0.0}
        pred = [normalize_label(p) for p in predictions]
        gold = [normalize_label(e.references[0]) for e in examples]
        tp = sum(p == "yes" and g == "yes" for p, g in zip(pred, gold))
        fp = sum(p == "yes" and g != "yes" for p, g in zip(pred, gold))
        fn = sum(p != "yes" and g == "yes" for p, g in zip(pred, gold))
        f1a = 100.0 * 2 * tp / (2 * tp + fp + fn) if tp else 0.0
        questions: dict[str, bool] = {}
        for p, g, e in zip(pred, gold, examples):
            key = e.id.rsplit("-", 1)[0]  # '<paragraph>-<question>'
            questions[key] = questions.get(key, True) and p == g
        em = 100.0 * sum(questions.values()) / len(questions)
        acc = 100.0 * sum(p == g for p, g in zip(pred, gold)) / len(pred)
        return {"f1a-em": (f1a + em) / 2, "f1a": f1a, "em": em, "acc": acc}


# --- ReCoRD --------------------------------------------------------------------------------------
@dataclass
class RecordConfig(TaskConfig):
    name: str = "record"
    max_new_tokens: int = 24  # answers are entity names


@register_task("record", RecordConfig)
class Record(SuperGlueTask):
    """ReCoRD with the Appendix D Context/Question template; the query keeps its '@placeholder' and the
    response is the entity that fills it. Scored with SQuAD's F1/EM, max over the gold entities."""

    hub_config = "record"

    def from_original(self, rows):
        out = []
        for p in rows:
            text = p["passage"]["text"]
            for qa in p["qas"]:
                answers = [a["text"] for a in qa.get("answers") or []]
                out.append({
                    # the hub (HF's SuperGLUE builder) shows '@highlight' summary lines as '- ' bullets
                    "passage": text.replace("@highlight\n", "- "),
                    "query": qa["query"],
                    "entities": sorted({text[e["start"]:e["end"] + 1] for e in p["passage"]["entities"]}),
                    "answers": answers,
                    "idx": {"passage": p["idx"], "query": qa["idx"]},
                })
        return out

    def to_example(self, row, idx):
        answers = list(dict.fromkeys(row.get("answers") or []))
        i = row.get("idx") or {"passage": idx, "query": 0}
        return Example(
            id=f"{i['passage']}-{i['query']}",
            query=f"Context:\n{row['passage']}\nQuestion:\n{row['query']}",
            response=answers[0] if answers else "",
            references=answers,
        )

    def score(self, predictions, examples):
        return squad_f1_em(predictions, [e.references for e in examples])
