"""Paper tables from small hand-made records: medians, spread, marking, paper numbers and differences,
missing and failed cells, and the paired test (runners/tables.py)."""

from __future__ import annotations

import glob
import math
import os
import re
import statistics

import pytest

from runners.tables import TableSpec, paired, render

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCORES = {  # (task, cell) -> per-seed accuracy
    ("sst2", "iapt"): [80.0, 82.0, 90.0],
    ("sst2", "lora"): [85.0, 87.0, 88.0],
    ("sst2", "parade"): [70.0, 71.0, 72.0],
    ("rte", "iapt"): [60.0, 61.0, 62.0],
    ("rte", "lora"): [55.0, 65.0],  # only two seeds
}


def _records():
    return [{"backbone": "smollm2-135m", "task": t, "cell": c, "seed": s, "metrics": {"acc": v, "f1": 0.0}}
            for (t, c), vals in SCORES.items() for s, v in enumerate(vals)]


SPEC = TableSpec(paper="iapt", table=1, tasks=["sst2", "rte"], cells=["lora", "parade", "iapt"], proposed="iapt",
                 title="test table", notes=["lr chosen on dev"])
PROBLEMS = [{"backbone": "smollm2-135m", "task": "rte", "cell": "parade", "seed": "0",
             "problem": "failed: FloatingPointError: training loss is nan", "path": "x"}]


def test_medians_spread_marks_paper_numbers_and_problems():
    df, md = render(SPEC, _records(), PROBLEMS, {("sst2", "lora"): 86.0})
    row = df[(df.task == "sst2") & (df.cell == "lora")].iloc[0]
    assert (row["median"], row["min"], row["max"], row["n"]) == (87.0, 85.0, 88.0, 3)
    assert row["diff"] == pytest.approx(1.0)
    lines = {line.split(" | ")[0].strip("| "): line for line in md.splitlines() if line.startswith("| ")}
    assert "**87.0** (85.0–88.0, n=3); paper 86.0 (+1.0)" in lines["lora"]
    assert "<u>82.0</u> (80.0–90.0, n=3)" in lines["iapt"], "second best underlined"
    assert "| parade | 71.0 (70.0–72.0, n=3); vs iapt -13.0 [-23.8, -2.2] p=0.25 |" in lines["parade"]
    assert "failed (seed0: failed: FloatingPointError: training loss is nan)" in lines["parade"]
    assert "| iapt | <u>82.0</u>" in md and "**61.0**" in lines["iapt"], "rte: iapt 61 beats lora 60"
    assert "- lr chosen on dev" in md


def test_missing_cell_is_shown_not_dropped():
    spec = TableSpec(paper="iapt", table=1, tasks=["sst2"], cells=["lora", "ssp", "iapt"], proposed="iapt")
    df, md = render(spec, _records(), [])
    assert "| ssp | missing |" in md
    assert df[df.cell == "ssp"].iloc[0]["n"] == 0


def test_paired_test_against_the_proposed_method():
    df, md = render(SPEC, _records(), PROBLEMS)
    row = df[(df.task == "sst2") & (df.cell == "lora")].iloc[0]
    assert row["vs_n_pairs"] == 3 and row["vs_mean_diff"] == pytest.approx((5 + 5 - 2) / 3)
    from scipy.stats import wilcoxon

    assert row["vs_p_wilcoxon"] == pytest.approx(wilcoxon([5.0, 5.0, -2.0]).pvalue)
    assert "vs iapt +2.7 [" in md
    rte = df[(df.task == "rte") & (df.cell == "lora")].iloc[0]
    assert rte["vs_n_pairs"] == 2, "only the seeds both cells have are paired"


def test_paired_statistics():
    same = paired({0: 1.0, 1: 2.0, 2: 3.0}, {0: 1.0, 1: 2.0, 2: 3.0})
    assert same["mean_diff"] == 0 and same["p_wilcoxon"] == 1.0
    up = paired({0: 2.0, 1: 3.0, 2: 5.0}, {0: 1.0, 1: 1.0, 2: 1.0})
    assert up["p_wilcoxon"] == pytest.approx(0.25), "3 seeds, all better: the smallest two-sided p"
    half = 4.302652729911275 * statistics.stdev([1.0, 2.0, 4.0]) / math.sqrt(3)  # t(2) 97.5% quantile
    assert (up["ci_low"], up["ci_high"]) == pytest.approx((7 / 3 - half, 7 / 3 + half))
    one = paired({0: 2.0}, {0: 1.0})
    assert one["n_pairs"] == 1 and math.isnan(one["p_wilcoxon"])


def test_time_left_uses_each_tasks_median_then_the_task_cost_then_the_median_of_all():
    from runners.table_plan import time_left

    def run(task, state="to run", wall=None):
        return {"task": task, "state": state, "wall": wall}

    runs = [run("a", "done", 60.0), run("a", "done", 120.0), run("a"), run("b"), run("b"), run("c")]
    secs, basis = time_left(runs, ["a", "b", "c"], cost={"a": 1.0, "b": 3.0})
    assert secs == 90.0 + 2 * 270.0 + 90.0  # a: its median; b: a's median x 3; c: no cost, the median of all
    assert basis == "a 2 min; b ~4 min (task_cost); others at the median 2 min"
    assert time_left(runs, ["a", "b", "c"]) == (4 * 90.0, "a 2 min; others at the median 2 min")
    assert time_left([run("a", "done", 60.0)], ["a"]) is None  # nothing left


def test_table_script_plans_and_renders_from_records(tmp_path, capsys):
    """scripts/table.py on the CPU Table 1 grid with two hand-made records: the plan counts them, the
    table shows them beside IAPT Table 1's numbers, and a bad experiment name is one line."""
    import json

    from core.errors import UserError
    from scripts import table

    runs = tmp_path / "runs"
    for cell, acc in (("lora", 87.0), ("iapt", 80.0)):
        folder = runs / "smollm2-135m" / "sst2" / cell
        folder.mkdir(parents=True)
        rec = {"schema": 1, "backbone": "smollm2-135m", "task": "sst2", "method": cell, "variant": None,
               "cell": cell, "seed": 0, "status": "ok", "metrics": {"acc": acc}, "dev": {}, "params": {},
               "config": {"method": {"name": cell}}, "provenance": {}, "wall_time_s": 600.0, "curve": {}}
        (folder / "seed0.json").write_text(json.dumps(rec))
    table.main(["experiment=iapt_table1_cpu", "run=false", f"out={tmp_path / 'tables'}", f"results_dir={runs}"])
    out = capsys.readouterr().out
    assert ("learning-rate search: 120 runs (8 methods x 5 tasks, 3 rates each, widened up to 2 steps a side; chosen "
            "on dev, the chosen run kept as the seed's cell, seed 0): 0 done, 120 to run; 0 of 40 rates chosen") in out
    assert "iapt_table1_cpu: 200 runs (8 methods x 5 tasks x 5 seeds): 2 done, 0 failed or corrupt, 198 to run; " \
           "about 54.9 h left at the median wall time of the finished runs (sst2 10 min; rte ~25 min, mrpc ~21 min, " \
           "cb ~27 min, mixture ~20 min (task_cost))" in out, out  # 32 runs a task: 32 x 10 min x (1 + 2.5 + 2.1 + 2.7 + 2)
    md = (tmp_path / "tables" / "iapt_table1_cpu.md").read_text()
    assert "NOT the paper's setting" in md
    assert "| lora | **87.0** (87.0–87.0, n=1); paper 93.6 (-6.6) | missing | missing | missing | missing |" in md
    assert "| houlsby | missing | missing | missing | missing | missing |" in md
    assert (tmp_path / "tables" / "iapt_table1_cpu.png").stat().st_size > 0, "the seeds plot beside the table"
    assert "P-tuning v2's row uses the P-tuning v2 code's N(0, 1) key/value initialisation;" in md, \
        "the experiment's own notes are printed under the table"
    with pytest.raises(UserError, match="experiment='nope' is not a table experiment; valid: iapt_table1, "):
        table.main(["experiment=nope"])


def test_a_table_of_several_commits_is_refused_then_rendered_with_the_flag(tmp_path, capsys):
    """One code version per table: records of two commits are refused in one line naming both and their
    runs; allow_mixed_commits=true renders them and lists the versions under the table."""
    import json

    from core.errors import UserError
    from scripts import table

    runs = tmp_path / "runs"
    for cell, seed, commit, dirty in (("lora", 0, "a" * 40, False), ("lora", 1, "a" * 40, False),
                                      ("iapt", 0, "b" * 40, True)):
        folder = runs / "smollm2-135m" / "sst2" / cell
        folder.mkdir(parents=True, exist_ok=True)
        rec = {"schema": 1, "backbone": "smollm2-135m", "task": "sst2", "method": cell, "variant": None,
               "cell": cell, "seed": seed, "status": "ok", "metrics": {"acc": 80.0 + seed}, "dev": {}, "params": {},
               "config": {"method": {"name": cell}}, "provenance": {"git_commit": commit, "git_dirty": dirty},
               "wall_time_s": 600.0, "curve": {}}
        (folder / f"seed{seed}.json").write_text(json.dumps(rec))
    args = ["experiment=iapt_table1_cpu", "run=false", f"out={tmp_path / 'tables'}", f"results_dir={runs}"]
    with pytest.raises(UserError) as e:
        table.main(args)
    assert str(e.value).startswith("the table's 3 runs come from 2 code version(s): aaaaaaa (2 runs), "
                                   "bbbbbbb+changes (1 run); rerun them from one clean commit"), str(e.value)
    assert "allow_mixed_commits=true" in str(e.value) and not (tmp_path / "tables" / "iapt_table1_cpu.md").exists()
    table.main([*args, "allow_mixed_commits=true"])
    md = (tmp_path / "tables" / "iapt_table1_cpu.md").read_text()
    assert "MIXED CODE VERSIONS (allow_mixed_commits=true): aaaaaaa (2 runs), bbbbbbb+changes (1 run)." in md
    capsys.readouterr()


def test_running_the_missing_runs_from_another_commit_is_refused_before_any_run(tmp_path, monkeypatch, capsys):
    """A table whose finished runs come from commit a, run from a checkout at c (or at a with local changes):
    one line naming both before any run starts; at a itself, or with allow_mixed_commits=true, the missing runs
    are launched; run=false renders what is done."""
    import json
    import subprocess

    from core.errors import UserError
    from runners import results
    from scripts import table

    runs = tmp_path / "runs"
    folder = runs / "smollm2-135m" / "sst2" / "lora"
    folder.mkdir(parents=True)
    (folder / "seed0.json").write_text(json.dumps({
        "schema": 1, "backbone": "smollm2-135m", "task": "sst2", "method": "lora", "variant": None, "cell": "lora",
        "seed": 0, "status": "ok", "metrics": {"acc": 80.0}, "dev": {}, "params": {}, "config": {"method": {"name": "lora"}},
        "provenance": {"git_commit": "a" * 40, "git_dirty": False}, "wall_time_s": 600.0, "curve": {}}))
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(cmd) or subprocess.CompletedProcess(cmd, 0))
    args = ["experiment=iapt_table1_cpu", f"out={tmp_path / 'tables'}", f"results_dir={runs}", "tasks=cb"]
    for commit, dirty, shown in (("c" * 40, False, "ccccccc"), ("a" * 40, True, "aaaaaaa+changes")):
        monkeypatch.setattr(results, "provenance", lambda dev, c=commit, d=dirty: {"git_commit": c, "git_dirty": d})
        with pytest.raises(UserError, match=f"the table's finished runs come from aaaaaaa and this checkout is "
                                            f"{re.escape(shown)}: "
                                            "its missing runs would mix code versions in one table; run them from a git "
                                            "worktree of aaaaaaa"):
            table.main(args)
        assert calls == []
    with pytest.raises(SystemExit):  # launched (mocked), so still incomplete
        table.main([*args, "allow_mixed_commits=true"])
    assert calls
    calls.clear()
    monkeypatch.setattr(results, "provenance", lambda dev: {"git_commit": "a" * 40, "git_dirty": False})
    with pytest.raises(SystemExit):
        table.main(args)
    assert calls
    table.main(["experiment=iapt_table1_cpu", "run=false", f"out={tmp_path / 'tables'}", f"results_dir={runs}"])
    capsys.readouterr()


def test_the_learning_rate_search_must_share_the_tables_commit():
    """The selection runs that chose a table's rates count in its one-commit check."""
    from core.errors import UserError
    from runners.tables import commit_notes

    def rec(cell, commit):
        return {"backbone": "b", "task": "sst2", "cell": cell, "provenance": {"git_commit": commit, "git_dirty": False}}

    cells = [rec("lora", "a" * 40), rec("iapt", "a" * 40)]
    assert commit_notes(cells, ["b"], ["sst2"], ["lora", "iapt"], False, [rec("lora-lr0.001", "a" * 40)]) == [
        "Code version: aaaaaaa (every run; a clean tree)."]
    dirty = [{**r, "provenance": {"git_commit": "a" * 40, "git_dirty": True}} for r in cells]
    assert commit_notes(dirty, ["b"], ["sst2"], ["lora", "iapt"], False) == [
        "Code version: aaaaaaa+changes (every run; +changes: uncommitted changes to tracked files)."]
    with pytest.raises(UserError, match=r"3 runs come from 2 code version\(s\): aaaaaaa \(2 runs\), bbbbbbb \(1 run\)"):
        commit_notes(cells, ["b"], ["sst2"], ["lora", "iapt"], False, [rec("lora-lr0.001", "b" * 40)])


def _search_record(root, method: str, lr: str, loss: float, task: str = "sst2", failed: bool = False) -> None:
    import json

    folder = root / "lr_search" / "smollm2-135m" / task / f"{method}-lr{lr}"
    folder.mkdir(parents=True)
    rec = {"schema": 1, "backbone": "smollm2-135m", "task": task, "method": method, "variant": f"{method}-lr{lr}",
           "cell": f"{method}-lr{lr}", "seed": 0, "status": "ok", "metrics": {"acc": 50.0}, "dev": {"loss": loss},
           "params": {}, "config": {"method": {"name": method}}, "provenance": {}, "wall_time_s": 120.0, "curve": {}}
    if failed:
        rec.update(status="failed", error="FloatingPointError: training loss is nan")
    (folder / ("seed0.failed.json" if failed else "seed0.json")).write_text(json.dumps(rec))
    (folder / "seed0.predictions.jsonl").write_text(json.dumps({"id": "a", "prediction": "x", "reference": "x"}) + "\n")


def test_learning_rate_search_chooses_per_method_and_task_widening_past_an_edge(tmp_path, monkeypatch, capsys):
    """lr_grid: selection runs per (method, task) on that task's dev split; an interior choice is taken (a
    tie goes to the smaller rate), a choice on an edge widens the grid by its ratio past it (up to lr_widen
    steps), a diverged neighbour makes a rate interior, a (method, task) without its whole search is not run;
    each (method, task)'s cells then run at its own rate; the notes give every loss and choice."""
    import subprocess

    from runners import table_plan, tables
    from scripts import table

    runs = tmp_path / "runs"
    for lr, loss in (("0.001", 0.30), ("0.003", 0.20), ("0.01", 0.25)):  # interior: 0.003
        _search_record(runs, "lora", lr, loss)
    for lr, loss in (("0.001", 0.40), ("0.003", 0.45), ("0.01", 0.50)):  # lower edge: widen to 0.000316
        _search_record(runs, "iapt", lr, loss)
    for lr, loss in (("0.001", 0.40), ("0.003", 0.30), ("0.01", 0.20)):  # upper edge, widened twice already
        _search_record(runs, "lora", lr, loss, task="rte")
    _search_record(runs, "lora", "0.0316", 0.15, task="rte")
    _search_record(runs, "lora", "0.1", 0.10, task="rte")
    for lr, loss in (("0.001", 0.40), ("0.003", 0.30)):  # its upper neighbour diverged: 0.003 is interior
        _search_record(runs, "parade", lr, loss, task="rte")
    _search_record(runs, "parade", "0.01", float("nan"), task="rte", failed=True)
    _search_record(runs, "parade", "0.001", 0.1)  # 1 of 3 rates on sst2: no choice yet
    cfg, axes = table_plan.grid("iapt_table1_cpu", [f"results_dir={runs}"])
    search = table_plan.search_plan(cfg, axes)
    assert search["chosen"] == {("lora", "sst2"): 0.003, ("lora", "rte"): 0.1, ("parade", "rte"): 0.003}
    assert search["next"] == {("iapt", "sst2"): [0.000316]}
    assert search["edge"] == {("lora", "rte"): "on the upper edge after widening 2 steps"}
    assert table_plan.describe_search(search).startswith(
        "learning-rate search: 123 runs (8 methods x 5 tasks, 3 rates each, widened up to 2 steps a side; chosen on "
        "dev, the chosen run kept as the seed's cell, seed 0): 15 done, 108 to run; 3 of 40 rates chosen")
    notes = tables.search_notes(search)
    assert "lora on sst2: lr 0.003 (best dev loss at each rate: 0.001: 0.300 / 0.003: 0.200 / 0.01: 0.250)" in notes
    assert "parade on rte: lr 0.003 (best dev loss at each rate: 0.001: 0.400 / 0.003: 0.300 / 0.01: diverged)" in notes
    assert "iapt on sst2: widening (best dev loss at each rate: 0.001: 0.400 / 0.003: 0.450 / 0.01: 0.500)" in notes
    assert any(n.startswith("lora on rte: lr 0.1 (") and n.endswith("on the upper edge after widening 2 steps")
               for n in notes)

    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(cmd[2:]) or subprocess.CompletedProcess(cmd, 0))
    with pytest.raises(SystemExit):  # nothing of the table itself finished
        table.main(["experiment=iapt_table1_cpu", f"out={tmp_path / 'tables'}", f"results_dir={runs}"])
    common = ["--multirun", "experiment=iapt_table1_cpu", "print_table=false", f"results_dir={runs}"]
    # lr_search_reuse: the selection runs score the test split (no runner.eval_test=false)
    search_tail = ["seed=0", "runner.zero_shot=false", f"results_dir={runs / 'lr_search'}",
                   "variant=${method.name}-lr${runner.lr}"]
    searches = [c for c in calls if "variant=${method.name}-lr${runner.lr}" in c]
    assert [*common, "method=iapt", "runner.lr=0.000316", "task=sst2", *search_tail] in searches
    assert [*common, "method=houlsby", "runner.lr=0.001,0.003,0.01", "task=rte", *search_tail] in searches
    cells = [c for c in calls if c not in searches]
    assert cells == [[*common, "method=lora", "task=sst2", "runner.lr=0.003"],
                     [*common, "method=lora", "task=rte", "runner.lr=0.1"],
                     [*common, "method=parade", "task=rte", "runner.lr=0.003"]]
    err = capsys.readouterr().err
    assert "error: iapt on sst2: no learning rate chosen" in err
    md = (tmp_path / "tables" / "iapt_table1_cpu.md").read_text()
    assert ("- Learning rate per method and task, chosen on that task's dev split (seed 0; the choice reads dev losses "
            "only; the chosen rate's run is also the seed's cell)") in md
    assert "- Budget: 100 steps x 8 rows, dev loss every 25 steps on 64 dev rows (best restored), test answers by " \
           "`likelihood`, the first 200 test rows at most (a task with fewer: all of them)." in md


def test_chosen_selection_run_becomes_the_seed_cell_and_tasks_limits_the_runs(tmp_path, monkeypatch, capsys):
    """lr_search_reuse: once a (method, task)'s search is complete, its chosen run's record (relabelled as the
    method's cell, naming its source) and predictions become the seed-0 cell, which is then not rerun; a cell
    that has a record keeps it; a chosen run without test metrics is one line. `tasks=` runs only those
    columns' searches and cells."""
    import json
    import subprocess

    from core.errors import UserError
    from runners import table_plan
    from scripts import table

    runs = tmp_path / "runs"
    for lr, loss in (("0.001", 0.30), ("0.003", 0.20), ("0.01", 0.25)):
        _search_record(runs, "lora", lr, loss)
        rec_path = runs / "lr_search" / "smollm2-135m" / "sst2" / f"lora-lr{lr}" / "seed0.json"
        rec = json.loads(rec_path.read_text())
        rec["metrics"] = {"acc": 80.0 + loss}
        rec["config"] = {"method": {"name": "lora"}, "variant": f"lora-lr{lr}", "runner": {"lr": float(lr)}}
        rec_path.write_text(json.dumps(rec))
        rec_path.with_name("seed0.predictions.jsonl").write_text(json.dumps({"id": "a", "prediction": lr}) + "\n")
    cfg, axes = table_plan.grid("iapt_table1_cpu", [f"results_dir={runs}"])
    search = table_plan.search_plan(cfg, axes)
    assert search["chosen"] == {("lora", "sst2"): 0.003}
    cell = runs / "smollm2-135m" / "sst2" / "lora"
    assert table_plan.adopt_search_runs(cfg, axes, search) == [str(cell / "seed0.json")]
    rec = json.loads((cell / "seed0.json").read_text())
    assert (rec["cell"], rec["variant"], rec["config"]["variant"], rec["metrics"]) == ("lora", None, None, {"acc": 80.2})
    assert rec["provenance"]["from_lr_search"] == "lr_search/smollm2-135m/sst2/lora-lr0.003/seed0.json"
    assert json.loads((cell / "seed0.predictions.jsonl").read_text())["prediction"] == "0.003"
    assert table_plan.adopt_search_runs(cfg, axes, search) == [], "a cell with a record keeps it"
    off, _ = table_plan.grid("iapt_table1_cpu", [f"results_dir={runs}", "lr_search_reuse=false"])
    (cell / "seed0.json").unlink()
    assert table_plan.adopt_search_runs(off, axes, search) == [] and not (cell / "seed0.json").exists()
    dev_only = runs / "lr_search" / "smollm2-135m" / "sst2" / "lora-lr0.003" / "seed0.json"
    dev_only.write_text(json.dumps({**json.loads(dev_only.read_text()), "metrics": {}}))
    with pytest.raises(UserError, match="has no test metrics: it was run with runner.eval_test=false"):
        table_plan.adopt_search_runs(cfg, axes, search)

    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(cmd[2:]) or subprocess.CompletedProcess(cmd, 0))
    with pytest.raises(SystemExit):
        table.main(["experiment=iapt_table1_cpu", f"out={tmp_path / 'tables'}", f"results_dir={tmp_path / 'new'}",
                    "tasks=cb"])
    assert calls and all("task=cb" in c for c in calls), calls
    with pytest.raises(UserError, match="tasks=cb,qnli: qnli not in the grid; valid: sst2, rte, mrpc, cb, mixture"):
        table.main(["experiment=iapt_table1_cpu", f"results_dir={runs}", "tasks=cb,qnli"])
    capsys.readouterr()


def test_plateau_notes_count_seeds_above_the_majority_rate_by_an_exact_binomial_test(tmp_path):
    """A run is off the chance plateau when its test accuracy beats the majority-label rate (per task in a
    mixture) at one-sided binomial p < 0.05, computed here directly; the dev-loss curve is the median over
    seeds at each step."""
    import json

    from scipy.stats import binomtest

    from runners.tables import above_majority, plateau_notes

    def rows(n_right: int, n: int, prefix: str = "") -> list[dict]:  # gold: 60% 'a', 40% 'b'
        gold = ["a"] * (6 * n // 10) + ["b"] * (n - 6 * n // 10)
        return [{"id": f"{prefix}{i}", "reference": [g], "prediction": g if i < n_right else ("b" if g == "a" else "a")}
                for i, g in enumerate(gold)]

    right, n, rate, p = above_majority(rows(70, 100))
    assert (right, n, rate) == (70, 100, 0.6) and p == pytest.approx(binomtest(70, 100, 0.6, alternative="greater").pvalue)
    assert p < 0.05 and above_majority(rows(62, 100))[3] > 0.05
    mixed = rows(10, 10, "sst2/") + [{"id": f"cb/{i}", "reference": ["x"], "prediction": "x"} for i in range(10)]
    assert above_majority(mixed)[2] == pytest.approx((6 + 10) / 20), "each task's own majority label"
    assert above_majority([{"id": str(i), "reference": [f"text {i}"], "prediction": "t"} for i in range(20)]) is None
    records = []
    for seed, (k, losses) in enumerate([(75, [2.0, 0.3]), (70, [3.0, 0.2]), (55, [4.0, 0.4])]):
        path = tmp_path / f"seed{seed}.json"
        path.with_suffix(".predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(k, 100)))
        records.append({"backbone": "b", "task": "rte", "cell": "lora", "seed": seed, "_path": str(path),
                        "curve": {"dev": [{"step": s, "dev_loss": v} for s, v in zip((0, 25), losses)]}})
    notes = plateau_notes(records, "b", ["rte"], ["lora"])
    assert notes[1] == "rte (majority-label rate 60.0%): lora 2/3 (dev loss 3→0.3)."
    assert plateau_notes(records, "b", ["sst2"], ["lora"]) == []


def test_the_untrained_row_is_never_marked_best():
    recs = _records() + [{"backbone": "smollm2-135m", "task": "rte", "cell": "zero-shot", "seed": 0,
                          "metrics": {"acc": 99.0}}]
    spec = TableSpec(paper="iapt", table=1, tasks=["rte"], cells=["lora", "iapt", "zero-shot"], proposed="iapt")
    _, md = render(spec, recs, [])
    assert "| zero-shot | 99.0 (99.0–99.0, n=1) |" in md and "**61.0**" in md


def test_search_overrides_name_each_cell_after_its_method_and_rate():
    """The search's overrides, composed as run.py composes them: the variant interpolation gives each
    (method, rate) its own cell, records go under lr_search/; with lr_search_reuse (the CPU table) they score
    the test split, without it they read no test row."""
    from core.config import compose
    from runners import table_plan
    from runners.results import cell_name
    from scripts import table

    cfg, axes = table_plan.grid("iapt_table1_cpu")
    over = dict(o.split("=", 1) for o in table.search_overrides(cfg, axes, "parade", "rte", [0.003]))
    c = compose(["experiment=iapt_table1_cpu", "method=parade", "runner.lr=0.003", f"task={over['task']}",
                 f"seed={over['seed']}", f"results_dir={over['results_dir']}", f"variant={over['variant']}"])
    assert cell_name(c) == "parade-lr0.003" and c.runner.eval_test is True and "runner.eval_test" not in over
    assert c.results_dir == "results/cpu/iapt_table1_s100/lr_search"
    cfg, axes = table_plan.grid("iapt_table1_cpu", ["lr_search_reuse=false"])
    assert "runner.eval_test=false" in table.search_overrides(cfg, axes, "parade", "rte", [0.003])


def test_rendered_table_is_logged_to_wandb_offline(tmp_path, monkeypatch):
    import glob

    from runners import table_plan, tables

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cfg, axes = table_plan.grid("iapt_table1_cpu", [f"results_dir={tmp_path / 'runs'}", "logger=wandb",
                                                    "logger.mode=offline", f"logger.dir={tmp_path / 'wb'}"])
    md = tables.render_table("iapt_table1_cpu", cfg, table_plan.plan(cfg, axes), str(tmp_path / "tables"))
    assert "W&B table: " in md
    assert glob.glob(str(tmp_path / "wb" / "wandb" / "offline-run-*" / "run-*.wandb")), "an offline run with the table"


def test_table_sends_missing_cells_through_the_chosen_launcher(tmp_path, monkeypatch):
    import subprocess

    from scripts import table

    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(cmd) or subprocess.CompletedProcess(cmd, 0))
    with pytest.raises(SystemExit):  # nothing finished: the table is incomplete
        table.main(["experiment=iapt_table1_cpu", f"out={tmp_path}", f"results_dir={tmp_path / 'runs'}",
                    "launcher=slurm"])
    assert calls and calls[0][2:4] == ["--multirun", "experiment=iapt_table1_cpu"] and calls[0][-1] == "hydra/launcher=slurm"


def test_jobs_runs_the_launches_side_by_side_with_a_share_of_the_threads(tmp_path, monkeypatch, capsys):
    """jobs=2: the grid's launches run two at a time (a barrier both must reach, which one at a time never
    does), each with runner.num_threads = cores / jobs; a grid without a learning-rate search is split by seed;
    a bad jobs value, or jobs with a launcher, is one line."""
    import subprocess
    import threading

    from core.errors import UserError
    from scripts import table

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    both = threading.Barrier(2, timeout=20)
    calls = []
    real = subprocess.run

    def fake(cmd, **kw):
        if not str(cmd[1]).endswith("run.py"):  # platform's own probes (W&B's table log) run for real
            return real(cmd, **kw)
        calls.append(cmd[2:])
        if len(calls) <= 2:
            both.wait()  # BrokenBarrierError unless a second launch is running at the same time
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(subprocess, "run", fake)
    with pytest.raises(SystemExit):
        table.main(["experiment=iapt_table1_cpu", f"out={tmp_path / 'tables'}", f"results_dir={tmp_path / 'runs'}",
                    "tasks=cb", "jobs=2"])
    # (nothing finishes here, so the search is retried once per widening round: the same 8 launches each time)
    assert len({tuple(c) for c in calls}) == 8 and all("runner.num_threads=1" in c and "task=cb" in c for c in calls)
    assert sorted({c[c.index("task=cb") - 2] for c in calls}) == sorted(
        f"method={m}" for m in ("lora", "houlsby", "p_tuning_v2", "lpt", "iapt", "parade", "para", "idspam"))

    calls.clear()
    both.reset()
    with pytest.raises(SystemExit):
        table.main(["experiment=iapt_table1", f"out={tmp_path / 'tables'}", f"results_dir={tmp_path / 'p'}", "jobs=2"])
    assert sorted(c[-2] for c in calls) == [f"seed={s}" for s in range(5)], calls
    assert all(c[-1] == "runner.num_threads=1" for c in calls)
    for bad, line in (("jobs=0", "jobs='0' must be a positive integer"), ("jobs=two", "jobs='two' must be"),
                      ("jobs=2 launcher=slurm", "jobs=2 runs cells side by side on this machine; launcher=slurm")):
        with pytest.raises(UserError, match=line):
            table.main(["experiment=iapt_table1_cpu", f"results_dir={tmp_path / 'runs'}", *bad.split()])
    capsys.readouterr()


TABLE_EXPERIMENTS = sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(ROOT, "conf", "experiment", "*.yaml"))
                           if re.match(r"^(iapt|parade|para|idspam)_table\d+(_cpu)?$", os.path.basename(p)[:-5]))


@pytest.mark.parametrize("experiment", TABLE_EXPERIMENTS)
def test_every_table_grid_cell_composes(experiment):
    """Each table experiment's grid (scripts.table.grid): every backbone, method, ablation cell and task it
    names exists and composes under the experiment (typed schemas, no model loaded), an ablation cell is
    named after its option and its method overrides land, and the plan has one run per grid point."""
    from core.config import compose
    from runners import table_plan
    from runners.results import cell_name

    cfg, axes = table_plan.grid(experiment)
    backbones = axes.get("backbone") or [cfg.backbone.name]
    ablations = axes.get(table_plan.ABLATION)
    cells = table_plan.cells_of(axes)
    assert len(set(cells)) == len(cells), "two rows with one name"
    if ablations:
        assert len(axes["method"]) == 1, "ablation cells override one method"
    if axes.get("variant") and not ablations:
        assert len(axes["variant"]) == len(axes["method"]), "variants pair with the methods"
    base = compose([f"experiment={experiment}", f"method={axes['method'][0]}"])
    for backbone in backbones:
        for i, cell in enumerate(cells):
            method = axes["method"][0] if ablations else axes["method"][i] if axes.get("variant") else cell
            extra = [f"+ablation={cell}"] if ablations else [f"variant={cell}"] if axes.get("variant") else []
            c = compose([f"experiment={experiment}", f"backbone={backbone}", f"method={method}",
                         f"task={axes['task'][0]}", *extra])
            assert (c.backbone.name, c.method.name, cell_name(c)) == (backbone, method, cell)
            if ablations and cell != method:
                assert c.method != base.method, f"+ablation={cell} changes no method field"
        for task in axes["task"]:
            c = compose([f"experiment={experiment}", f"backbone={backbone}", f"method={axes['method'][0]}",
                         f"task={task}"])
            assert c.task.name == task
    p = table_plan.plan(cfg, axes)
    assert len(p["runs"]) == len(backbones) * len(cells) * len(axes["task"]) * len(axes["seed"])


def test_not_public_columns_are_shown_missing_with_the_reason(tmp_path):
    from runners import table_plan, tables

    cfg, axes = table_plan.grid("para_table2", [f"results_dir={tmp_path}", "logger=none"])
    assert "hsm10k" not in axes["task"] and "q2sql" not in axes["task"], "not substituted"
    md = tables.render_table("para_table2", cfg, table_plan.plan(cfg, axes), str(tmp_path / "tables"))
    head = next(line for line in md.splitlines() if line.startswith("| method"))
    assert head.endswith("| HSM10K | Q2SQL |")
    assert "| para | missing | missing | missing | missing (not public: " in md


def test_metric_columns_of_one_task_and_a_record_without_the_metric():
    """`task:metric` columns (iapt.txt Table 3: the judge score and ROUGE-L of the alpaca records); a record
    without the column's metric (no judge configured) is shown with that reason, not as a number."""
    recs = [{"backbone": "llama2-7b", "task": "alpaca", "cell": c, "seed": s,
             "metrics": {"rouge-l": 50.0 + s + (2 if c == "iapt" else 0), **({"gpt4-score": 7.0 + s / 10} if c == "iapt" else {})}}
            for c in ("adalora", "iapt") for s in range(3)]
    spec = TableSpec(paper="iapt", table=3, tasks=["alpaca:gpt4-score", "alpaca:rouge-l"], cells=["adalora", "iapt"],
                     proposed="iapt", backbone="llama2-7b")
    df, md = render(spec, recs, [], {("alpaca:rouge-l", "iapt"): 52.8})
    row = df[(df.task == "alpaca:rouge-l") & (df.cell == "iapt")].iloc[0]
    assert (row["median"], row["paper"]) == (53.0, 52.8)
    assert df[(df.task == "alpaca:gpt4-score") & (df.cell == "iapt")].iloc[0]["median"] == pytest.approx(7.1)
    adalora = next(line for line in md.splitlines() if line.startswith("| adalora |"))
    assert "| missing (seed0: no 'gpt4-score' in its metrics (rouge-l); seed1:" in adalora
    assert "<u>51.0</u> (50.0–52.0, n=3); vs iapt -2.0" in adalora


def test_paper_numbers_of_metric_transfer_and_few_shot_columns():
    """names.csv maps Table 3's metric columns to task:metric, Table 6's transfer columns to their test task
    (IMDB -> SST-2 on SST-2's acc-f1), PARA Table 3's two-level "MT-Bench / gpt4-score" header, and Table
    11's "Train / Eval / Tuning" rows to (eval task, method)."""
    from runners.tables import paper_numbers

    def numbers(paper, table, tasks, cells, backbone):
        return paper_numbers(TableSpec(paper=paper, table=table, tasks=tasks, cells=cells, proposed=cells[-1],
                                       backbone=backbone))

    assert numbers("parade", 3, ["alpaca:gpt4-score", "alpaca:rouge-l"], ["adalora", "parade"], "llama2-7b") == {
        ("alpaca:gpt4-score", "adalora"): 7.01, ("alpaca:rouge-l", "adalora"): 51.1,
        ("alpaca:gpt4-score", "parade"): 7.23, ("alpaca:rouge-l", "parade"): 52.6}
    para = numbers("para", 3, ["ultrachat:gpt4-score", "mmlu:acc"], ["adalora", "para"], "llama2-7b")
    assert para[("ultrachat:gpt4-score", "para")] == 7.21 and para[("mmlu:acc", "adalora")] == 46.5 and len(para) == 4
    t6 = numbers("idspam", 6, ["mrpc", "qqp", "imdb", "sst2:acc-f1"], ["lora", "idspam"], "roberta-large")
    assert t6[("mrpc", "idspam")] == 70.9 and t6[("sst2:acc-f1", "lora")] == 87.6 and len(t6) == 32
    t11 = numbers("idspam", 11, ["qqp", "mrpc"], ["full", "lpt", "idspam"], "roberta-large")
    assert t11 == {("qqp", "full"): 81.7, ("qqp", "lpt"): 74.4, ("qqp", "idspam"): 73.1,
                   ("mrpc", "full"): 79.7, ("mrpc", "lpt"): 69.4, ("mrpc", "idspam"): 72.5}


def test_columns_must_name_grid_tasks():
    from core.errors import UserError
    from runners import table_plan, tables

    cfg, axes = table_plan.grid("iapt_table3")
    assert tables.columns(cfg, axes["task"]) == ["alpaca:gpt4-score", "alpaca:rouge-l"]
    with pytest.raises(UserError, match=r"columns \['boolq:acc'\] name no task of the grid; its tasks: alpaca"):
        tables.columns({"columns": ["boolq:acc"]}, axes["task"])


def test_runs_that_give_one_answer_are_flagged(tmp_path):
    """A run answering one label for >= 90% of its test rows (gold balanced) gets a note under the table;
    a balanced run, a task whose gold is itself one label, and open-ended answers do not."""
    import json

    from runners.tables import one_answer_notes

    def rec(task, cell, preds, golds):
        path = tmp_path / f"{task}-{cell}.json"
        path.with_suffix(".predictions.jsonl").write_text("".join(
            json.dumps({"id": i, "prediction": p, "reference": g}) + "\n" for i, (p, g) in enumerate(zip(preds, golds))))
        return {"backbone": "b", "task": task, "cell": cell, "seed": 0, "_path": str(path)}

    gold = ["positive", "negative"] * 10
    recs = [rec("sst2", "iapt", ["positive"] * 19 + ["negative"], gold),
            rec("sst2", "lora", gold, gold),
            rec("copa", "lora", ["1"] * 20, ["1"] * 19 + ["2"]),
            rec("squad", "lora", [f"answer {i}" for i in range(20)], [[f"a{i}"] for i in range(20)])]
    notes = one_answer_notes(recs, "b", ["sst2", "copa", "squad"], ["iapt", "lora"])
    assert notes == ["iapt sst2 seed 0: one answer for 95% of the test rows ('positive'; the most frequent gold "
                     "label covers 50%)"]
    assert one_answer_notes(recs, "other", ["sst2"], ["iapt"]) == [], "another backbone's runs are not read"


def test_example_level_paired_test_against_a_direct_computation():
    """paired_examples on hand-made per-example scores: the mean of the per-example differences averaged over
    the common seeds, the permutation p against the exact sign-flip distribution, an interval around it."""
    import itertools

    from runners.tables import paired_examples

    ours = {0: {"a": 100, "b": 100, "c": 0, "d": 100, "e": 100}, 1: {"a": 100, "b": 0, "c": 100, "d": 100, "e": 100},
            2: {"a": 0, "b": 0, "c": 0, "d": 0, "e": 0}}  # seed 2: the reference has no seed 2
    ref = {0: {"a": 0, "b": 100, "c": 0, "d": 0, "e": 100, "z": 0}, 1: {"a": 0, "b": 100, "c": 0, "d": 0, "e": 0}}
    x = paired_examples(ours, ref)
    d = [statistics.fmean([ours[s][i] - ref[s][i] for s in (0, 1)]) for i in "abcde"]  # 100, -50, 50, 100, 50
    assert x["n_seeds"] == 2 and x["n_examples"] == 5 and x["mean_diff"] == pytest.approx(statistics.fmean(d))
    flips = [abs(statistics.fmean(s * v for s, v in zip(signs, d))) >= abs(statistics.fmean(d)) - 1e-12
             for signs in itertools.product((-1, 1), repeat=len(d))]
    assert x["p_perm"] == pytest.approx(sum(flips) / len(flips), abs=0.02)
    assert min(d) <= x["ci_low"] <= x["mean_diff"] <= x["ci_high"] <= max(d)
    same = paired_examples(ours, ours)
    assert same["mean_diff"] == 0 and same["p_perm"] == 1.0


def test_example_scores_and_notes_from_predictions_files(tmp_path):
    """runners/score.py example_scores reads the predictions beside a record and scores each example with
    the record's task; the table's notes carry the example-level test against the proposed cell and LoRA."""
    import json

    from runners.aggregate import scan
    from runners.score import example_scores
    from runners.tables import TableSpec, example_notes

    gold = ["positive", "negative", "positive", "negative"]
    answers = {"iapt": ["positive", "negative", "negative", "negative"], "lora": ["positive", "positive", "positive",
                                                                                   "negative"],
               "parade": gold}
    for cell, preds in answers.items():
        for seed in (0, 1):
            folder = tmp_path / "smollm2-135m" / "sst2" / cell
            folder.mkdir(parents=True, exist_ok=True)
            rec = {"schema": 1, "backbone": "smollm2-135m", "task": "sst2", "method": cell, "variant": None,
                   "cell": cell, "seed": seed, "status": "ok", "metrics": {"acc": 75.0}, "dev": {}, "params": {},
                   "config": {"method": {"name": cell}, "task": {"name": "sst2"}}, "provenance": {},
                   "wall_time_s": 1.0, "curve": {}}
            (folder / f"seed{seed}.json").write_text(json.dumps(rec))
            (folder / f"seed{seed}.predictions.jsonl").write_text("".join(
                json.dumps({"id": f"x{i}", "prompt": "", "prediction": p, "reference": g}) + "\n"
                for i, (p, g) in enumerate(zip(preds, gold))))
    records, _ = scan(str(tmp_path))
    iapt0 = next(r for r in records if r["cell"] == "iapt" and r["seed"] == 0)
    assert example_scores(iapt0) == {"x0": 100.0, "x1": 100.0, "x2": 0.0, "x3": 100.0}
    spec = TableSpec(paper="iapt", table=1, tasks=["sst2"], cells=["lora", "parade", "iapt"], proposed="iapt")
    notes = example_notes(spec, records, ["iapt", "lora"])
    assert notes[0].startswith("Example-level paired tests (acc per test example")
    assert notes[1].startswith("sst2 vs iapt (4 test examples x 2 seeds): lora +0.0 [") and "parade +25.0 [" in notes[1]
    assert notes[2].startswith("sst2 vs lora (4 test examples x 2 seeds): parade +25.0 [") and "iapt +0.0 [" in notes[2]
