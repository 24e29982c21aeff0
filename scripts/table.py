"""Regenerate a paper table: print the plan, run the missing cells through run.py, render the table.

    python -m scripts.table experiment=iapt_table1_cpu              # plan, run what is missing, render
    python -m scripts.table experiment=iapt_table1 run=false        # plan and render only
    python -m scripts.table experiment=iapt_table1_cpu results_dir=/tmp/runs out=/tmp/tables
    python -m scripts.table experiment=iapt_table1 launcher=slurm   # the missing cells as a Slurm job array
    python -m scripts.table experiment=iapt_table1_cpu run=false allow_mixed_commits=true   # runs of several commits
    python -m scripts.table experiment=iapt_table1_cpu jobs=2      # two runs at once, one torch thread each
    make table1 [SCALE=cpu]   |   make table PAPER=iapt N=1   |   make tables [SCALE=cpu]

The grid is the experiment's `hydra.sweeper.params` (method x task x seed; a `variant` list pairs with
the methods when given; `+ablation: a,b` sweeps conf/ablation/ options, each a cell named after its option
that overrides method fields per cell, e.g. IAPT-1..7; `backbone: x,y` renders one block per backbone).
Paper columns without a public data set (PARA's HSM10K, Q2SQL) show as `missing (not public: ...)`; a table
whose paper version has a Mean column gets one, and each backbone's block its own paper numbers. The paper
and table come from the experiment's name `<paper>_table<N>[_cpu]`, and the proposed method (paired tests)
is the paper's own: both from results/paper/papers.yaml. Finished runs are reused (run.py skips them);
the rendered table goes to results/tables/<experiment>.{md,csv}. An experiment's `notes` (a list of
strings) are printed under its table: what its records alone cannot show (a diagnostic run outside the grid).

An experiment with `lr_grid` (the CPU-scale tables) first chooses each method's learning rate: one run per
(method, rate) on the grid's first task and first seed, dev split only (`runner.eval_test=false`, records
under <results_dir>/lr_search/, never aggregated); each method's cells then run with the rate of the lowest
best dev loss (ties: the smaller rate), and the table's notes list the grid, the dev losses and the choice.

`columns: [task, task:metric, ...]` in an experiment picks the rendered columns (Table 3: the judge score and
ROUGE-L of one task). Under every table, a note names each run that gave one answer to >= 90% of its test
rows (a collapsed model), read from its predictions file.

This module is the command line and the run step (run.py --multirun); the plan is runners/table_plan.py,
the rendering runners/tables.py.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import os
import subprocess
import sys

from core.errors import UserError, exit_on_user_error
from runners.table_plan import (
    SEARCH_DIR,
    adopt_search_runs,
    describe,
    describe_search,
    grid,
    lr_str,
    plan,
    search_plan,
)
from runners.tables import code_version, columns, render_table, search_notes, table_of, table_versions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPTIONS = {  # argument: (default, its values: a tuple of the valid ones, or how the error line names them)
    "experiment": (None, "<name>"),
    "run": ("true", ("true", "false")),
    "out": (os.path.join(ROOT, "results", "tables"), "<folder>"),
    "results_dir": (None, "<folder>"),
    "launcher": (None, "<conf/hydra/launcher name, e.g. slurm>"),
    # render runs of several commits (or a dirty tree) into one table, listing the versions under it
    "allow_mixed_commits": ("false", ("true", "false")),
    # run only these columns' runs (comma-separated grid tasks; a long grid over several sittings); the table
    # still renders every column, the missing cells marked
    "tasks": (None, "<task,task,...>"),
    # runs side by side on this machine, each with cores/jobs torch threads: on the 2-core CPU, two 1-thread runs
    # train 1.11-1.33x the steps per hour of one 2-thread run, with the same losses and predictions to the last
    # bit (results/bench/threads)
    "jobs": ("1", "<a positive integer>"),
}


def options(argv: list[str]) -> dict[str, str | None]:
    """{option: value} of `key=value` arguments over OPTIONS' defaults; UserError naming the valid ones."""
    opts = {k: default for k, (default, _) in OPTIONS.items()}
    for a in argv:
        k, sep, v = a.partition("=")
        if not sep or k not in opts:
            valid = ", ".join(f"{key}={'|'.join(values) if isinstance(values, tuple) else values}"
                              for key, (_, values) in OPTIONS.items())
            raise UserError(f"unknown argument '{a}'; valid: {valid}")
        opts[k] = v
    return opts


def search_overrides(cfg, axes: dict[str, list[str]], method: str, task: str, rates: list[float]) -> list[str]:
    """run.py overrides of one (method, task)'s learning-rate selection runs: the grid's first seed, dev only,
    cells named <method>-lr<rate> under <results_dir>/lr_search. With `lr_search_reuse` they also score the test
    split (the chosen one becomes the seed's cell: runners/table_plan.py adopt_search_runs)."""
    test = [] if cfg.get("lr_search_reuse") else ["runner.eval_test=false"]
    return [f"method={method}", f"runner.lr={','.join(lr_str(x) for x in rates)}", f"task={task}",
            f"seed={axes['seed'][0]}", *test, "runner.zero_shot=false",
            f"results_dir={os.path.join(cfg.results_dir, SEARCH_DIR)}", "variant=${method.name}-lr${runner.lr}"]


def refuse_mixing(cfg, p: dict, search: dict | None, only: list[str]) -> None:
    """Running a table's missing runs from a checkout whose code differs from its finished runs' would make a
    table of two code versions (which rendering then refuses): UserError in one line before any run starts,
    naming both versions and the ways out. Records that name no commit do not count."""
    from runners.aggregate import scan
    from runners.results import provenance

    to_run = any(r["state"] != "done" for r in p["runs"] if r["task"] in only)
    if not (to_run or (search and any(task in only for _, task in search_to_run(search)))):
        return
    records, _ = scan(cfg.results_dir)
    theirs = set(table_versions(records, p.get("backbones") or [cfg.backbone.name], p["tasks"], p["cells"],
                                search["records"] if search else [])) - {"unknown"}
    if not theirs:
        return
    here = code_version({"provenance": provenance("cpu")})
    if theirs != {here}:
        raise UserError(f"the table's finished runs come from {', '.join(sorted(theirs))} and this checkout is {here}: "
                        "its missing runs would mix code versions in one table; run them from a git worktree of "
                        f"{sorted(theirs)[0].split('+')[0]} (results/cpu/README.md), render what is done with run=false, "
                        "or mix on purpose with allow_mixed_commits=true")


def search_to_run(search: dict) -> dict[tuple[str, str], list[float]]:
    """{(method, task): rates whose selection runs are still to run} (the grid's missing ones, then widening)."""
    out: dict[tuple[str, str], list[float]] = {}
    for r in search["runs"]:
        if r["state"] == "to run":
            out.setdefault((r["method"], r["task"]), []).append(r["lr"])
    return out


def main(argv: list[str]) -> None:
    opts = options(argv)
    experiment = opts["experiment"]
    names = sorted(f[:-5] for f in os.listdir(os.path.join(ROOT, "conf", "experiment")) if table_of(f[:-5]))
    if not experiment or experiment not in names:
        raise UserError(f"experiment={experiment!r} is not a table experiment; valid: {', '.join(names)}")
    for k, (_, valid) in OPTIONS.items():
        if isinstance(valid, tuple) and opts[k] not in valid:
            raise UserError(f"{k}={opts[k]!r} must be {' or '.join(valid)}")
    jobs = int(opts["jobs"]) if opts["jobs"].isdigit() and int(opts["jobs"]) > 0 else None
    if jobs is None:
        raise UserError(f"jobs={opts['jobs']!r} must be a positive integer (runs side by side on this machine)")
    if jobs > 1 and opts["launcher"]:
        raise UserError(f"jobs={jobs} runs cells side by side on this machine; launcher={opts['launcher']} already "
                        "places them: give one of the two")
    extra = [f"results_dir={opts['results_dir']}"] if opts["results_dir"] else []
    cfg, axes = grid(experiment, extra)
    columns(cfg, axes["task"])  # a bad `columns` entry fails now, not after the grid has run
    launcher = [f"hydra/launcher={opts['launcher']}"] if opts["launcher"] else []
    only = opts["tasks"].split(",") if opts["tasks"] else list(axes["task"])
    if set(only) - set(axes["task"]):
        raise UserError(f"tasks={opts['tasks']}: {', '.join(sorted(set(only) - set(axes['task'])))} not in the "
                        f"grid; valid: {', '.join(axes['task'])}")
    search = search_plan(cfg, axes)
    p = plan(cfg, axes)
    if search:
        print(describe_search(search), flush=True)
    print(describe(experiment, p, search), flush=True)
    if opts["run"] == "true" and opts["allow_mixed_commits"] != "true":
        refuse_mixing(cfg, p, search, only)

    threads = [f"runner.num_threads={max(1, (os.cpu_count() or 1) // jobs)}"] if jobs > 1 else []

    def launch(*overrides: str) -> None:
        res = subprocess.run([sys.executable, os.path.join(ROOT, "run.py"), "--multirun", f"experiment={experiment}",
                              "print_table=false", *extra, *overrides, *threads, *launcher], cwd=ROOT)
        if res.returncode:
            print(f"error: the grid stopped (exit {res.returncode}); the table shows what is finished",
                  file=sys.stderr)

    def launch_all(batches: list[list[str]]) -> None:
        """Each batch of overrides is one run.py --multirun; with jobs > 1, `jobs` of them at a time (a thread
        per subprocess: the runs are separate processes, their records guarded by run.py's own locks)."""
        if jobs == 1:
            for b in batches:
                launch(*b)
            return
        with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
            list(pool.map(lambda b: launch(*b), batches))

    for _ in range(2 * search["widen"] + 2 if search and opts["run"] == "true" else 0):  # grid, then widening
        todo = {k: v for k, v in search_to_run(search).items() if k[1] in only}
        if not todo:
            break
        launch_all([search_overrides(cfg, axes, method, task, rates) for (method, task), rates in todo.items()])
        search = search_plan(cfg, axes)
        print(describe_search(search), flush=True)
    if search and opts["run"] == "true":
        for path in adopt_search_runs(cfg, axes, search):
            print(f"{os.path.relpath(path, cfg.results_dir)}: the chosen rate's selection run (lr_search_reuse)")
        p = plan(cfg, axes)
    if opts["run"] == "true" and any(r["state"] != "done" for r in p["runs"] if r["task"] in only):
        batches = []
        if not search:  # with jobs > 1, one multirun per seed (the one axis every grid has, paired with none)
            tasks = [f"task={','.join(only)}"] if opts["tasks"] else []
            batches = [tasks] if jobs == 1 else [[*tasks, f"seed={s}"] for s in axes["seed"]]
        for method, task in itertools.product(axes["method"], only) if search else []:
            if (method, task) not in search["chosen"]:  # one multirun over the seeds per (method, task)
                print(f"error: {method} on {task}: no learning rate chosen (its search runs are not all finished, "
                      "or all failed); its cells are not run", file=sys.stderr)
            elif any(r["state"] != "done" for r in p["runs"] if (r["cell"], r["task"]) == (method, task)):
                batches.append([f"method={method}", f"task={task}",
                                f"runner.lr={lr_str(search['chosen'][method, task])}"])
        launch_all(batches)
        p = plan(cfg, axes)
        print(describe(experiment, p, search))
    from scripts.figures import plot_dev_curves, plot_seeds

    print(render_table(experiment, cfg, p, opts["out"], search_notes(search) if search else [], plot=plot_seeds,
                       allow_mixed_commits=opts["allow_mixed_commits"] == "true",
                       search_records=search["records"] if search else [], curves=plot_dev_curves))
    if any(r["state"] != "done" for r in p["runs"] if r["task"] in only) and opts["run"] == "true":
        raise SystemExit(1)


if __name__ == "__main__":
    exit_on_user_error(main, sys.argv[1:])
