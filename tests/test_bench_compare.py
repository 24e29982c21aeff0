"""scripts/bench/compare.py: alternating passes at two commits pooled per commit, checked on hand-made records
against a direct computation; bad input exits 2 with one line.

    .venv/bin/python -m pytest tests/test_bench_compare.py -q
"""

from __future__ import annotations

import json
import os
import statistics

import pytest

from core.errors import exit_on_user_error
from scripts.bench import compare


def _tenants_record(commit: str, bare: list[float], iapt: list[float], ttft: tuple[float, float]) -> dict:
    cell = lambda raw, t: {"raw_total_s": raw, "ttft_s": {"median": t}}  # noqa: E731
    return {"provenance": {"git_commit": commit + "0" * 33},
            "results": {"beam1/B16": {"bare": cell(bare, ttft[0]), "iapt": cell(iapt, ttft[1])}}}


def _table4_record(commit: str, bare: list[float], iapt: list[float]) -> dict:
    cell = lambda raw: {"raw": {"total_s": raw, "ttft_s": [x / 10 for x in raw], "decode_s": raw}}  # noqa: E731
    return {"provenance": {"git_commit": commit + "0" * 33}, "results": {"beam1": {"bare": cell(bare), "iapt": cell(iapt)}}}


def _write(folder, name: str, mode: str, record: dict) -> None:
    os.makedirs(folder / name)
    with open(folder / name / f"{mode}.json", "w") as f:
        json.dump(record, f)


def test_passes_pool_per_commit_into_per_round_ratios(tmp_path):
    _write(tmp_path, "old_1", "tenants", _tenants_record("aaaaaaa", [10, 10, 10], [11, 12, 10], (5.0, 6.0)))
    _write(tmp_path, "old_2", "tenants", _tenants_record("aaaaaaa", [20, 20], [25, 20], (5.0, 5.5)))
    _write(tmp_path, "new_1", "tenants", _tenants_record("bbbbbbb", [10, 10, 10], [10, 10.5, 11], (4.0, 4.2)))
    data = compare.pooled(compare.load_passes(str(tmp_path))[1])
    old = sorted(data["aaaaaaa"]["beam1/B16"]["iapt"]["ratios"])
    assert old == pytest.approx(sorted([10 / 11, 10 / 12, 1.0, 20 / 25, 1.0]))  # both passes' rounds, bare/method
    assert sorted(data["aaaaaaa"]["beam1/B16"]["iapt"]["ttft"]) == pytest.approx([1.1, 1.2])  # medians per pass
    md = compare.render(str(tmp_path), ["aaaaaaa", "bbbbbbb"])
    row = next(line for line in md.splitlines() if "| iapt |" in line)
    new_med = statistics.median([1.0, 10 / 10.5, 10 / 11])
    assert f"{statistics.median(old):.3f}" in row and f"{new_med:.3f}" in row
    assert row.rstrip(" |").endswith(f"{new_med / statistics.median(old):.3f}")  # last ÷ first
    assert "aaaaaaa (2 passes), bbbbbbb (1 passes)" in md


def test_table4_passes_use_per_round_ttft(tmp_path):
    _write(tmp_path, "a", "table4", _table4_record("aaaaaaa", [1.0, 1.0, 1.0, 1.0], [1.1, 1.2, 1.3, 1.4]))
    data = compare.pooled(compare.load_passes(str(tmp_path))[1])
    assert data["aaaaaaa"]["beam1"]["iapt"]["ttft"] == pytest.approx([1.1, 1.2, 1.3, 1.4])


@pytest.mark.parametrize("setup,args,needle", [
    ("empty", [], "no pass folders"),
    ("mixed", [], "several modes"),
    ("one", ["order=zzzzzzz"], "must name each commit"),
    ("one", ["colour=red"], "unknown argument"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, setup, args, needle):
    if setup in ("mixed", "one"):
        _write(tmp_path, "t", "tenants", _tenants_record("aaaaaaa", [1.0], [1.0], (1.0, 1.0)))
    if setup == "mixed":
        _write(tmp_path, "u", "table4", _table4_record("aaaaaaa", [1.0], [1.0]))
    with pytest.raises(SystemExit) as e:
        exit_on_user_error(compare.main, [str(tmp_path), *args])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and needle in err and len(err.splitlines()) == 1
