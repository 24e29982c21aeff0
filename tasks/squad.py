"""SQuAD v1.1 (iapt.txt C.2): Appendix D Context/Question template, answer span as response, f1-em metric.

Hub `rajpurkar/squad` (plain_text), or the original `train-v1.1.json` / `dev-v1.1.json` via `data_dir=`.
Splits: 1k training questions held out as dev, the original dev set is the test set (Appendix C).
The local copy has only dev-v1.1.json: `task.carve_from_validation=true` carves train/dev/test out of it
(NOT the papers' protocol; recorded as such).

    python run.py task=squad
    python run.py task=squad data_dir=../shared/data/squad task.carve_from_validation=true
"""

from __future__ import annotations

from dataclasses import dataclass

from tasks.base import Example, local_file
from tasks.common import BenchTask, CarveConfig, load_hub, load_local
from tasks.metrics import squad_f1_em
from tasks.registry import register_task


def flatten_squad(articles: list[dict]) -> list[dict]:
    """Original SQuAD JSON articles (title, paragraphs[context, qas]) -> the hub's one-row-per-question shape."""
    rows = []
    for art in articles:
        for para in art["paragraphs"]:
            for qa in para["qas"]:
                rows.append({
                    "id": qa["id"], "title": art.get("title", ""), "context": para["context"],
                    "question": qa["question"],
                    "answers": {"text": [a["text"] for a in qa["answers"]],
                                "answer_start": [a.get("answer_start", -1) for a in qa["answers"]]},
                })
    return rows


@dataclass
class SquadConfig(CarveConfig):
    name: str = "squad"
    local_dir: str | None = "squad"  # its original files under data_root (../shared/data layout)
    max_new_tokens: int = 32  # answer spans are short


@register_task("squad", SquadConfig)
class Squad(BenchTask):
    """SQuAD v1.1: the response is the first gold answer; scoring takes the max over all gold answers."""

    hub_id = "rajpurkar/squad"

    def load_raw(self, data_dir):
        splits = self.raw_splits()
        if data_dir is None:
            return load_hub(self.hub_id, "plain_text", splits)
        files = {s: local_file(data_dir, "dev-v1.1.json" if s == "validation" else "train-v1.1.json") for s in splits}
        raw = load_local("json", files, field="data")
        return {s: flatten_squad(rows) for s, rows in raw.items()}

    def to_example(self, row, idx):
        answers = list(dict.fromkeys(row["answers"]["text"]))
        return Example(
            id=str(row.get("id", idx)),
            query=f"Context:\n{row['context']}\nQuestion:\n{row['question']}",
            response=answers[0] if answers else "",
            references=answers,
        )

    def score(self, predictions, examples):
        return squad_f1_em(predictions, [e.references for e in examples])
