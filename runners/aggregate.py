"""Aggregate run records into tables: the median over seeds per (backbone, task, cell), with n, min, max.

    python -m runners.aggregate                       # all of results/runs -> results/tables/runs.{md,csv}
    python -m runners.aggregate results_dir=/tmp/runs out=/tmp/tables name=mytable

The main metric of a task is the first key of its metrics dict. Only finished records
(`status == "ok"`) are aggregated; failed runs (`seed<k>.failed.json`), unreadable records (named by
path) and cells whose records disagree on their config (naming the keys) are listed below the table as
problems, never silently dropped and never mixed into a median.
"""

from __future__ import annotations

import glob
import os
import sys

import pandas as pd

from runners.results import ZERO_SHOT, CorruptRecord, atomic_write_text, comparable, diff_keys, read_record

COLUMNS = ["backbone", "task", "cell", "metric", "median", "n", "min", "max", "seeds", "trainable"]
PROBLEM_COLUMNS = ["backbone", "task", "cell", "seed", "problem", "path"]


def _where(results_dir: str, path: str) -> dict:
    parts = os.path.relpath(path, results_dir).split(os.sep)
    backbone, task, cell = (parts[:-1] + ["?", "?", "?"])[:3] if len(parts) >= 4 else ("?", "?", "?")
    seed = os.path.basename(path).split(".")[0].removeprefix("seed")
    return {"backbone": backbone, "task": task, "cell": cell, "seed": seed, "path": path}


def scan(results_dir: str) -> tuple[list[dict], list[dict]]:
    """(finished records, problems): problems are failed runs, unreadable records and mixed-config cells,
    each with its path and reason. Records of a mixed cell are left out of the finished ones."""
    records, problems = [], []
    for path in sorted(glob.glob(os.path.join(results_dir, "**", "seed*.json"), recursive=True)):
        if os.path.basename(path).startswith("."):
            continue
        try:
            rec = read_record(path)
        except CorruptRecord as e:
            problems.append(dict(_where(results_dir, path), problem=f"corrupt record: {e}"))
            continue
        if rec.get("status") == "ok" and rec.get("metrics"):
            rec["_path"] = path
            records.append(rec)
        elif rec.get("status") == "failed":
            problems.append(dict(_where(results_dir, path), problem=f"failed: {rec.get('error', '?')}"))
    cells: dict[tuple, list[dict]] = {}
    for rec in records:
        cells.setdefault((rec["backbone"], rec["task"], rec["cell"]), []).append(rec)
    clean = []
    for key, recs in cells.items():
        ref = comparable(recs[0]["config"], drop_method=recs[0]["method"] == ZERO_SHOT)
        diffs = []
        for rec in recs[1:]:
            d = diff_keys(ref, comparable(rec["config"], drop_method=rec["method"] == ZERO_SHOT))
            diffs += [f"seed{rec['seed']} vs seed{recs[0]['seed']}: {x}" for x in d]
        if diffs:
            problems.append({"backbone": key[0], "task": key[1], "cell": key[2], "seed": "*",
                             "problem": f"mixed configs, not aggregated ({'; '.join(diffs[:3])})",
                             "path": os.path.dirname(recs[0]["_path"])})
        else:
            clean += recs
    return clean, problems


def load_records(results_dir: str) -> list[dict]:
    """The finished records that can be aggregated (see `scan` for the rest)."""
    return scan(results_dir)[0]


def problems_markdown(problems: list[dict]) -> str:
    if not problems:
        return ""
    lines = ["", f"{len(problems)} problem(s), not in the table above:", "",
             "| " + " | ".join(PROBLEM_COLUMNS) + " |", "|" + "---|" * len(PROBLEM_COLUMNS)]
    for p in problems:
        lines.append("| " + " | ".join(str(p[c]).replace("|", "/") for c in PROBLEM_COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def summarize(records: list[dict]) -> pd.DataFrame:
    """One row per (backbone, task, cell): median/min/max of the main test metric over seeds."""
    rows = []
    for rec in records:
        metric = next(iter(rec["metrics"]))
        rows.append({"backbone": rec["backbone"], "task": rec["task"], "cell": rec["cell"], "metric": metric,
                     "value": float(rec["metrics"][metric]), "seed": rec["seed"],
                     "trainable": rec["params"]["trainable"]})
    if not rows:
        return pd.DataFrame(columns=COLUMNS)
    df = pd.DataFrame(rows)
    g = df.groupby(["backbone", "task", "cell", "metric"], sort=True)
    out = g["value"].agg(["median", "count", "min", "max"]).rename(columns={"count": "n"}).reset_index()
    out["seeds"] = g["seed"].agg(lambda s: ",".join(str(x) for x in sorted(s))).values
    out["trainable"] = g["trainable"].first().values
    return out[COLUMNS]


def to_markdown(df: pd.DataFrame) -> str:
    if df.empty:
        return "(no finished runs)\n"
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        cells = []
        for c in cols:
            v = r[c]
            cells.append(f"{v:.2f}" if isinstance(v, float) else f"{v:,}" if c == "trainable" else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_tables(df: pd.DataFrame, out_dir: str, name: str) -> tuple[str, str]:
    md, csv = os.path.join(out_dir, f"{name}.md"), os.path.join(out_dir, f"{name}.csv")
    atomic_write_text(md, to_markdown(df))
    atomic_write_text(csv, df.to_csv(index=False))
    return md, csv


def main(argv: list[str]) -> None:
    opts = {"results_dir": os.environ.get("HARNESS_RESULTS", "results/runs"), "out": "results/tables", "name": "runs"}
    for a in argv:
        key, sep, value = a.partition("=")
        if not sep or key not in opts:
            raise SystemExit(f"error: bad argument '{a}'; valid: {', '.join(k + '=...' for k in opts)}")
        opts[key] = value
    records, problems = scan(opts["results_dir"])
    df = summarize(records)
    md, csv = write_tables(df, opts["out"], opts["name"])
    print(to_markdown(df) + problems_markdown(problems), end="")
    print(f"tables: {md}, {csv}")


if __name__ == "__main__":
    main(sys.argv[1:])
