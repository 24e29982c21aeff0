"""Render a paper table from run records: per cell our median over seeds, n, the spread, the paper's
number and the difference, best and second best marked, missing and failed cells shown with the reason,
a paired test of every method against the table's proposed one on the seeds both have, and (where the
paper's table has one) a Mean column over the table's tasks.

    spec = TableSpec(paper="iapt", table=1, tasks=["sst2", "rte"], cells=["lora", "iapt"], proposed="iapt")
    df, md = render(spec, records, problems, paper_numbers(spec))
    md = render_table("iapt_table1_cpu", cfg, plan, out_dir)   # a table experiment's blocks, files and notes

`records`/`problems` are `runners.aggregate.scan`'s. Higher is better for every metric rendered here
(accuracy, F1, ROUGE, execution accuracy, judge scores), as in the papers' tables. What the tables know of
each paper (its proposed method, its columns without public data, its row labels) is data:
results/paper/papers.yaml, read by `papers()`. `python -m scripts.table experiment=<paper>_table<N>` plans,
runs and renders a table (scripts/table.py).
"""

from __future__ import annotations

import csv
import functools
import math
import os
import re
import statistics
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from core.errors import UserError
from runners.results import ZERO_SHOT, atomic_write_text
from runners.score import example_scores, predictions_of
from runners.table_plan import lr_str

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER_DIR = os.path.join(ROOT, "results", "paper")
BACKBONE_DIR = os.path.join(ROOT, "conf", "backbone")
MEAN = "mean"  # the Mean column's task name: in the long table, the markdown header and paper_numbers' keys
NO_METRIC = " in its metrics "  # a finished record without a column's metric (e.g. no judge configured)
MEAN_HEADS = ("Mean", "AVG", "Average")  # the papers' headers of an average over the table's tasks
PAIRED = ("vs_n_pairs", "vs_mean_diff", "vs_ci_low", "vs_ci_high", "vs_p_wilcoxon")  # the long table's `paired`


@dataclass
class TableSpec:
    paper: str  # a paper of results/paper/papers.yaml (results/paper/<paper>_table<N>.csv)
    table: int  # the paper's table number
    # columns: harness task names (their headline metric), or `task:metric` for another metric of a task's
    # records (iapt.txt Table 3: alpaca:gpt4-score, alpaca:rouge-l)
    tasks: list[str]
    cells: list[str]  # rows: harness cell names (method or variant)
    proposed: str  # the cell every other one is compared with (paired test)
    backbone: str = "smollm2-135m"
    title: str = ""  # e.g. "IAPT Table 1 at CPU scale (SmolLM2-135M), not the paper's setting"
    notes: list[str] = field(default_factory=list)  # printed under the table (lr grid, budgets, ...)
    # {paper column: reason} of the paper's columns with no harness task (no public data): shown as missing
    unavailable: dict[str, str] = field(default_factory=dict)
    # the Mean column: per cell the mean of its task medians (the papers average their per-task numbers),
    # only where every task has a result. None: shown when the paper numbers have a Mean (paper_numbers
    # gives one only where the paper averages exactly these tasks); True / False: always / never
    mean: bool | None = None
    mean_of: list[str] | None = None  # the columns the Mean averages (the CPU Table 1: not its mixture); None: all


# -- statistics --------------------------------------------------------------------------------------------
def paired(ours: dict[int, float], ref: dict[int, float]) -> dict:
    """Seed-level paired comparison of two cells on their common seeds: the mean difference (ours - ref), its
    Student-t 95% interval (mean +- t(n-1) sd / sqrt n: a real interval only as far as the seed differences
    are roughly normal; with 3 seeds it is wide, t = 4.30), and the two-sided Wilcoxon signed-rank p-value
    (scipy; exact for small n). The smallest possible Wilcoxon p is 0.25 with 3 seeds and 0.0625 with 5:
    seeds alone cannot reach p < 0.05 below 6 (`paired_examples` pools test examples for power)."""
    from scipy.stats import t, wilcoxon

    seeds = sorted(set(ours) & set(ref))
    d = np.array([ours[s] - ref[s] for s in seeds], dtype=float)
    out = {"n_pairs": len(seeds), "mean_diff": float(d.mean()) if len(d) else math.nan,
           "ci_low": math.nan, "ci_high": math.nan, "p_wilcoxon": math.nan}
    if len(d) < 2:
        return out
    half = float(t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d)))
    out["ci_low"], out["ci_high"] = out["mean_diff"] - half, out["mean_diff"] + half
    out["p_wilcoxon"] = 1.0 if not d.any() else float(wilcoxon(d, zero_method="wilcox").pvalue)
    return out


def paired_examples(ours: dict[int, dict[str, float]], ref: dict[int, dict[str, float]], n_resamples: int = 10_000,
                    seed: int = 0) -> dict:
    """Example-level paired comparison pooled over seeds. `ours`/`ref`: {seed: {example id: score}} (100 for a
    right answer, 0 for a wrong one). On the common seeds and the ids both have on all of them, each example's
    difference is averaged over the seeds; returned: the mean of those (accuracy points), a paired bootstrap
    95% interval over examples (percentile), a two-sided sign-flip permutation p over examples (the share of
    random sign flips whose |mean| reaches the observed one, +1 smoothed), and the counts. The unit is the
    test example: it asks whether the difference would hold on other examples drawn alike, for these
    training seeds; the seed-level Wilcoxon (`paired`) asks whether it holds over training seeds."""
    seeds = sorted(set(ours) & set(ref))
    ids = sorted(set.intersection(*(set(ours[s]) & set(ref[s]) for s in seeds))) if seeds else []
    out = {"n_seeds": len(seeds), "n_examples": len(ids), "mean_diff": math.nan, "ci_low": math.nan,
           "ci_high": math.nan, "p_perm": math.nan}
    if not ids:
        return out
    d = np.array([[ours[s][i] - ref[s][i] for s in seeds] for i in ids], dtype=float).mean(1)
    out["mean_diff"] = float(d.mean())
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, len(d), size=(n_resamples, len(d)))].mean(1)
    out["ci_low"], out["ci_high"] = (float(x) for x in np.percentile(boots, [2.5, 97.5]))
    flips = rng.choice(np.array([-1.0, 1.0]), size=(n_resamples, len(d)))
    reach = np.abs((flips * d).mean(1)) >= abs(out["mean_diff"]) - 1e-12
    out["p_perm"] = float((reach.sum() + 1) / (n_resamples + 1))
    return out


def example_notes(spec: TableSpec, records: list[dict], against: list[str], metric: str = "acc") -> list[str]:
    """The table's example-level paired tests (`paired_examples`) of every cell against each cell of `against`
    (the proposed method and LoRA), per column, on `metric` per test example (runners/score.py
    `example_scores`); columns or runs without per-example scores are left out and said so."""
    per: dict[tuple[str, str], dict[int, dict[str, float]]] = {}
    lacking = set()
    for r in records:
        if r["backbone"] != spec.backbone or r["cell"] not in spec.cells or r["cell"] == ZERO_SHOT:
            continue
        column = next((c for c in spec.tasks if column_task(c) == r["task"]), None)
        if column is None:
            continue
        scores = example_scores(r, metric)
        if scores is None:
            lacking.add(column)
            continue
        per.setdefault((column, r["cell"]), {})[int(r["seed"])] = scores
    lines = []
    for column in spec.tasks:
        for ref in [c for c in against if (column, c) in per]:
            parts = []
            for cell in spec.cells:
                if cell == ref or (column, cell) not in per:
                    continue
                x = paired_examples(per[(column, cell)], per[(column, ref)])
                if x["n_examples"]:
                    parts.append(f"{cell} {x['mean_diff']:+.1f} [{x['ci_low']:+.1f}, {x['ci_high']:+.1f}] "
                                 f"p={x['p_perm']:.3f}")
            if parts:
                seeds = per[(column, ref)]
                n_ex = len(set.intersection(*(set(x) for x in seeds.values())))
                lines.append(f"{column} vs {ref} ({n_ex} test examples x {len(seeds)} seeds): " + "; ".join(parts) + ".")
    if lines:
        lines.insert(0, f"Example-level paired tests ({metric} per test example, averaged over the seeds both cells "
                        "have; mean difference in points [paired bootstrap 95% interval over examples], two-sided "
                        "sign-flip permutation p over examples, 10,000 resamples):")
    if lacking:
        lines.append(f"No example-level test for {', '.join(sorted(lacking))}: runs without a predictions file or "
                     f"a per-example '{metric}'.")
    return lines


# -- paper numbers -----------------------------------------------------------------------------------------
@functools.cache
def papers(paper_dir: str = PAPER_DIR) -> dict[str, dict]:
    """{paper: {proposed, not_public: {column: reason}, rows: {table: label parts}}} of
    <paper_dir>/papers.yaml (its comments say what each key means); {} without the file."""
    import yaml

    path = os.path.join(paper_dir, "papers.yaml")
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        about = yaml.safe_load(f)
    return {paper: {"not_public": {}, "rows": {}, **(keys or {})} for paper, keys in about.items()}


def table_of(experiment: str) -> tuple[str, int, bool] | None:
    """(paper, table number, CPU scale) of a table experiment's name `<paper>_table<N>[_cpu]` (a paper of
    papers.yaml), None for any other name."""
    m = re.fullmatch(rf"({'|'.join(map(re.escape, papers()))})_table(\d+)(_cpu)?", experiment)
    return (m[1], int(m[2]), bool(m[3])) if m else None


def not_public(paper: str, number: int) -> dict[str, str]:
    """{paper column: reason} of the paper table's columns that have no public data (papers.yaml's
    not_public among the columns of results/paper/<paper>_table<N>.csv)."""
    path = os.path.join(PAPER_DIR, f"{paper}_table{number}.csv")
    if not os.path.exists(path):
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        heads = dict.fromkeys(strip_unit(r["column"].split(" / ")[0]) for r in csv.DictReader(f))
    reasons = papers()[paper]["not_public"]
    return {h: reasons[h] for h in heads if h in reasons}


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


@functools.cache
def _backbones() -> tuple[str, ...]:
    return tuple(sorted(f[:-5] for f in os.listdir(BACKBONE_DIR) if f.endswith(".yaml")))


def section_backbone(label: str, backbones: list[str] | None = None) -> tuple[str | None, str]:
    """(the conf/backbone name its section names, the rest) of a paper row or column label whose part before
    the first " / " names a backbone ("Results for GPT-2 large / LoRA" -> ("gpt2-large", "LoRA"), "GLUE
    (RoBERTa-BASE Backbone) / LPT" -> ("roberta-base", "LPT")); (None, label) otherwise ("LoRA / 1").
    A section names the backbone whose name, letters and digits only, it contains (the longest such)."""
    section, sep, rest = label.partition(" / ")
    if not sep:
        return None, label
    found = [b for b in (_backbones() if backbones is None else backbones) if _norm(b) and _norm(b) in _norm(section)]
    return (max(found, key=len), rest) if found else (None, label)


def strip_unit(head: str) -> str:
    """A paper column's head without its trailing parenthesis: "SST-2 (acc)" -> "SST-2"."""
    return re.sub(r"\s*\(.*\)$", "", head)


def paper_numbers(spec: TableSpec, paper_dir: str = PAPER_DIR) -> dict[tuple[str, str], float]:
    """{(task, cell): the paper's number} through results/paper/names.csv (the paper's method and task
    names -> harness names); empty when the table's CSV is not there. Where the table's rows (or columns)
    are in sections per backbone (`section_backbone`), only `spec.backbone`'s section counts. Where
    papers.yaml gives the table's row label parts (id-spam Table 11: train / task / method), a number's task
    is its row's. The paper's Mean (`MEAN_HEADS`) comes as (MEAN, cell) when the paper's task columns are
    exactly `spec.tasks`."""
    path = os.path.join(paper_dir, f"{spec.paper}_table{spec.table}.csv")
    names_path = os.path.join(paper_dir, "names.csv")
    if not os.path.exists(path) or not os.path.exists(names_path):
        return {}
    names: dict[tuple[str, str], str] = {}  # "" = a paper task (or method) with no harness counterpart
    with open(names_path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["paper"] == spec.paper:
                names[(row["kind"], row["paper_name"])] = row["harness_name"]
    parts = papers(paper_dir).get(spec.paper, {}).get("rows", {}).get(spec.table)

    def task_of(column: str) -> str | None:
        """The harness column of a paper column: "SST-2 (acc)" -> sst2, "Avg GPT-4 score" -> whatever
        names.csv says (alpaca:gpt4-score), a two-level "MT-Bench / gpt4-score (...)" -> ultrachat:gpt4-score."""
        head, _, tail = column.partition(" / ")
        task = next((names[("task", h)] for h in (column, head, strip_unit(head)) if ("task", h) in names), None)
        tail = strip_unit(tail)
        return f"{task}:{tail}" if task and tail and ":" not in task else task

    out, means, paper_tasks = {}, {}, set()
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            (row_bb, method), (col_bb, column) = section_backbone(row["row"]), section_backbone(row["column"])
            if {row_bb, col_bb} - {None, spec.backbone}:
                continue  # another backbone's number
            task = None if column in MEAN_HEADS else task_of(column)
            if parts:  # the label's parts, e.g. {"train": "MRPC", "task": "QQP", "method": "LPT"}
                label = dict(zip(parts, method.split(" / ")))
                task, method = names.get(("task", label["task"])) or None, label["method"]
            cell = names.get(("method", method))
            if task is not None:
                paper_tasks.add(task)
            if not cell or row["value"] in ("", None):
                continue
            if column in MEAN_HEADS:
                means.setdefault(cell, float(row["value"]))
            elif task and (task, cell) not in out:
                out[(task, cell)] = float(row["value"])
    if paper_tasks == set(spec.tasks):  # the paper's Mean averages the tasks we average
        out.update({(MEAN, cell): v for cell, v in means.items()})
    return out


# -- the table ---------------------------------------------------------------------------------------------
def column_task(column: str) -> str:
    """The harness task of a table column (`task` or `task:metric`)."""
    return column.partition(":")[0]


def _scores(records, spec: TableSpec) -> tuple[dict[tuple[str, str], dict[int, float]], dict[tuple[str, str], list[str]]]:
    """({(column, cell): {seed: score}}, {(column, cell): [why a finished record gives no score]}): a column's
    metric is the one it names, else the record's headline (first) metric."""
    out: dict[tuple[str, str], dict[int, float]] = {}
    lacking: dict[tuple[str, str], list[str]] = {}
    for r in records:
        if r["backbone"] != spec.backbone or r["cell"] not in spec.cells:
            continue
        for column in spec.tasks:
            task, _, metric = column.partition(":")
            if r["task"] != task:
                continue
            metric = metric or next(iter(r["metrics"]))
            if metric in r["metrics"]:
                out.setdefault((column, r["cell"]), {})[int(r["seed"])] = float(r["metrics"][metric])
            else:
                lacking.setdefault((column, r["cell"]), []).append(
                    f"seed{r['seed']}: no '{metric}'{NO_METRIC}({', '.join(r['metrics']) or 'none'})")
    return out, lacking


def _seed_means(scores, spec: TableSpec, cell: str) -> dict[int, float]:
    """{seed: the mean over the Mean's tasks} on the seeds where `cell` has every one of them."""
    per = [scores.get((t, cell), {}) for t in spec.mean_of or spec.tasks]
    common = set.intersection(*(set(s) for s in per)) if per else set()
    return {seed: statistics.fmean(s[seed] for s in per) for seed in sorted(common)}


def _mean_rows(spec: TableSpec, rows: list[dict], scores, paper) -> list[dict]:
    """The Mean column's long-table rows (task MEAN): median = the mean of the cell's task medians (NaN
    unless every task has one), n = the fewest seeds behind a task median, seeds = those with every task,
    problems = the tasks without a result; the paired test is on per-seed means over the tasks."""
    by = {(r["task"], r["cell"]): r for r in rows}
    out = []
    ref = _seed_means(scores, spec, spec.proposed)
    tasks = spec.mean_of or spec.tasks
    for cell in spec.cells:
        lacking = [t for t in tasks if by[(t, cell)]["n"] == 0]
        seeds = _seed_means(scores, spec, cell)
        row = {"task": MEAN, "cell": cell, "n": min((by[(t, cell)]["n"] for t in tasks), default=0),
               "seeds": ",".join(map(str, seeds)),
               "median": math.nan if lacking or not tasks else statistics.fmean(by[(t, cell)]["median"] for t in tasks),
               "min": math.nan, "max": math.nan, "paper": paper.get((MEAN, cell), math.nan),
               "problems": f"no result for {', '.join(lacking)}" if lacking else ""}
        row["diff"] = row["median"] - row["paper"]
        if cell != spec.proposed and seeds and ref:
            row.update({f"vs_{k}": v for k, v in paired(seeds, ref).items()})
        out.append(row)
    return out


def render(spec: TableSpec, records: list[dict], problems: list[dict],
           paper: dict[tuple[str, str], float] | None = None) -> tuple[pd.DataFrame, str]:
    """(long table: one row per task x cell, then the Mean's rows (task MEAN) where `spec.mean` asks for
    them, markdown). Markdown cells: `median (min-max, n)`, paper number and difference beside it, best
    **bold** and second <u>underlined</u> per column, `missing` or `failed: <reason>` where there is no
    finished record, and the paired test against `spec.proposed`."""
    paper = paper or {}
    scores, failed = _scores(records, spec)
    for p in problems:
        for column in spec.tasks:
            if p["backbone"] == spec.backbone and p["task"] == column_task(column) and p["cell"] in spec.cells:
                failed.setdefault((column, p["cell"]), []).append(f"seed{p['seed']}: {p['problem']}")
    rows = []
    for task in spec.tasks:
        for cell in spec.cells:
            s = scores.get((task, cell), {})
            row = {"task": task, "cell": cell, "n": len(s), "seeds": ",".join(map(str, sorted(s))),
                   "median": statistics.median(s.values()) if s else math.nan,
                   "min": min(s.values()) if s else math.nan, "max": max(s.values()) if s else math.nan,
                   "paper": paper.get((task, cell), math.nan),
                   "problems": "; ".join(failed.get((task, cell), []))}
            row["diff"] = row["median"] - row["paper"]
            if cell != spec.proposed and s and scores.get((task, spec.proposed)):
                row.update({f"vs_{k}": v for k, v in paired(s, scores[(task, spec.proposed)]).items()})
            rows.append(row)
    if spec.mean or (spec.mean is None and any(t == MEAN for t, _ in paper)):
        rows += _mean_rows(spec, rows, scores, paper)
    df = pd.DataFrame(rows)
    return df, to_markdown(spec, df)


def _rank_marks(values: dict[str, float]) -> dict[str, str]:
    done = sorted({v for v in values.values() if not math.isnan(v)}, reverse=True)
    best, second = (done + [None, None])[:2]
    return {c: "best" if v == best else "second" if v == second else "" for c, v in values.items()}


def _fmt(x: float, nd: int = 1) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def _marked(x: float, mark: str) -> str:
    return {"best": f"**{_fmt(x)}**", "second": f"<u>{_fmt(x)}</u>"}.get(mark, _fmt(x))


def _beside(spec: TableSpec, r) -> str:
    """The paper's number and the difference, then the paired test against the proposed cell."""
    text = "" if math.isnan(r.paper) else f"; paper {_fmt(r.paper)} ({r.diff:+.1f})"
    if not math.isnan(r.vs_p_wilcoxon):
        text += (f"; vs {spec.proposed} {r.vs_mean_diff:+.1f} [{_fmt(r.vs_ci_low)}, {_fmt(r.vs_ci_high)}]"
                 f" p={r.vs_p_wilcoxon:.2f}")
    return text


def to_markdown(spec: TableSpec, df: pd.DataFrame) -> str:
    """The markdown of `render`'s long table: a column per task, the unavailable ones, and the Mean where
    the long table has its rows."""
    title = spec.title or f"{spec.paper.upper()} Table {spec.table} ({spec.backbone})"
    # every row with the paired test's columns: NaN where `render` had no pair to test (none at all: no column)
    df = df.reindex(columns=[*df.columns, *(c for c in PAIRED if c not in df)])
    by = {(r.task, r.cell): r for r in df.itertuples()}
    mean = bool(spec.cells) and all((MEAN, c) in by for c in spec.cells)
    ranked = [*spec.tasks, *([MEAN] if mean else [])]
    heads = [*spec.tasks, *spec.unavailable, *([MEAN] if mean else [])]
    lines = [f"### {title}", "", "| method | " + " | ".join(heads) + " |", "|---|" + "---|" * len(heads)]
    # best/second among the methods: the untrained backbone's row is a reference, never marked
    marks = {t: _rank_marks({c: by[(t, c)].median for c in spec.cells if c != ZERO_SHOT}) for t in ranked}
    for cell in spec.cells:
        out = []
        for task in spec.tasks:
            r = by[(task, cell)]
            if r.n == 0:
                lacks = r.problems and all(NO_METRIC in part for part in r.problems.split("; "))
                out.append(f"{'missing' if lacks else 'failed'} ({r.problems})" if r.problems else "missing")
                continue
            text = f"{_marked(r.median, marks[task].get(cell, ''))} ({_fmt(r.min)}–{_fmt(r.max)}, n={r.n})"
            out.append(text + _beside(spec, r) + (f"; also {r.problems}" if r.problems else ""))
        out += [f"missing ({why})" for why in spec.unavailable.values()]
        if mean:
            r = by[(MEAN, cell)]
            if math.isnan(r.median):
                paper = "" if math.isnan(r.paper) else f"; paper {_fmt(r.paper)}"
                out.append(f"missing ({r.problems}){paper}")
            else:
                out.append(f"{_marked(r.median, marks[MEAN].get(cell, ''))} (of {len(spec.mean_of or spec.tasks)} "
                           "task medians)"
                           + _beside(spec, r))
        lines.append(f"| {cell} | " + " | ".join(out) + " |")
    lines += ["", f"Cells: median over seeds (min–max, n). Paired against {spec.proposed} on common seeds: "
              "mean difference [Student-t 95% interval over the seed differences], two-sided Wilcoxon "
              "signed-rank p (3 seeds cannot reach p < 0.25, 5 seeds not p < 0.0625: see the example-level tests "
              "for power)."]
    if mean:
        of = f" over {', '.join(spec.mean_of)}" if spec.mean_of else ""
        lines += [f"{MEAN}: the mean of the cell's task medians{of} (the papers average their per-task numbers), "
                  "only where every task has a result; paired on the per-seed means over the tasks (the "
                  "seeds that have every task)."]
    lines += [f"- {n}" for n in spec.notes]
    return "\n".join(lines) + "\n"


# -- a table experiment: its blocks, notes and files -------------------------------------------------------
def columns(cfg, tasks: list[str]) -> list[str]:
    """The table's columns: the experiment's `columns` (`task` or `task:metric`, each of a grid task), else
    the grid's tasks; UserError for a `mean_of` entry that is not one of them."""
    cols = list(cfg.get("columns") or tasks)
    bad = [c for c in cols if column_task(c) not in tasks]
    if bad:
        raise UserError(f"columns {bad} name no task of the grid; its tasks: {', '.join(tasks)} "
                        "(a column is `task` or `task:metric`)")
    bad = [c for c in cfg.get("mean_of") or [] if c not in cols]
    if bad:
        raise UserError(f"mean_of {bad} names no column of the table; its columns: {', '.join(cols)}")
    return cols


def budget_note(cfg) -> str:
    r = cfg.runner
    return (f"Budget: {r.max_steps} steps x {r.batch_size} rows, dev loss every {r.eval_steps} steps on "
            f"{r.max_dev_examples} dev rows (best restored), test answers by `{r.scoring}`"
            + (f" (beam {r.num_beams})" if r.scoring == "generate" else "")
            + f", the first {r.max_test_examples} test rows at most (a task with fewer: all of them).")


def search_notes(search: dict) -> list[str]:
    """The table's notes on the learning-rate choices (runners/table_plan.py `search_plan`), per task."""
    grid = ", ".join(lr_str(x) for x in search["grid"])
    read = ("the choice reads dev losses only; the chosen rate's run is also the seed's cell" if search.get("reuse")
            else "no test rows read")
    out = [f"Learning rate per method and task, chosen on that task's dev split (seed {search['seed']}; {read}) "
           f"by the lowest best dev loss, from [{grid}] widened by the grid's ratio past an edge choice (up to "
           f"{search['widen']} steps a side); a failed selection run (diverged) counts as an infinite loss:"]
    for task in search["tasks"]:
        for method in search["methods"]:
            key = (method, task)
            d = search["losses"].get(key, {})
            rates = sorted(set(search["grid"]) | set(d))
            per = " / ".join(f"{lr_str(lr)}: {'diverged' if math.isinf(d[lr]) else f'{d[lr]:.3f}'}" if lr in d
                             else f"{lr_str(lr)}: –" for lr in rates)
            pick = search["chosen"].get(key)
            state = (f"lr {lr_str(pick)}" if pick else "widening" if key in search["next"] else "not chosen yet")
            out.append(f"{method} on {task}: {state} (best dev loss at each rate: {per})"
                       + (f"; {search['edge'][key]}" if key in search["edge"] else ""))
    return out


ONE_ANSWER = 0.9  # a run giving one answer to at least this share of its test rows is flagged under the table


def one_answer_notes(records: list[dict], backbone: str, tasks: list[str], cells: list[str]) -> list[str]:
    """Notes on runs that collapsed to one answer (a degenerate model, e.g. a label prior learned instead of
    the task): the answer given to >= ONE_ANSWER of the test rows while the gold labels are more balanced,
    read from each record's predictions file. Open-ended tasks (answers mostly distinct) are never flagged."""
    out = []
    for r in sorted(records, key=lambda r: (r["task"], r["cell"], int(r["seed"]))):
        if r["backbone"] != backbone or r["task"] not in tasks or r["cell"] not in cells:
            continue
        rows = predictions_of(r) or []
        if not rows:
            continue
        answer, n = Counter(x["prediction"] for x in rows).most_common(1)[0]
        gold = Counter(x["reference"] if isinstance(x["reference"], str) else x["reference"][0] for x in rows)
        gold_top = gold.most_common(1)[0][1] / len(rows)
        if n / len(rows) >= ONE_ANSWER and gold_top < ONE_ANSWER:
            out.append(f"{r['cell']} {r['task']} seed {r['seed']}: one answer for {100 * n / len(rows):.0f}% of "
                       f"the test rows ('{answer}'; the most frequent gold label covers {100 * gold_top:.0f}%)")
    return out


PLATEAU_P = 0.05  # a run is off the chance plateau when it beats the majority-label rate at this one-sided p


def above_majority(rows: list[dict]) -> tuple[int, int, float, float] | None:
    """(right answers, rows, the majority-label rate, one-sided exact binomial p that the accuracy exceeds it)
    of a classification run's predictions; the majority is taken per task where ids carry one (`<task>/<id>`:
    the mixture), so answering each task's commonest label is the baseline. None for open-ended answers."""
    from scipy.stats import binomtest

    gold = [x["reference"] if isinstance(x["reference"], str) else x["reference"][0] for x in rows]
    if not rows or len(set(gold)) > 10:
        return None
    right = sum(x["prediction"] in ([x["reference"]] if isinstance(x["reference"], str) else x["reference"])
                for x in rows)
    groups: dict[str, Counter] = {}
    for x, g in zip(rows, gold):
        groups.setdefault(str(x["id"]).split("/", 1)[0] if "/" in str(x["id"]) else "", Counter())[g] += 1
    rate = sum(c.most_common(1)[0][1] for c in groups.values()) / len(rows)
    return right, len(rows), rate, float(binomtest(right, len(rows), rate, alternative="greater").pvalue)


def plateau_notes(records: list[dict], backbone: str, tasks: list[str], cells: list[str]) -> list[str]:
    """Per task: for each cell, how many seeds left the chance plateau (`above_majority` at PLATEAU_P) and the
    median dev-loss curve over its seeds (each evaluation step), so that a cell at chance shows as one."""
    per: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        if r["backbone"] == backbone and r["task"] in tasks and r["cell"] in cells and r["cell"] != ZERO_SHOT:
            per.setdefault((r["task"], r["cell"]), []).append(r)
    out = []
    for task in tasks:
        parts, rate = [], None
        for cell in cells:
            runs = per.get((task, cell), [])
            tests = [t for t in (above_majority(predictions_of(r) or []) for r in runs) if t]
            if not tests:
                continue
            rate = tests[0][2]
            steps: dict[int, list[float]] = {}
            for r in runs:
                for point in (r.get("curve") or {}).get("dev", []):
                    steps.setdefault(int(point["step"]), []).append(float(point["dev_loss"]))
            curve = "→".join(f"{statistics.median(v):.3g}" for _, v in sorted(steps.items()))
            off = sum(t[3] < PLATEAU_P for t in tests)
            parts.append(f"{cell} {off}/{len(tests)}" + (f" (dev loss {curve})" if curve else ""))
        if parts:
            out.append(f"{task} (majority-label rate {100 * rate:.1f}%): " + "; ".join(parts) + ".")
    if out:
        out.insert(0, "Off the chance plateau: seeds whose test accuracy beats the majority-label rate (each task's "
                      f"own in the mixture) by a one-sided exact binomial test at p < {PLATEAU_P}; the dev-loss curve "
                      "is the median over seeds at each evaluation step:")
    return out


def code_version(record: dict) -> str:
    """The code a record was computed with: its commit (short), '+changes' when the tree was dirty."""
    prov = record.get("provenance") or {}
    commit = (prov.get("git_commit") or "unknown")[:7]
    return commit + ("+changes" if prov.get("git_dirty") else "")


def table_versions(records: list[dict], backbones: list[str], tasks: list[str], cells: list[str],
                   search_records: list[dict] = ()) -> Counter:
    """{code version: runs} of the records a table shows and of the learning-rate search that chose its rates."""
    shown = [r for r in records if r["backbone"] in backbones and r["task"] in tasks and r["cell"] in cells]
    return Counter(code_version(r) for r in [*shown, *search_records])


def commit_notes(records: list[dict], backbones: list[str], tasks: list[str], cells: list[str],
                 allow_mixed: bool, search_records: list[dict] = ()) -> list[str]:
    """One code version per table: the runs it shows and the learning-rate search that chose their rates
    (`search_records`) must share one commit (and tree state); otherwise UserError naming the versions and
    their runs, unless `allow_mixed` (allow_mixed_commits=true), which lists them under the table instead."""
    versions = table_versions(records, backbones, tasks, cells, search_records)
    shown = sum(versions.values())
    if len(versions) <= 1:
        if not versions:
            return []
        v = next(iter(versions))
        state = "+changes: uncommitted changes to tracked files" if v.endswith("+changes") else "a clean tree"
        return [f"Code version: {v} (every run; {state})."]
    listed = ", ".join(f"{v} ({n} run{'s' if n > 1 else ''})" for v, n in versions.most_common())
    if not allow_mixed:
        raise UserError(f"the table's {shown} runs come from {len(versions)} code version(s): {listed}; rerun "
                        "them from one clean commit (a git worktree; force=true reruns a done run), or render "
                        "anyway with allow_mixed_commits=true")
    return [f"MIXED CODE VERSIONS (allow_mixed_commits=true): {listed}."]


def dependence_notes(records: list[dict], backbone: str, tasks: list[str], cells: list[str]) -> list[str]:
    """The input-aware cells' input dependence (runners/input_dependence.py) per task: the median over seeds of
    the layer-mean pairwise cosine and relative spread of the generated prompts or vectors."""
    per: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        if r["backbone"] == backbone and r["task"] in tasks and r["cell"] in cells and r.get("input_dependence"):
            per.setdefault((r["cell"], r["task"]), []).append(r["input_dependence"])
    if not per:
        return []
    parts = [f"{cell} {task} cosine {small_gap(statistics.median(x['cosine'] for x in xs), 1.0)} spread "
             f"{small_gap(statistics.median(x['spread'] for x in xs), 0.0)} (n={len(xs)})"
             for (cell, task), xs in sorted(per.items())]
    return ["Input dependence of the generated prompts/vectors across the first test inputs (mean over layers, median "
            "over seeds; cosine 1 and spread 0 = the same output for every input; the records round to 6 decimals): "
            + "; ".join(parts) + "."]


def small_gap(x: float, static: float) -> str:
    """A cosine or spread printed so that a value within 1e-3 of the static one (1 or 0) still shows how far it
    is from it (`1-2.3e-05`, `4.2e-05`) instead of rounding to it; exactly static prints as such."""
    gap = abs(x - static)
    if gap >= 1e-3:
        return f"{x:.4f}" if static else f"{x:.3f}"
    if gap == 0:
        return f"{static:.0f}"
    return f"1-{gap:.1e}" if static else f"{gap:.1e}"


def render_table(experiment: str, cfg, p: dict, out_dir: str, notes: list[str] = (), plot=None,
                 allow_mixed_commits: bool = False, search_records: list[dict] = (), curves=None) -> str:
    """A table experiment's table from its plan (runners/table_plan.py `plan`), a block per backbone beside
    the paper's numbers, written to <out_dir>/<experiment>.{md,csv} and logged to W&B when the logger is on.
    `plot(records, tasks, cells, out, title=, backbone=)` draws each block's seeds beside it, and `curves`
    (the same arguments) its dev-loss curves (scripts.table passes scripts/figures.py's plot_seeds and
    plot_dev_curves: runners/ draws no figures). Returns the markdown, with where the plots and the W&B run
    went."""
    from runners.aggregate import scan

    paper, number, cpu = table_of(experiment)
    records, problems = scan(cfg.results_dir)
    cells = p["cells"] + ([ZERO_SHOT] if cpu and cfg.runner.zero_shot else [])  # the untrained row
    notes = commit_notes(records, p.get("backbones") or [cfg.backbone.name], p["tasks"], cells,
                         allow_mixed_commits, search_records) + list(notes) + list(cfg.get("notes") or [])
    dfs, mds = [], []
    for backbone in p.get("backbones") or [cfg.backbone.name]:
        title = f"{paper.upper()} Table {number}, {backbone}" + (
            " at CPU scale: NOT the paper's setting (backbone, budget, data, test rows)" if cpu else "")
        spec = TableSpec(paper=paper, table=number, tasks=columns(cfg, p["tasks"]), cells=cells,
                         proposed=papers()[paper]["proposed"], backbone=backbone, title=title,
                         unavailable=not_public(paper, number),
                         mean=True if cfg.get("mean_of") else None,
                         mean_of=list(cfg.mean_of) if cfg.get("mean_of") else None,
                         notes=([budget_note(cfg)] if cpu else []) + list(notes)
                         + one_answer_notes(records, backbone, p["tasks"], cells))
        spec.notes += example_notes(spec, records, [spec.proposed, *(["lora"] if "lora" in cells else [])])
        spec.notes += dependence_notes(records, backbone, p["tasks"], cells)
        spec.notes += plateau_notes(records, backbone, p["tasks"], cells) if cpu else []
        df, md = render(spec, records, problems, paper_numbers(spec))
        dfs.append(df.assign(backbone=backbone))
        mds.append(md)
    df, md = pd.concat(dfs, ignore_index=True), "\n".join(mds)
    os.makedirs(out_dir, exist_ok=True)
    atomic_write_text(os.path.join(out_dir, f"{experiment}.md"), md)
    atomic_write_text(os.path.join(out_dir, f"{experiment}.csv"), df.to_csv(index=False))
    for backbone in (p.get("backbones") or [cfg.backbone.name]) if plot else []:  # every seed of every cell
        name = experiment if len(p.get("backbones") or [1]) == 1 else f"{experiment}_{backbone}"
        fig = plot(records, p["tasks"], cells, os.path.join(out_dir, f"{name}.png"),
                   title=f"{experiment} ({backbone}): each seed, median bar", backbone=backbone)
        if fig:
            md += f"\nSeeds plot: {fig}\n"
        fig = curves and curves(records, p["tasks"], cells, os.path.join(out_dir, f"{name}_dev.png"),
                                title=f"{experiment} ({backbone}): dev loss, each seed and the median", backbone=backbone)
        if fig:
            md += f"\nDev-loss curves: {fig}\n"
    where = log_wandb(cfg, experiment, df)
    return md + (f"\nW&B table: {where}\n" if where else "")


def log_wandb(cfg, experiment: str, df) -> str | None:
    """The rendered table as a `wandb.Table` in a run of its own (job_type table) when the logger is on;
    offline without an API key, as the runs are. Returns the run's folder."""
    from core.tracking import wandb_mode

    mode = wandb_mode(cfg.logger)
    if mode is None:
        return None
    import wandb

    run = wandb.init(project=cfg.logger.project, name=experiment, job_type="table", mode=mode,
                     dir=os.path.abspath(cfg.logger.dir), reinit="finish_previous")
    run.log({experiment: wandb.Table(dataframe=df.astype(str))})
    folder = os.path.dirname(run.dir)
    run.finish()
    return folder
