"""Aggregate run records into tables: the median over seeds per (backbone, task, cell), with n, min, max.

    python -m runners.aggregate                       # all of results/runs -> results/tables/runs.{md,csv}
    python -m runners.aggregate results_dir=/tmp/runs out=/tmp/tables name=mytable

The main metric of a task is the first key of its metrics dict. Only finished records
(`status == "ok"`) are read: a failed or partial run is never aggregated.
"""

from __future__ import annotations

import glob
import json
import os
import sys

import pandas as pd

from runners.results import atomic_write_text

COLUMNS = ["backbone", "task", "cell", "metric", "median", "n", "min", "max", "seeds", "trainable"]


def load_records(results_dir: str) -> list[dict]:
    records = []
    for path in sorted(glob.glob(os.path.join(results_dir, "**", "seed*.json"), recursive=True)):
        if os.path.basename(path).startswith("."):
            continue
        try:
            with open(path) as f:
                rec = json.load(f)
        except (OSError, json.JSONDecodeError):
            continue  # unreadable: not a finished record
        if rec.get("status") == "ok" and rec.get("metrics"):
            rec["_path"] = path
            records.append(rec)
    return records


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
    df = summarize(load_records(opts["results_dir"]))
    md, csv = write_tables(df, opts["out"], opts["name"])
    print(to_markdown(df), end="")
    print(f"tables: {md}, {csv}")


if __name__ == "__main__":
    main(sys.argv[1:])
