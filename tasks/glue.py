"""GLUE tasks (iapt.txt Table 1): RTE. Hub `nyu-mll/glue`, or the original `.tsv` files via `data_dir=`.

    python run.py backbone=tiny task=rte runner=debug data_dir=../shared/data/glue/RTE
"""

from __future__ import annotations

from dataclasses import dataclass

from tasks.base import Example, Task, TaskConfig, local_file
from tasks.metrics import accuracy
from tasks.registry import register_task


def load_glue(hub_config: str, data_dir: str | None, splits=("train", "validation")) -> dict[str, list[dict]]:
    """Rows of a GLUE task through `datasets.load_dataset`, from the hub or from the original TSVs.

    Local TSV files name the validation split `dev.tsv` and keep the label as text; the hub uses
    integer labels. Rows come back as dicts with the hub's column names and the label as text.
    """
    import datasets

    if data_dir is None:
        ds = datasets.load_dataset("nyu-mll/glue", hub_config)
        out = {}
        for split in splits:
            names = ds[split].features["label"].names
            out[split] = [dict(r, label=names[r["label"]] if r["label"] >= 0 else None) for r in ds[split]]
        return out
    files = {s: local_file(data_dir, "dev.tsv" if s == "validation" else f"{s}.tsv") for s in splits}
    # GLUE TSVs contain unbalanced quotes: read them with quoting disabled (csv.QUOTE_NONE == 3).
    ds = datasets.load_dataset("csv", data_files=files, delimiter="\t", quoting=3, keep_default_na=False)
    return {s: [dict(r) for r in ds[s]] for s in splits}


@dataclass
class RteConfig(TaskConfig):
    name: str = "rte"
    max_new_tokens: int = 8  # 'not entailment' is 3-4 tokens


@register_task("rte", RteConfig)
class Rte(Task):
    """RTE with the Appendix D NLI template; labels 'entailment' / 'not entailment'."""

    labels = ["entailment", "not entailment"]

    def load_raw(self, data_dir):
        return load_glue("rte", data_dir)

    def to_example(self, row, idx):
        label = str(row["label"]).replace("_", " ")
        query = (
            f"sentence 1: {row['sentence1']}\n"
            f"sentence 2: {row['sentence2']}\n"
            "Are sentence 1 and sentence 2 have entailment relation or not?"
        )
        return Example(id=str(row.get("idx", row.get("index", idx))), query=query, response=label, label=label)

    def score(self, predictions, examples):
        return accuracy(predictions, [e.references for e in examples])
