"""Hydra callback: after a run or a sweep, print the table of the cells it touched (and the
untrained backbone's zero-shot row when there is one), where the result files went, and W&B's folder."""

from __future__ import annotations

import os

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


def print_cell_table(results_dir: str, backbone: str, task: str) -> None:
    from runners.aggregate import problems_markdown, scan, summarize, to_markdown

    found, problems = scan(results_dir)
    records = [r for r in found if r["backbone"] == backbone and r["task"] == task]
    problems = [p for p in problems if p["backbone"] == backbone and p["task"] == task]
    print(f"\n== {backbone} / {task}: median over seeds (test split) ==")
    summary = summarize(records)
    print(to_markdown(summary) + problems_markdown(problems), end="")
    for line in chance_notes(summary, records):
        print(line)
    print(f"result files: {os.path.join(results_dir, backbone, task)}/")
    wandb_dirs = sorted({r.get("wandb_dir") for r in records if r.get("wandb_dir")})
    if wandb_dirs:
        print(f"W&B runs (offline ones: `wandb sync {wandb_dirs[-1]}`): {', '.join(wandb_dirs[-3:])}")


def chance_notes(summary, records: list[dict], margin: float = 5.0) -> list[str]:
    """A line for every cell whose median is within `margin` points of the task's chance level (a uniform
    guess among the answer choices, from the records), so a table never shows a method at chance silently."""
    chance = {(r["task"], r["cell"]): r.get("chance") for r in records if r.get("chance") is not None}
    notes = []
    for row in summary.itertuples():
        c = chance.get((row.task, row.cell))
        if c is not None and abs(row.median - c) <= margin:
            notes.append(f"note: {row.cell} on {row.task} ({row.median:.1f}) is at chance level ({c:.0f}% for a "
                         f"uniform guess): it has not learned the task at this budget")
    return notes


class PrintTable(Callback):
    """Collects the (results_dir, backbone, task) of each job, prints their tables at the end."""

    def __init__(self) -> None:
        self.cells: list[tuple[str, str, str]] = []
        self.enabled = True

    def on_job_end(self, config: DictConfig, job_return=None, **kwargs) -> None:
        self.enabled = bool(config.get("print_table", True))
        key = (config.results_dir, config.backbone.name, config.task.name)
        if key not in self.cells:
            self.cells.append(key)

    def _print(self) -> None:
        if not self.enabled:
            return
        for results_dir, backbone, task in self.cells:
            try:
                print_cell_table(results_dir, backbone, task)
            except Exception as e:  # a table is a convenience; never fail the run for it
                print(f"(could not print the table: {e})")

    def on_run_end(self, config: DictConfig, **kwargs) -> None:
        self._print()

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        self._print()
