"""SYNTHETIC task for offline runs: `synth-compare` — "Which is larger: 47 or 803?" -> "803".

Not a benchmark from the papers. It needs no download, is fully determined by `split_seed`, and is
scored by exact match of the normalized answer. Pretrained SmolLM2 knows which number is larger
but answers in free text; a PEFT module learns the answer format (and the rule) within a few dozen
steps, which makes the trained-vs-untrained gap visible in the offline main job (`python run.py`).

    python run.py task=synth-compare
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from tasks.base import Example, Task, TaskConfig
from tasks.metrics import accuracy
from tasks.registry import register_task


@dataclass
class SynthCompareConfig(TaskConfig):
    name: str = "synth-compare"
    template: str = "plain"  # short sequences keep CPU training fast
    max_new_tokens: int = 6  # answers are numbers of at most 3 digits (+ EOS)
    n_train: int = 2000  # generated training rows
    n_validation: int = 400  # generated validation rows (halved into dev and test, Appendix C)
    max_value: int = 999  # numbers are drawn from [0, max_value]
    # inherited split_seed also seeds the generator: the same data for every run seed


@register_task("synth-compare", SynthCompareConfig)
class SynthCompare(Task):
    chance = 50.0  # two numbers to choose from
    def load_raw(self, data_dir):
        rng = random.Random(self.cfg.split_seed)
        seen: set[tuple[int, int]] = set()

        def draw(n):
            rows = []
            while len(rows) < n:
                a, b = rng.randint(0, self.cfg.max_value), rng.randint(0, self.cfg.max_value)
                if a == b or (a, b) in seen:
                    continue
                seen.add((a, b))  # no pair appears in two splits
                rows.append({"a": a, "b": b})
            return rows

        return {"train": draw(self.cfg.n_train), "validation": draw(self.cfg.n_validation)}

    def to_example(self, row, idx):
        a, b = row["a"], row["b"]
        return Example(id=f"{a}-{b}", query=f"Which is larger: {a} or {b}?", response=str(max(a, b)))

    def score(self, predictions, examples):
        return accuracy(predictions, [e.references for e in examples])
