"""Render a paper table from run records: per cell our median over seeds, n, the spread, the paper's
number and the difference, best and second best marked, missing and failed cells shown with the reason,
and a paired test of every method against the table's proposed one on the seeds both have.

    spec = TableSpec(paper="iapt", table=1, tasks=["sst2", "rte"], cells=["lora", "iapt"], proposed="iapt")
    df, md = render(spec, records, problems, paper_numbers(spec))

`records`/`problems` are `runners.aggregate.scan`'s. Higher is better for every metric rendered here
(accuracy, F1, ROUGE, execution accuracy, judge scores), as in the papers' tables.
"""

from __future__ import annotations

import csv
import math
import os
import re
import statistics
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

PAPER_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results", "paper")


@dataclass
class TableSpec:
    paper: str  # iapt | parade | para | idspam (results/paper/<paper>_table<N>.csv)
    table: int  # the paper's table number
    tasks: list[str]  # columns: harness task names
    cells: list[str]  # rows: harness cell names (method or variant)
    proposed: str  # the cell every other one is compared with (paired test)
    backbone: str = "smollm2-135m"
    title: str = ""  # e.g. "IAPT Table 1 at CPU scale (SmolLM2-135M), not the paper's setting"
    notes: list[str] = field(default_factory=list)  # printed under the table (lr grid, budgets, ...)
    # {paper column: reason} of the paper's columns with no harness task (no public data): shown as missing
    unavailable: dict[str, str] = field(default_factory=dict)


# -- statistics --------------------------------------------------------------------------------------------
def paired(ours: dict[int, float], ref: dict[int, float], n_boot: int = 10_000, seed: int = 0) -> dict:
    """Paired comparison of two cells on their common seeds: the mean difference (ours - ref), a paired
    bootstrap 95% interval of it, and the two-sided Wilcoxon signed-rank p-value (scipy; exact for small n).
    With 3 seeds the smallest possible Wilcoxon p is 0.25: 3 seeds can show a direction, not significance."""
    from scipy.stats import wilcoxon

    seeds = sorted(set(ours) & set(ref))
    d = np.array([ours[s] - ref[s] for s in seeds], dtype=float)
    out = {"n_pairs": len(seeds), "mean_diff": float(d.mean()) if len(d) else math.nan,
           "ci_low": math.nan, "ci_high": math.nan, "p_wilcoxon": math.nan}
    if len(d) < 2:
        return out
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(1)
    out["ci_low"], out["ci_high"] = (float(x) for x in np.percentile(boots, [2.5, 97.5]))
    out["p_wilcoxon"] = 1.0 if not d.any() else float(wilcoxon(d, zero_method="wilcox").pvalue)
    return out


# -- paper numbers -----------------------------------------------------------------------------------------
def paper_numbers(spec: TableSpec, paper_dir: str = PAPER_DIR) -> dict[tuple[str, str], float]:
    """{(task, cell): the paper's number} through results/paper/names.csv (the paper's method and task
    names -> harness names); empty when the table's CSV is not there."""
    path = os.path.join(paper_dir, f"{spec.paper}_table{spec.table}.csv")
    names_path = os.path.join(paper_dir, "names.csv")
    if not os.path.exists(path) or not os.path.exists(names_path):
        return {}
    names: dict[tuple[str, str], str] = {}
    with open(names_path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["paper"] == spec.paper and row["harness_name"]:
                names[(row["kind"], row["paper_name"])] = row["harness_name"]
    out = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            cell = names.get(("method", row["row"]))
            head = row["column"].split(" / ")[0]
            task = next((names[("task", h)] for h in (row["column"], head, re.sub(r"\s*\(.*\)$", "", head))
                         if ("task", h) in names), None)  # "SST-2 (acc)" -> "SST-2"
            if cell and task and row["value"] not in ("", None) and (task, cell) not in out:
                out[(task, cell)] = float(row["value"])
    return out


# -- the table ---------------------------------------------------------------------------------------------
def _scores(records, spec: TableSpec) -> dict[tuple[str, str], dict[int, float]]:
    out: dict[tuple[str, str], dict[int, float]] = {}
    for r in records:
        if r["backbone"] == spec.backbone and r["task"] in spec.tasks and r["cell"] in spec.cells:
            metric = next(iter(r["metrics"]))
            out.setdefault((r["task"], r["cell"]), {})[int(r["seed"])] = float(r["metrics"][metric])
    return out


def render(spec: TableSpec, records: list[dict], problems: list[dict],
           paper: dict[tuple[str, str], float] | None = None) -> tuple[pd.DataFrame, str]:
    """(long table: one row per task x cell, markdown). Markdown cells: `median (min-max, n)`, paper
    number and difference beside it, best **bold** and second <u>underlined</u> per column, `missing` or
    `failed: <reason>` where there is no finished record, and the paired test against `spec.proposed`."""
    paper = paper or {}
    scores = _scores(records, spec)
    failed = {}
    for p in problems:
        if p["backbone"] == spec.backbone and p["task"] in spec.tasks and p["cell"] in spec.cells:
            failed.setdefault((p["task"], p["cell"]), []).append(f"seed{p['seed']}: {p['problem']}")
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
    df = pd.DataFrame(rows)
    return df, to_markdown(spec, df)


def _rank_marks(values: dict[str, float]) -> dict[str, str]:
    done = sorted({v for v in values.values() if not math.isnan(v)}, reverse=True)
    best, second = (done + [None, None])[:2]
    return {c: "best" if v == best else "second" if v == second else "" for c, v in values.items()}


def _fmt(x: float, nd: int = 1) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def to_markdown(spec: TableSpec, df: pd.DataFrame) -> str:
    title = spec.title or f"{spec.paper.upper()} Table {spec.table} ({spec.backbone})"
    lines = [f"### {title}", "",
             "| method | " + " | ".join([*spec.tasks, *spec.unavailable]) + " |",
             "|---|" + "---|" * (len(spec.tasks) + len(spec.unavailable))]
    by = {(r.task, r.cell): r for r in df.itertuples()}
    marks = {t: _rank_marks({c: by[(t, c)].median for c in spec.cells}) for t in spec.tasks}
    for cell in spec.cells:
        out = []
        for task in spec.tasks:
            r = by[(task, cell)]
            if r.n == 0:
                out.append(f"failed ({r.problems})" if r.problems else "missing")
                continue
            med = _fmt(r.median)
            med = {"best": f"**{med}**", "second": f"<u>{med}</u>"}.get(marks[task][cell], med)
            text = f"{med} ({_fmt(r.min)}–{_fmt(r.max)}, n={r.n})"
            if not math.isnan(r.paper):
                text += f"; paper {_fmt(r.paper)} ({r.diff:+.1f})"
            p = getattr(r, "vs_p_wilcoxon", math.nan)
            if isinstance(p, float) and not math.isnan(p):
                text += (f"; vs {spec.proposed} {r.vs_mean_diff:+.1f} [{_fmt(r.vs_ci_low)}, {_fmt(r.vs_ci_high)}]"
                         f" p={p:.2f}")
            if r.problems:
                text += f"; also {r.problems}"
            out.append(text)
        out += [f"missing ({why})" for why in spec.unavailable.values()]
        lines.append(f"| {cell} | " + " | ".join(out) + " |")
    lines += ["", f"Cells: median over seeds (min–max, n). Paired against {spec.proposed} on common seeds: "
              "mean difference [paired bootstrap 95% interval], two-sided Wilcoxon signed-rank p "
              "(3 seeds cannot reach p < 0.25)."]
    lines += [f"- {n}" for n in spec.notes]
    return "\n".join(lines) + "\n"
