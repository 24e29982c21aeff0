"""Old against new: one benchmark run at two or more commits in alternating passes (a folder per pass, each
holding the mode's own record), pooled per commit into one table of per-round ratios to the bare backbone.

    python -m scripts.bench.compare results/bench/tenants_old_new                  # markdown to stdout
    python -m scripts.bench.compare results/bench/ttft order=b3cf61d,f3ced6e      # commits in this column order

Each pass is `<folder>/<anything>/{table4,tenants}.json`, written by `python -m scripts.bench <mode> out=...` from
a worktree at its commit (the record names the commit). Per commit, the rounds of all its passes are pooled:
`× bare` = bare's total time over the method's in the same round (the same tokens, so the tokens/s ratio);
`TTFT × bare` the same from per-round times to first token where the record keeps them (table4), else the
ratio of the pass medians, one figure per pass (tenants records keep TTFT summaries only). `last ÷ first`:
the ratio of the `× bare` medians of the last and the first commit. Commits are ordered by commit time when
git knows them (`order=` overrides).
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

from core.errors import UserError, exit_on_user_error

MODES = ("table4", "tenants")  # records with per-round raw times


def _rounds(cell: dict) -> tuple[list[float], list[float] | None]:
    """(total seconds per round, TTFT seconds per round or None) of one method's cell in a record."""
    if "raw" in cell:  # table4
        return list(cell["raw"]["total_s"]), list(cell["raw"]["ttft_s"])
    return list(cell["raw_total_s"]), None  # tenants


def load_passes(folder: str) -> tuple[str, list[dict]]:
    """(mode, records) of the passes under `folder`; UserError when there are none or they mix modes."""
    found = {m: sorted(glob.glob(os.path.join(folder, "*", f"{m}.json"))) for m in MODES}
    modes = [m for m, fs in found.items() if fs]
    if not modes:
        raise UserError(f"{folder}: no pass folders with {' or '.join(f'{m}.json' for m in MODES)} in them")
    if len(modes) > 1:
        raise UserError(f"{folder}: passes of several modes ({', '.join(modes)}); one folder per comparison")
    records = []
    for f in found[modes[0]]:
        with open(f) as fh:
            records.append(json.load(fh))
    return modes[0], records


def _commit(record: dict) -> str:
    return (record.get("provenance", {}).get("git_commit") or "unknown")[:7]


def _commit_time(commit: str) -> float:
    try:
        out = subprocess.run(["git", "show", "-s", "--format=%ct", commit], capture_output=True, text=True, timeout=10)
        return float(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip() else float("inf")
    except (OSError, ValueError, subprocess.SubprocessError):
        return float("inf")


def _q(xs: list[float]) -> tuple[float, float, float]:
    """(median, q1, q3): the benchmarks' own summary (scripts/bench/common.py)."""
    from scripts.bench.common import summary

    s = summary(xs)
    return s["median"], s["q1"], s["q3"]


def pooled(records: list[dict]) -> dict:
    """{commit: {key: {method: {"ratios": [...], "ttft": [...]}}}}: per-round ratios to bare pooled over passes."""
    out: dict = {}
    for rec in records:
        per_commit = out.setdefault(_commit(rec), {})
        for key, cells in rec["results"].items():
            if "bare" not in cells:
                raise UserError(f"record of {_commit(rec)} ({key}) has no bare row: every ratio is to bare")
            bare_total, bare_ttft = _rounds(cells["bare"])
            for m, cell in cells.items():
                total, ttft = _rounds(cell)
                slot = per_commit.setdefault(key, {}).setdefault(m, {"ratios": [], "ttft": []})
                slot["ratios"] += [b / t for b, t in zip(bare_total, total)]
                if ttft is not None and bare_ttft is not None:
                    slot["ttft"] += [t / b for b, t in zip(bare_ttft, ttft)]
                else:
                    slot["ttft"].append(cell["ttft_s"]["median"] / cells["bare"]["ttft_s"]["median"])
    return out


def render(folder: str, order: list[str] | None = None) -> str:
    mode, records = load_passes(folder)
    data = pooled(records)
    commits = list(data)
    if order:
        unknown = [c for c in order if c not in data]
        if unknown or len(order) != len(commits):
            raise UserError(f"order={','.join(order)} must name each commit of {folder} once; its commits: "
                            f"{', '.join(commits)}")
        commits = list(order)
    else:
        commits.sort(key=lambda c: (_commit_time(c), c))
    passes = {c: sum(_commit(r) == c for r in records) for c in commits}
    keys = list(dict.fromkeys(k for c in commits for k in data[c]))
    head = ["key", "method"] + [f"{c} × bare [IQR] (n)" for c in commits] + [f"{c} TTFT × bare" for c in commits]
    if len(commits) > 1:
        head.append(f"{commits[-1]} ÷ {commits[0]}")
    lines = [f"# {mode}: {', '.join(f'{c} ({passes[c]} passes)' for c in commits)}, from {folder}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in keys:
        methods = list(dict.fromkeys(m for c in commits for m in data[c].get(key, {})))
        for m in methods:
            row, medians = [key, m], {}
            for c in commits:
                xs = data[c].get(key, {}).get(m, {}).get("ratios", [])
                if xs:
                    med, q1, q3 = _q(xs)
                    medians[c] = med
                    row.append(f"{med:.3f} [{q1:.3f}–{q3:.3f}] ({len(xs)})")
                else:
                    row.append("–")
            for c in commits:
                ts = data[c].get(key, {}).get(m, {}).get("ttft", [])
                if len(ts) > 2:  # per-round ratios (table4): with their IQR
                    med, q1, q3 = _q(ts)
                    row.append(f"{med:.3f} [{q1:.3f}–{q3:.3f}]")
                else:
                    row.append(" / ".join(f"{t:.3f}" for t in ts) if ts else "–")
            if len(commits) > 1:
                a, b = medians.get(commits[0]), medians.get(commits[-1])
                row.append(f"{b / a:.3f}" if a and b else "–")
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    if not argv or "=" in argv[0]:
        raise UserError("usage: python -m scripts.bench.compare <folder of pass folders> [order=commit,commit]")
    folder, order = argv[0], None
    if not os.path.isdir(folder):
        raise UserError(f"{folder!r} is not a folder")
    for a in argv[1:]:
        k, _, v = a.partition("=")
        if k != "order" or not v:
            raise UserError(f"unknown argument {a!r}; valid: order=<commit>,<commit>,...")
        order = [x.strip()[:7] for x in v.split(",") if x.strip()]
    sys.stdout.write(render(folder, order))


if __name__ == "__main__":
    exit_on_user_error(main, sys.argv[1:])
