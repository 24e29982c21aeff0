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
import math
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
    return {"runs": runs, "cells": cells, "tasks": axes["task"], "backbones": backbones,
            "task_cost": dict(cfg.get("task_cost") or {})}


def lr_str(lr) -> str:
    """A learning rate as run.py's `${runner.lr}` writes it into a variant name (0.001, 3e-05)."""
    return str(float(lr))


def _tried_rates(root: str, backbone: str, task: str, method: str, seed: int) -> set[float]:
    """Rates whose selection run of (method, task) has a record (finished or failed) under the search folder."""
    folder = os.path.join(root, backbone, task)
    prefix = f"{method}-lr"
    out = set()
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            if name.startswith(prefix) and any(os.path.exists(p) for p in (
                    os.path.join(folder, name, f"seed{seed}.json"), R.failed_path(os.path.join(folder, name, f"seed{seed}.json")))):
                try:
                    out.add(float(name[len(prefix):]))
                except ValueError:
                    continue
    return out


def search_plan(cfg, axes: dict[str, list[str]]) -> dict | None:
    """The learning-rate search, per (method, task) on that task's dev split (seed = the grid's first): its
    runs (as `plan`'s), dev losses, and choices; None without `lr_grid`. A choice is the rate of the lowest
    best dev loss (a tie: the smaller rate) once every tried rate has finished; when it lies on an edge of
    the tried rates, the grid is widened by one step of its own ratio past that edge (`next`: the rates to
    run), up to `lr_widen` steps a side; `records`: the finished selection runs' records. A failed selection run (a diverged rate, e.g. a
    NaN loss) counts as an infinite loss, so a rate beside a divergence is interior. `edge` names the choices
    that stayed on an edge after all widening."""
    if not cfg.get("lr_grid"):
        return None
    if axes.get(ABLATION) or axes.get("variant"):
        raise UserError("lr_grid chooses a learning rate per method: it needs a grid of methods, not of "
                        f"{ABLATION if axes.get(ABLATION) else 'variant'} cells")
    grid_rates = sorted(float(x) for x in cfg.lr_grid)
    # the grid's own geometric step ([1e-3, 3e-3, 1e-2]: sqrt(10)); a one-rate grid is a fixed rate, never widened
    ratio = (grid_rates[-1] / grid_rates[0]) ** (1 / (len(grid_rates) - 1)) if len(grid_rates) > 1 else 10 ** 0.5
    widen = int(cfg.lr_widen)
    seed = int(axes["seed"][0])
    root = os.path.join(cfg.results_dir, SEARCH_DIR)
    runs, losses, chosen, nxt, edge, failed, records = [], {}, {}, {}, {}, {}, []
    for task, method in itertools.product(axes["task"], axes["method"]):
        key = (method, task)
        rates = sorted(set(grid_rates) | _tried_rates(root, cfg.backbone.name, task, method, seed))
        done = True
        for lr in rates:
            cell = f"{method}-lr{lr_str(lr)}"
            state, wall, rec = run_state(R.run_path(root, cfg.backbone.name, task, cell, seed))
            if state == "done":
                records.append(rec)
                loss = float(rec["dev"]["loss"])
                losses.setdefault(key, {})[lr] = loss if math.isfinite(loss) else math.inf
            elif state == "failed":
                losses.setdefault(key, {})[lr] = math.inf
                failed.setdefault(key, {})[lr] = (rec or {}).get("error", "failed")
            else:
                done = False
            runs.append({"cell": cell, "method": method, "task": task, "lr": lr, "state": state, "wall": wall})
        if not done:
            continue
        d = losses[key]
        if all(math.isinf(v) for v in d.values()):
            edge[key] = "every rate failed or diverged"
            continue
        best = min(d, key=lambda lr: (d[lr], lr))
        lo, hi = rates[0], rates[-1]
        steps_up = sum(r > grid_rates[-1] for r in rates)
        steps_down = sum(r < grid_rates[0] for r in rates)
        if best == hi and len(rates) > 1 and steps_up < widen:
            nxt[key] = [float(f"{hi * ratio:.3g}")]
        elif best == lo and len(rates) > 1 and steps_down < widen:
            nxt[key] = [float(f"{lo / ratio:.3g}")]
        else:
            chosen[key] = best
            if len(rates) > 1 and best in (lo, hi):
                edge[key] = f"on the {'upper' if best == hi else 'lower'} edge after widening {widen} steps"
    for (method, task), lrs in nxt.items():
        runs += [{"cell": f"{method}-lr{lr_str(lr)}", "method": method, "task": task, "lr": lr, "state": "to run",
                  "wall": None} for lr in lrs]
    return {"runs": runs, "losses": losses, "chosen": chosen, "next": nxt, "edge": edge, "failed": failed,
            "tasks": list(axes["task"]), "methods": list(axes["method"]), "seed": seed, "grid": grid_rates,
            "widen": widen, "reuse": bool(cfg.get("lr_search_reuse")), "records": records,
            "task_cost": dict(cfg.get("task_cost") or {})}


def adopt_search_runs(cfg, axes: dict[str, list[str]], search: dict) -> list[str]:
    """With `lr_search_reuse`: the chosen rate's selection run of each (method, task) becomes the grid's cell
    at the search seed (the same training, data order and seed a rerun would repeat): its record, relabelled
    as the method's cell with `provenance.from_lr_search` naming the source, and its predictions are copied
    into the cell folder. Returns the paths written; a cell that already has a record keeps it."""
    if not cfg.get("lr_search_reuse"):
        return []
    root, written = os.path.join(cfg.results_dir, SEARCH_DIR), []
    for (method, task), lr in sorted(search["chosen"].items()):
        seed = search["seed"]
        src = R.run_path(root, cfg.backbone.name, task, f"{method}-lr{lr_str(lr)}", seed)
        dst = R.run_path(cfg.results_dir, cfg.backbone.name, task, method, seed)
        state, _, rec = run_state(src)
        if state != "done" or os.path.exists(dst) or os.path.exists(R.failed_path(dst)):
            continue
        if not rec.get("metrics"):
            raise UserError(f"{src} has no test metrics: it was run with runner.eval_test=false, so it cannot be "
                            f"the {method} cell's seed {seed} (lr_search_reuse=true); rerun it with force=true")
        pred = src.replace(".json", ".predictions.jsonl")
        with open(pred, encoding="utf-8") as f:
            rows = f.read()
        rec = {**rec, "variant": None, "cell": method, "config": {**rec["config"], "variant": None},
               "provenance": {**rec["provenance"], "from_lr_search": os.path.relpath(src, cfg.results_dir)}}
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        R.atomic_write_text(dst.replace(".json", ".predictions.jsonl"), rows)
        R.write_json(dst, rec)  # the record last: a cell is done only once its predictions are there
        written.append(dst)
    return written


def time_left(runs: list[dict], tasks: list[str], timed: list[dict] = (),
              cost: dict[str, float] | None = None) -> tuple[float, str] | None:
    """(seconds, basis) that the runs not done yet take at the median wall time of the finished ones (and of
    `timed`, e.g. the learning-rate search's runs, which train alike): each task's own median where it has
    finished runs (RTE's prompts are longer); a task without one at the others' medians scaled by `cost` (the
    experiment's `task_cost`: relative wall time of a run per task) when it names both, else at the median of
    all; basis names the medians ("sst2 3 min, rte 7 min"). None when nothing is left or nothing finished."""
    finished = [r for r in [*runs, *timed] if r["wall"]]  # read once, by plan() / search_plan()
    walls = [r["wall"] for r in finished]
    if not walls or all(r["state"] == "done" for r in runs):
        return None
    per = {t: statistics.median(w) for t in tasks if (w := [r["wall"] for r in finished if r["task"] == t])}
    cost = cost or {}
    units = [m / cost[t] for t, m in per.items() if cost.get(t)]  # seconds per unit of cost, per measured task
    scaled = {t: statistics.median(units) * cost[t] for t in tasks if t not in per and cost.get(t) and units}
    fallback = statistics.median(walls)
    secs = sum(per.get(r["task"], scaled.get(r["task"], fallback)) for r in runs if r["state"] != "done")
    basis = ", ".join(f"{t} {m / 60:.0f} min" for t, m in per.items())
    if scaled:
        basis += "; " + ", ".join(f"{t} ~{m / 60:.0f} min" for t, m in scaled.items()) + " (task_cost)"
    if len(per) + len(scaled) < len(tasks):
        basis += f"; others at the median {fallback / 60:.0f} min"
    return secs, basis


def describe_search(search: dict) -> str:
    runs = search["runs"]
    done = sum(r["state"] in ("done", "failed") for r in runs)
    left = time_left([r for r in runs if r["state"] != "failed"], search["tasks"], cost=search.get("task_cost"))
    pairs = len(search["methods"]) * len(search["tasks"])
    return (f"learning-rate search: {len(runs)} runs ({len(search['methods'])} methods x {len(search['tasks'])} "
            f"tasks, {len(search['grid'])} rates each, widened up to {search['widen']} steps a side; "
            + ("chosen on dev, the chosen run kept as the seed's cell" if search.get("reuse") else "dev only")
            + f", seed {search['seed']}): {done} done, {len(runs) - done} to run; {len(search['chosen'])} of {pairs} "
            "rates chosen" + (f"; about {left[0] / 3600:.1f} h left" if left else ""))


def describe(experiment: str, p: dict, search: dict | None = None) -> str:
    """The plan's one line: counts, and the wall time left. With a search (`search_plan`), its runs' wall
    times count too, and under `lr_search_reuse` the search seed's cells are left out of the time (the
    search's chosen runs become them)."""
    runs = p["runs"]
    count = {s: sum(r["state"] == s for r in runs) for s in ("done", "failed", "corrupt", "to run")}
    adopted = search["seed"] if search and search.get("reuse") else None
    left = time_left([r for r in runs if r["seed"] != adopted or r["state"] == "done"], p["tasks"],
                     search["runs"] if search else [], cost=p.get("task_cost"))
    est = (f"about {left[0] / 3600:.1f} h left at the median wall time of the finished runs ({left[1]})" if left
           else "nothing left to run" if count["done"] == len(runs)
           else "no finished run yet to estimate the time from")
    n_bb = len(p.get("backbones", [None]))
    bbs = f"{n_bb} backbones x " if n_bb > 1 else ""
    return (f"{experiment}: {len(runs)} runs ({bbs}{len(p['cells'])} methods x {len(p['tasks'])} tasks x "
            f"{len(runs) // max(1, n_bb * len(p['cells']) * len(p['tasks']))} seeds): {count['done']} done, "
            f"{count['failed'] + count['corrupt']} failed or corrupt, {count['to run']} to run; {est}")
