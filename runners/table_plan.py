"""The plan of a paper table: its experiment's grid, the state of every run of it, the learning-rate search
of an experiment with `lr_grid`, and the one-line summaries with the wall time left.

    cfg, axes = grid("iapt_table1_cpu")      # the composed config, {method/task/seed/...: values}
    p = plan(cfg, axes)                      # every run: done | failed | corrupt | to run
    print(describe("iapt_table1_cpu", p))    # counts and the wall time left
    search = search_plan(cfg, axes)          # None without lr_grid; else its runs, dev losses, choices

scripts/table.py prints these, runs what is missing and renders the table (runners/tables.py).
"""

from __future__ import annotations

import itertools
import os
import statistics

from core.errors import UserError
from runners import results as R

ABLATION = "+ablation"  # the grid key of per-cell overrides (conf/ablation/<cell>.yaml)
SEARCH_DIR = "lr_search"  # <results_dir>/lr_search: the learning-rate search's records, never aggregated


def cells_of(axes: dict[str, list[str]]) -> list[str]:
    """The table's rows: the ablation options (each names its cell), else the variants, else the methods."""
    return axes.get(ABLATION) or axes.get("variant") or axes["method"]


def grid(experiment: str, overrides: list[str] = ()) -> tuple[object, dict[str, list[str]]]:
    """(the experiment's composed config, {key: values}) of its sweeper params."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from core.config import compose

    cfg = compose([f"experiment={experiment}", *overrides], return_hydra_config=True)
    params = dict(cfg.hydra.sweeper.params or {})
    if not params:
        raise UserError(f"experiment={experiment} has no hydra.sweeper.params grid (method, task, seed)")
    parser = OverridesParser.create()
    out = {}
    for key, value in params.items():
        override = parser.parse_override(f"{key}={value}")
        out[key] = [str(v) for v in override.sweep_string_iterator()] if override.is_sweep_override() else [str(value)]
    missing = [k for k in ("method", "task", "seed") if k not in out]
    if missing:
        raise UserError(f"experiment={experiment}'s grid lacks {', '.join(missing)} (it has {', '.join(out)})")
    return cfg, out


def run_state(path: str) -> tuple[str, float | None, dict | None]:
    """(done | failed | corrupt | to run, its wall time, its record) of one run's record path."""
    if os.path.exists(path):
        try:
            rec = R.read_record(path)
        except R.CorruptRecord:
            return "corrupt", None, None
        return ("done", rec.get("wall_time_s"), rec) if rec.get("status") == "ok" else ("failed", None, rec)
    return ("failed" if os.path.exists(R.failed_path(path)) else "to run"), None, None


def plan(cfg, axes: dict[str, list[str]]) -> dict:
    """Every run of the grid with its state: done (a finished record), failed, or to run."""
    cells = cells_of(axes)
    backbones = axes.get("backbone") or [cfg.backbone.name]
    runs = []
    for (backbone, cell, task, seed) in itertools.product(backbones, cells, axes["task"], axes["seed"]):
        path = R.run_path(cfg.results_dir, backbone, task, cell, seed)
        state, wall, _ = run_state(path)
        runs.append({"backbone": backbone, "cell": cell, "task": task, "seed": int(seed), "path": path, "state": state, "wall": wall})
    return {"runs": runs, "cells": cells, "tasks": axes["task"], "backbones": backbones}


def lr_str(lr) -> str:
    """A learning rate as run.py's `${runner.lr}` writes it into a variant name (0.001, 3e-05)."""
    return str(float(lr))


def search_plan(cfg, axes: dict[str, list[str]]) -> dict | None:
    """The learning-rate search's runs (as `plan`'s) and, per method, its choice: None without `lr_grid`."""
    if not cfg.get("lr_grid"):
        return None
    if axes.get(ABLATION) or axes.get("variant"):
        raise UserError("lr_grid chooses a learning rate per method: it needs a grid of methods, not of "
                        f"{ABLATION if axes.get(ABLATION) else 'variant'} cells")

    task, seed = axes["task"][0], int(axes["seed"][0])
    runs, losses = [], {}
    for method, lr in itertools.product(axes["method"], cfg.lr_grid):
        cell = f"{method}-lr{lr_str(lr)}"
        state, wall, rec = run_state(R.run_path(os.path.join(cfg.results_dir, SEARCH_DIR), cfg.backbone.name,
                                                task, cell, seed))
        if state == "done":
            losses.setdefault(method, {})[float(lr)] = float(rec["dev"]["loss"])
        runs.append({"cell": cell, "task": task, "state": state, "wall": wall})
    chosen = {m: min(d, key=lambda lr: (d[lr], lr)) for m, d in losses.items()
              if len(d) == len(cfg.lr_grid)}  # a choice needs the whole grid
    return {"runs": runs, "losses": losses, "chosen": chosen, "task": task, "seed": seed,
            "grid": [float(x) for x in cfg.lr_grid]}


def time_left(runs: list[dict], tasks: list[str]) -> tuple[float, str] | None:
    """(seconds, basis) that the runs not done yet take at the median wall time of the finished ones: each
    task's own median where it has finished runs (RTE's prompts are longer), the others' at the median of
    all; basis names the medians ("sst2 3 min, rte 7 min"). None when nothing is left or nothing finished."""
    walls = [r["wall"] for r in runs if r["wall"]]  # read once, by plan() / search_plan()
    if not walls or all(r["state"] == "done" for r in runs):
        return None
    per = {t: statistics.median(w) for t in tasks
           if (w := [r["wall"] for r in runs if r["wall"] and r["task"] == t])}
    secs = sum(per.get(r["task"], statistics.median(walls)) for r in runs if r["state"] != "done")
    basis = ", ".join(f"{t} {m / 60:.0f} min" for t, m in per.items())
    if len(per) < len(tasks):
        basis += f"; others at the median {statistics.median(walls) / 60:.0f} min"
    return secs, basis


def describe_search(search: dict) -> str:
    runs = search["runs"]
    done = sum(r["state"] == "done" for r in runs)
    left = time_left(runs, [search["task"]])
    return (f"learning-rate search: {len(runs)} runs ({len(runs) // max(1, len(search['grid']))} methods x "
            f"{len(search['grid'])} rates, {search['task']} dev, seed {search['seed']}): {done} done, "
            f"{len(runs) - done} to run" + (f"; about {left[0] / 3600:.1f} h left" if left else ""))


def describe(experiment: str, p: dict) -> str:
    runs = p["runs"]
    count = {s: sum(r["state"] == s for r in runs) for s in ("done", "failed", "corrupt", "to run")}
    left = time_left(runs, p["tasks"])
    est = (f"about {left[0] / 3600:.1f} h left at the median wall time of the finished runs ({left[1]})" if left
           else "nothing left to run" if count["done"] == len(runs)
           else "no finished run yet to estimate the time from")
    n_bb = len(p.get("backbones", [None]))
    bbs = f"{n_bb} backbones x " if n_bb > 1 else ""
    return (f"{experiment}: {len(runs)} runs ({bbs}{len(p['cells'])} methods x {len(p['tasks'])} tasks x "
            f"{len(runs) // max(1, n_bb * len(p['cells']) * len(p['tasks']))} seeds): {count['done']} done, "
            f"{count['failed'] + count['corrupt']} failed or corrupt, {count['to run']} to run; {est}")
