"""Regenerate a paper table: print the plan, run the missing cells through run.py, render the table.

    python -m scripts.table experiment=iapt_table1_cpu              # plan, run what is missing, render
    python -m scripts.table experiment=iapt_table1 run=false        # plan and render only
    python -m scripts.table experiment=iapt_table1_cpu results_dir=/tmp/runs out=/tmp/tables
    python -m scripts.table experiment=iapt_table1 launcher=slurm   # the missing cells as a Slurm job array
    make table1 [SCALE=cpu]   |   make table PAPER=iapt N=1   |   make tables [SCALE=cpu]

The grid is the experiment's `hydra.sweeper.params` (method x task x seed; a `variant` list pairs with
the methods when given; `+ablation: a,b` sweeps conf/ablation/ options, each a cell named after its option
that overrides method fields per cell, e.g. IAPT-1..7; `backbone: x,y` renders one block per backbone).
Paper columns without a public data set (PARA's HSM10K, Q2SQL) show as `missing (not public: ...)`; a table
whose paper version has a Mean column gets one (runners/tables.py), and each backbone's block its own paper numbers. The paper and table come from the experiment's name `<paper>_table<N>[_cpu]`,
and the proposed method (paired tests) is the paper's own. Finished runs are reused (run.py skips them);
the rendered table goes to results/tables/<experiment>.{md,csv}.

An experiment with `lr_grid` (the CPU-scale tables) first chooses each method's learning rate: one run per
(method, rate) on the grid's first task and first seed, dev split only (`runner.eval_test=false`, records
under <results_dir>/lr_search/, never aggregated); each method's cells then run with the rate of the lowest
best dev loss (ties: the smaller rate), and the table's notes list the grid, the dev losses and the choice.

`columns: [task, task:metric, ...]` in an experiment picks the rendered columns (Table 3: the judge score and
ROUGE-L of one task). Under every table, a note names each run that gave one answer to >= 90% of its test
rows (a collapsed model), read from its predictions file.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import statistics
import subprocess
import sys

from core.errors import UserError, exit_on_user_error

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = re.compile(r"^(?P<paper>iapt|parade|para|idspam)_table(?P<n>\d+)(?P<cpu>_cpu)?$")
PROPOSED = {"iapt": "iapt", "parade": "parade", "para": "para", "idspam": "idspam"}
ABLATION = "+ablation"  # the grid key of per-cell overrides (conf/ablation/<cell>.yaml)
NOT_PUBLIC = {  # (paper, paper column) -> why no harness task exists; shown as a missing column with the reason
    ("para", "HSM10K"): "not public: PARA's proprietary in-house data set (para.txt), no harness task",
    ("para", "Q2SQL"): "not public: PARA's proprietary in-house data set (para.txt), no harness task",
    ("para", "LLM-Eval1"): "not public: PARA's in-house evaluation set (para.txt Table 3), no harness task",
}


def cells_of(axes: dict[str, list[str]]) -> list[str]:
    """The table's rows: the ablation options (each names its cell), else the variants, else the methods."""
    return axes.get(ABLATION) or axes.get("variant") or axes["method"]


def not_public(paper: str, number: int) -> dict[str, str]:
    """{paper column: reason} of the paper table's columns that have no public data (results/paper CSV)."""
    import csv

    from runners.tables import strip_unit

    path = os.path.join(ROOT, "results", "paper", f"{paper}_table{number}.csv")
    if not os.path.exists(path):
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        heads = dict.fromkeys(strip_unit(r["column"].split(" / ")[0]) for r in csv.DictReader(f))
    return {h: NOT_PUBLIC[(paper, h)] for h in heads if (paper, h) in NOT_PUBLIC}


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
    from runners import results as R

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
        path = os.path.join(cfg.results_dir, backbone, task, cell, f"seed{seed}.json")
        state, wall, _ = run_state(path)
        runs.append({"backbone": backbone, "cell": cell, "task": task, "seed": int(seed), "path": path, "state": state, "wall": wall})
    return {"runs": runs, "cells": cells, "tasks": axes["task"], "backbones": backbones}


def lr_str(lr) -> str:
    """A learning rate as run.py's `${runner.lr}` writes it into a variant name (0.001, 3e-05)."""
    return str(float(lr))


def search_overrides(cfg, axes: dict[str, list[str]]) -> list[str]:
    """run.py overrides of the learning-rate search (one multirun over methods x lr_grid): the grid's first
    task and seed, dev only, cells named <method>-lr<rate> under <results_dir>/lr_search."""
    return [f"method={','.join(axes['method'])}", f"runner.lr={','.join(lr_str(x) for x in cfg.lr_grid)}",
            f"task={axes['task'][0]}", f"seed={axes['seed'][0]}", "runner.eval_test=false", "runner.zero_shot=false",
            f"results_dir={os.path.join(cfg.results_dir, 'lr_search')}", "variant=${method.name}-lr${runner.lr}"]


def search_plan(cfg, axes: dict[str, list[str]]) -> dict | None:
    """The learning-rate search's runs (as `plan`'s) and, per method, its choice: None without `lr_grid`."""
    if not cfg.get("lr_grid"):
        return None
    if axes.get(ABLATION) or axes.get("variant"):
        raise UserError("lr_grid chooses a learning rate per method: it needs a grid of methods, not of "
                        f"{ABLATION if axes.get(ABLATION) else 'variant'} cells")

    root = os.path.join(cfg.results_dir, "lr_search")
    task, seed = axes["task"][0], int(axes["seed"][0])
    runs, losses = [], {}
    for method, lr in itertools.product(axes["method"], cfg.lr_grid):
        path = os.path.join(root, cfg.backbone.name, task, f"{method}-lr{lr_str(lr)}", f"seed{seed}.json")
        state, wall, rec = run_state(path)
        if state == "done":
            losses.setdefault(method, {})[float(lr)] = float(rec["dev"]["loss"])
        runs.append({"cell": f"{method}-lr{lr_str(lr)}", "state": state, "wall": wall})
    chosen = {m: min(d, key=lambda lr: (d[lr], lr)) for m, d in losses.items()
              if len(d) == len(cfg.lr_grid)}  # a choice needs the whole grid
    return {"runs": runs, "losses": losses, "chosen": chosen, "task": task, "seed": seed,
            "grid": [float(x) for x in cfg.lr_grid]}


def search_notes(search: dict) -> list[str]:
    """The table's notes on the learning-rate choice."""
    grid = ", ".join(lr_str(x) for x in search["grid"])
    out = [f"Learning rate per method, chosen on {search['task']} dev (seed {search['seed']}; no test rows read) "
           f"from [{grid}] by the lowest best dev loss:"]
    for method, d in search["losses"].items():
        per = " / ".join(f"{lr_str(lr)}: {d[lr]:.3f}" if lr in d else f"{lr_str(lr)}: –" for lr in search["grid"])
        pick = search["chosen"].get(method)
        out.append(f"{method}: lr {lr_str(pick) if pick else 'not chosen yet'} (best dev loss at each rate: {per})")
    return out


def describe_search(search: dict) -> str:
    runs = search["runs"]
    done = sum(r["state"] == "done" for r in runs)
    walls = [r["wall"] for r in runs if r["wall"]]
    left = len(runs) - done
    est = (f"; about {left * statistics.median(walls) / 3600:.1f} h left" if walls and left else "")
    return (f"learning-rate search: {len(runs)} runs ({len(runs) // max(1, len(search['grid']))} methods x "
            f"{len(search['grid'])} rates, {search['task']} dev, seed {search['seed']}): {done} done, "
            f"{left} to run{est}")


def describe(experiment: str, p: dict) -> str:
    runs = p["runs"]
    count = {s: sum(r["state"] == s for r in runs) for s in ("done", "failed", "corrupt", "to run")}
    walls = [r["wall"] for r in runs if r["wall"]]  # read once, by plan()
    left = count["to run"] + count["failed"] + count["corrupt"]
    est = "nothing left to run" if not left else "no finished run yet to estimate the time from"
    if walls and left:  # each task's own median wall time where it has finished runs (RTE's prompts are longer)
        per = {t: statistics.median(w) for t in p["tasks"]
               if (w := [r["wall"] for r in runs if r["wall"] and r["task"] == t])}
        secs = sum(per.get(r["task"], statistics.median(walls)) for r in runs if r["state"] != "done")
        basis = (", ".join(f"{t} {m / 60:.0f} min" for t, m in per.items()) + "; others at the median"
                 if len(per) < len(p["tasks"]) else ", ".join(f"{t} {m / 60:.0f} min" for t, m in per.items()))
        est = (f"about {secs / 3600:.1f} h left at the median wall time of the finished runs ({basis}"
               f"{'' if len(per) == len(p['tasks']) else f' {statistics.median(walls) / 60:.0f} min'})")
    n_bb = len(p.get("backbones", [None]))
    bbs = f"{n_bb} backbones x " if n_bb > 1 else ""
    return (f"{experiment}: {len(runs)} runs ({bbs}{len(p['cells'])} methods x {len(p['tasks'])} tasks x "
            f"{len(runs) // max(1, n_bb * len(p['cells']) * len(p['tasks']))} seeds): {count['done']} done, "
            f"{count['failed'] + count['corrupt']} failed or corrupt, {count['to run']} to run; {est}")


def columns(cfg, tasks: list[str]) -> list[str]:
    """The table's columns: the experiment's `columns` (`task` or `task:metric`, each of a grid task), else
    the grid's tasks."""
    from runners.tables import column_task

    cols = list(cfg.get("columns") or tasks)
    bad = [c for c in cols if column_task(c) not in tasks]
    if bad:
        raise UserError(f"columns {bad} name no task of the grid; its tasks: {', '.join(tasks)} "
                        "(a column is `task` or `task:metric`)")
    return cols


def budget_note(cfg) -> str:
    r = cfg.runner
    return (f"Budget: {r.max_steps} steps x {r.batch_size} rows, dev loss every {r.eval_steps} steps on "
            f"{r.max_dev_examples} dev rows (best restored), test answers by `{r.scoring}`"
            + (f" (beam {r.num_beams})" if r.scoring == "generate" else "")
            + f", the first {r.max_test_examples} test rows at most (a task with fewer: all of them).")


ONE_ANSWER = 0.9  # a run giving one answer to at least this share of its test rows is flagged under the table


def one_answer_notes(records: list[dict], backbone: str, tasks: list[str], cells: list[str]) -> list[str]:
    """Notes on runs that collapsed to one answer (a degenerate model, e.g. a label prior learned instead of
    the task): the answer given to >= ONE_ANSWER of the test rows while the gold labels are more balanced,
    read from each record's predictions file. Open-ended tasks (answers mostly distinct) are never flagged."""
    from collections import Counter

    out = []
    for r in sorted(records, key=lambda r: (r["task"], r["cell"], int(r["seed"]))):
        path = r.get("_path", "").replace(".json", ".predictions.jsonl")
        if r["backbone"] != backbone or r["task"] not in tasks or r["cell"] not in cells or not os.path.exists(path):
            continue
        with open(path, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        if not rows:
            continue
        answer, n = Counter(x["prediction"] for x in rows).most_common(1)[0]
        gold = Counter(x["reference"] if isinstance(x["reference"], str) else x["reference"][0] for x in rows)
        gold_top = gold.most_common(1)[0][1] / len(rows)
        if n / len(rows) >= ONE_ANSWER and gold_top < ONE_ANSWER:
            out.append(f"{r['cell']} {r['task']} seed {r['seed']}: one answer for {100 * n / len(rows):.0f}% of "
                       f"the test rows ('{answer}'; the most frequent gold label covers {100 * gold_top:.0f}%)")
    return out


def render_table(experiment: str, cfg, p: dict, out_dir: str, notes: list[str] = ()) -> str:
    import pandas as pd

    from runners import results as R
    from runners.aggregate import atomic_write_text, scan
    from runners.tables import TableSpec, paper_numbers, render

    m = NAME.match(experiment)
    paper, number, cpu = m["paper"], int(m["n"]), bool(m["cpu"])
    records, problems = scan(cfg.results_dir)
    cells = p["cells"] + ([R.ZERO_SHOT] if cpu and cfg.runner.zero_shot else [])  # the untrained row
    dfs, mds = [], []
    for backbone in p.get("backbones") or [cfg.backbone.name]:
        title = f"{paper.upper()} Table {number}, {backbone}" + (
            " at CPU scale: NOT the paper's setting (backbone, budget, data, test rows)" if cpu else "")
        spec = TableSpec(paper=paper, table=number, tasks=columns(cfg, p["tasks"]), cells=cells, proposed=PROPOSED[paper],
                         backbone=backbone, title=title, unavailable=not_public(paper, number),
                         notes=([budget_note(cfg)] if cpu else []) + list(notes)
                         + one_answer_notes(records, backbone, p["tasks"], cells))
        df, md = render(spec, records, problems, paper_numbers(spec))
        dfs.append(df.assign(backbone=backbone))
        mds.append(md)
    df, md = pd.concat(dfs, ignore_index=True), "\n".join(mds)
    os.makedirs(out_dir, exist_ok=True)
    atomic_write_text(os.path.join(out_dir, f"{experiment}.md"), md)
    atomic_write_text(os.path.join(out_dir, f"{experiment}.csv"), df.to_csv(index=False))
    from scripts.figures import plot_seeds

    for backbone in p.get("backbones") or [cfg.backbone.name]:  # every seed of every cell, as a plot
        name = experiment if len(p.get("backbones") or [1]) == 1 else f"{experiment}_{backbone}"
        fig = plot_seeds(records, p["tasks"], cells, os.path.join(out_dir, f"{name}.png"),
                         title=f"{experiment} ({backbone}): each seed, median bar", backbone=backbone)
        if fig:
            md += f"\nSeeds plot: {fig}\n"
    where = log_wandb(cfg, experiment, df)
    return md + (f"\nW&B table: {where}\n" if where else "")


def log_wandb(cfg, experiment: str, df) -> str | None:
    """The rendered table as a `wandb.Table` in a run of its own (job_type table) when the logger is on;
    offline without an API key, as the runs are. Returns the run's folder."""
    if cfg.logger.name == "none" or cfg.logger.mode == "disabled":
        return None
    import wandb

    mode = cfg.logger.mode
    if mode == "auto":
        mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
    run = wandb.init(project=cfg.logger.project, name=experiment, job_type="table", mode=mode,
                     dir=os.path.abspath(cfg.logger.dir), reinit="finish_previous")
    run.log({experiment: wandb.Table(dataframe=df.astype(str))})
    folder = os.path.dirname(run.dir)
    run.finish()
    return folder


def main(argv: list[str]) -> None:
    opts = {"experiment": None, "run": "true", "out": os.path.join(ROOT, "results", "tables"), "results_dir": None,
            "launcher": None}
    for a in argv:
        k, sep, v = a.partition("=")
        if not sep or k not in opts:
            raise UserError(f"unknown argument '{a}'; valid: experiment=<name>, run=true|false, out=<folder>, "
                            "results_dir=<folder>, launcher=<conf/hydra/launcher name, e.g. slurm>")
        opts[k] = v
    experiment = opts["experiment"]
    names = sorted(f[:-5] for f in os.listdir(os.path.join(ROOT, "conf", "experiment")) if NAME.match(f[:-5]))
    if not experiment or experiment not in names:
        raise UserError(f"experiment={experiment!r} is not a table experiment; valid: {', '.join(names)}")
    if opts["run"] not in ("true", "false"):
        raise UserError(f"run={opts['run']!r} must be true or false")
    extra = [f"results_dir={opts['results_dir']}"] if opts["results_dir"] else []
    cfg, axes = grid(experiment, extra)
    columns(cfg, axes["task"])  # a bad `columns` entry fails now, not after the grid has run
    launcher = [f"hydra/launcher={opts['launcher']}"] if opts["launcher"] else []
    search = search_plan(cfg, axes)
    p = plan(cfg, axes)
    if search:
        print(describe_search(search), flush=True)
    print(describe(experiment, p), flush=True)

    def launch(*overrides: str) -> None:
        res = subprocess.run([sys.executable, os.path.join(ROOT, "run.py"), "--multirun", f"experiment={experiment}",
                              "print_table=false", *extra, *overrides, *launcher], cwd=ROOT)
        if res.returncode:
            print(f"error: the grid stopped (exit {res.returncode}); the table shows what is finished",
                  file=sys.stderr)

    if opts["run"] == "true" and search and any(r["state"] != "done" for r in search["runs"]):
        launch(*search_overrides(cfg, axes))
        search = search_plan(cfg, axes)
        print(describe_search(search), flush=True)
    if opts["run"] == "true" and any(r["state"] != "done" for r in p["runs"]):
        if not search:
            launch()
        for method in axes["method"] if search else []:  # one multirun per method, at its chosen rate
            if method not in search["chosen"]:
                print(f"error: {method}: no learning rate chosen (its search runs are not all finished); "
                      "its cells are not run", file=sys.stderr)
            elif any(r["state"] != "done" for r in p["runs"] if r["cell"] == method):
                launch(f"method={method}", f"runner.lr={lr_str(search['chosen'][method])}")
        p = plan(cfg, axes)
        print(describe(experiment, p))
    print(render_table(experiment, cfg, p, opts["out"], search_notes(search) if search else []))
    if any(r["state"] != "done" for r in p["runs"]) and opts["run"] == "true":
        raise SystemExit(1)


if __name__ == "__main__":
    exit_on_user_error(main, sys.argv[1:])
