"""IMDB as the target of id-spam.txt's SST-2 -> IMDB zero-shot domain transfer (Table 6).

Default (`task.source=sst2`): train and dev are SST-2's (Appendix C), the test set is IMDB's original
test split (25,000 reviews) in SST-2's Appendix D template, so a model trained on SST-2 is scored on
IMDB. `task.source=imdb` trains on IMDB itself (Appendix C on IMDB's 25,000 training reviews).
Hub `stanfordnlp/imdb` (plain_text), or the aclImdb rebuild `imdb_train.jsonl` / `imdb_test.jsonl`
(id, text, label, rating) via `data_dir=`; SST-2's local files then come from `task.source_data_dir=`.
Score: mean of accuracy and macro-F1, as id-spam.txt Table 6.

    python run.py task=imdb data_dir=../shared/data/imdb task.source_data_dir=../shared/data/glue/SST-2
"""

from __future__ import annotations

from dataclasses import dataclass

from tasks.base import Example, TaskConfig, appendix_c_split, local_files
from tasks.common import (
    BenchTask,
    appendix_c_rule,
    check_fields,
    check_splits,
    label_name,
    load_hub,
    load_local,
    transfer_splits,
)
from tasks.glue import sentiment_query
from tasks.metrics import acc_f1
from tasks.registry import register_task


@dataclass
class ImdbConfig(TaskConfig):
    name: str = "imdb"
    local_dir: str | None = "imdb"  # its original files under data_root (../shared/data layout)
    max_new_tokens: int = 4  # 'positive' / 'negative'
    source: str | None = "sst2"  # training task: sst2 (SST-2 -> IMDB transfer) | imdb (in-domain)
    source_data_dir: str | None = None  # local folder of SST-2's TSVs (when data_dir is set)


@register_task("imdb", ImdbConfig)
class Imdb(BenchTask):
    hub_id = "stanfordnlp/imdb"
    labels = ["negative", "positive"]  # hub class ids 0 = neg, 1 = pos (as SST-2)
    transfer_sources = ("sst2",)

    def load_raw(self, data_dir):
        if data_dir is None:
            raw = load_hub(self.hub_id, "plain_text", ("train", "test"))
        else:
            paths = local_files(data_dir, [f"imdb_{s}.jsonl" for s in ("train", "test")], "imdb")
            files = {s: paths[f"imdb_{s}.jsonl"] for s in ("train", "test")}
            raw = load_local("json", files)
            for s, rows in raw.items():
                check_fields(rows, files[s], s, "imdb", ("text", "label"), self.labels)
        return {"train": raw["train"], "validation": raw["test"]}

    def to_example(self, row, idx):
        label = label_name(row["label"], self.labels)
        text = row["text"].replace("<br /><br />", " ").replace("<br />", " ")  # HTML line breaks of aclImdb
        return Example(id=str(row.get("id", idx)), query=sentiment_query(text), response=label, label=label,
                       text=(text.strip(),))

    def own_splits(self, data_dir):
        raw = self.load_raw(data_dir)
        train = [self.to_example(r, i) for i, r in enumerate(raw["train"])]
        test = [self.to_example(r, i) for i, r in enumerate(raw["validation"])]
        why = appendix_c_rule(len(train), len(test), self.small_threshold).replace("validation set", "test set")
        train, dev, test = appendix_c_split(train, test, self.cfg.split_seed, self.small_threshold)
        return check_splits(self.cfg.name, {"train": train, "dev": dev, "test": test}, why)

    def splits(self, data_dir=None):
        return transfer_splits(self, data_dir, self.own_splits)

    def score(self, predictions, examples):
        return acc_f1(predictions, [e.references for e in examples], self.labels)
