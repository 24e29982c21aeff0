"""A multi-task mixture (issue #27): one model trained on the union of several classification tasks' training
rows, each row with its own task's instruction, and scored per task. The setting that motivates input-aware
prompts: one static prompt must serve every instruction.

    python run.py task=mixture data_root=../shared/data method=iapt     # SST-2 + RTE + MRPC + CB

Splits: each member's own (its Appendix C carving, as `task=<member>` makes it), ids prefixed `<member>/`,
the members' rows interleaved round-robin (each member's rows first shuffled with `split_seed`), so the
runner's caps (max_train_examples, max_dev_examples, max_test_examples: the first rows) take equal shares
while every member has rows left. Metrics: each member's headline metric as `<metric>_<member>` (acc_sst2,
acc_rte, acc-f1_mrpc, ...) over its own test rows; `mean` (first, the headline): their unweighted mean, as the
papers' Mean column; `acc`: the accuracy over all test rows pooled (what a test example scores alone, for the
example-level paired tests). Likelihood scoring ranks each row's own task's labels (`labels_for`).
"""

from __future__ import annotations

import os
import random
import statistics
from dataclasses import dataclass, field

from omegaconf import OmegaConf

from tasks.base import DataError, Example, Task, TaskConfig
from tasks.registry import TASKS, register_task


@dataclass
class MixtureConfig(TaskConfig):
    name: str = "mixture"
    members: list[str] = field(default_factory=lambda: ["sst2", "rte", "mrpc", "cb"])  # classification tasks mixed
    local_dir: str | None = "."  # the data root itself: each member reads <data_root>/<its local_dir>
    max_new_tokens: int = 8  # the longest of the members' (RTE: 8)


@register_task("mixture", MixtureConfig)
class Mixture(Task):
    """The union of `members` (classification tasks), interleaved, scored per member."""

    protocol = "mixture"

    def __init__(self, cfg):
        super().__init__(cfg)
        if len(set(cfg.members)) != len(cfg.members) or len(cfg.members) < 2:
            raise DataError(f"task.members={list(cfg.members)} must name two or more different tasks")
        self.members = {}
        for name in cfg.members:
            entry = TASKS.get(name)  # an unknown name: one line naming the valid ones
            member = entry.obj(OmegaConf.merge(OmegaConf.structured(entry.schema),
                                               {"template": cfg.template, "split_seed": cfg.split_seed}))
            if not member.labels:
                raise DataError(f"task.members: '{name}' has no label set; a mixture mixes classification tasks")
            self.members[name] = member
        self.labels = sorted({lab for m in self.members.values() for lab in m.labels})

    @property
    def chance(self) -> float | None:
        return statistics.fmean(m.chance for m in self.members.values())

    def labels_for(self, example: Example) -> list[str]:
        return list(self.members[self.member_of(example)].labels)

    @staticmethod
    def member_of(example: Example) -> str:
        return example.id.split("/", 1)[0]

    def splits(self, data_dir: str | None = None) -> dict[str, list[Example]]:
        per = {}
        for name, member in self.members.items():
            folder = os.path.join(data_dir, member.cfg.local_dir) if data_dir and member.cfg.local_dir else None
            if data_dir and not member.cfg.local_dir:
                raise DataError(f"task.members: '{name}' has no local files (local_dir is null); use the hub")
            per[name] = {split: [_renamed(e, f"{name}/{e.id}") for e in rows]
                         for split, rows in member.splits(folder).items()}
        return {split: _interleave([per[name][split] for name in self.members], self.cfg.split_seed)
                for split in ("train", "dev", "test")}

    def score(self, predictions: list[str], examples: list[Example]) -> dict[str, float]:
        by: dict[str, tuple[list[str], list[Example]]] = {}
        for p, e in zip(predictions, examples):
            preds, exs = by.setdefault(self.member_of(e), ([], []))
            preds.append(p)
            exs.append(e)
        out, right = {}, 0.0
        for name, (preds, exs) in by.items():
            metrics = self.members[name].score(preds, exs)
            key = next(iter(metrics))  # the member's headline metric
            out[f"{key}_{name}"] = metrics[key]
            right += metrics["acc"] * len(exs) / 100
        return {"mean": statistics.fmean(out.values()), "acc": 100 * right / max(1, len(examples)),
                **{k: out[k] for k in sorted(out)}}


def _renamed(e: Example, new_id: str) -> Example:
    return Example(id=new_id, query=e.query, response=e.response, references=list(e.references), label=e.label,
                   text=e.text)


def _interleave(groups: list[list[Example]], seed: int) -> list[Example]:
    """Round-robin over the groups, each shuffled with `seed` first; a group that runs out drops out."""
    rng = random.Random(seed)
    queues = []
    for rows in groups:
        rows = list(rows)
        rng.shuffle(rows)
        queues.append(rows)
    out = []
    for i in range(max((len(q) for q in queues), default=0)):
        out += [q[i] for q in queues if i < len(q)]
    return out
