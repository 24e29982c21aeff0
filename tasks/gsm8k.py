"""GSM8K (iapt.txt C.4): grade-school math with step-by-step solutions; accuracy of the final number.

Hub `openai/gsm8k` (config main), or the original `train.jsonl` / `test.jsonl` (openai/grade-school-math)
via `data_dir=`. Splits: 500 random training problems are the dev set, the original test set (1,319)
is the test set. The response is the full reference solution (calculator annotations and the final
`#### <number>` line included); a prediction is right when its last number equals the gold number.

    python run.py task=gsm8k data_dir=../shared/data/gsm8k
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from tasks.base import Example, TaskConfig, local_file
from tasks.common import BenchTask, check_splits, load_hub, load_local
from tasks.metrics import gsm8k_accuracy
from tasks.registry import register_task


@dataclass
class Gsm8kConfig(TaskConfig):
    name: str = "gsm8k"
    local_dir: str | None = "gsm8k"  # its original files under data_root (../shared/data layout)
    max_new_tokens: int = 320  # solutions run to ~200 tokens
    dev_size: int = 500  # training problems held out as dev (iapt.txt C.4: 0.5k)


@register_task("gsm8k", Gsm8kConfig)
class Gsm8k(BenchTask):
    hub_id = "openai/gsm8k"

    def load_raw(self, data_dir):
        if data_dir is None:
            return load_hub(self.hub_id, "main", ("train", "test"))
        return load_local("json", {s: local_file(data_dir, f"{s}.jsonl") for s in ("train", "test")})

    def to_example(self, row, idx):
        query = f"Answer the following math question:\n{row['question']}\nInstruction: please think step by step."
        return Example(id=str(idx), query=query, response=row["answer"])

    def splits(self, data_dir=None):
        raw = self.load_raw(data_dir)
        train = [self.to_example(r, i) for i, r in enumerate(raw["train"])]
        test = [self.to_example(r, i) for i, r in enumerate(raw["test"])]
        for e in train:
            e.id = f"train-{e.id}"
        for e in test:
            e.id = f"test-{e.id}"
        order = list(range(len(train)))
        random.Random(self.cfg.split_seed).shuffle(order)
        held = set(order[: self.cfg.dev_size])
        dev = [train[i] for i in sorted(held)]
        why = f"task.dev_size={self.cfg.dev_size} of the {len(train)} training problems are held out as dev"
        return check_splits(self.cfg.name, {"train": [e for i, e in enumerate(train) if i not in held], "dev": dev,
                                            "test": test}, why)

    def score(self, predictions, examples):
        return gsm8k_accuracy(predictions, [e.references for e in examples])
