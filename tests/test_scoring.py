"""Scoring safety: runners/score.py requires every test id exactly once (partial=true for a subset) and
refuses another task's file; WikiSQL's run_sql stops slow queries by wall clock and refuses ATTACH/DETACH.

    .venv/bin/python -m pytest tests/test_scoring.py -q
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from core.errors import UserError, exit_on_user_error
from runners.score import main, score_file
from tasks import metrics
from tests.conftest import ROOT

FIX = os.path.join(ROOT, "tests", "fixtures")
RTE = os.path.join(FIX, "rte")
RTE_TEST = {"0": "entailment", "3": "not entailment"}  # the fixture's test split (carved from dev.tsv)


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def rte_rows(ids):
    return [{"id": i, "prediction": RTE_TEST.get(i, "entailment"), "reference": RTE_TEST.get(i, "entailment")}
            for i in ids]


def refusal(overrides, path) -> str:
    """The one line a refused file gets (the text of the UserError)."""
    with pytest.raises(UserError) as e:
        score_file(overrides, str(path))
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


# --- coverage ---------------------------------------------------------------------------------------
def test_full_file_scores_as_before(tmp_path):
    path = write(tmp_path / "p.jsonl", rte_rows(["3", "0"]))
    for overrides in (["task=rte", f"data_dir={RTE}"], ["task=rte"]):  # references from the data, the file
        out = score_file(overrides, str(path))
        assert out["acc"] == 100.0 and "partial" not in out and "n" not in out


def test_repeated_id_is_refused(tmp_path):
    path = write(tmp_path / "p.jsonl", rte_rows(["0", "3", "0"]))
    msg = refusal(["task=rte", f"data_dir={RTE}"], path)
    assert msg == (f"predictions='{path}' must hold each id of rte's test split exactly once (3 row(s)): "
                   "1 id(s) repeated (1 extra row(s)), e.g. '0'")
    # without data_dir (references from the file) a repeat is refused too, and partial=true does not allow it
    assert "1 id(s) repeated" in refusal(["task=rte"], path)
    assert "1 id(s) repeated" in refusal(["task=rte", f"data_dir={RTE}", "partial=true"], path)


def test_missing_ids_are_refused(tmp_path):
    path = write(tmp_path / "p.jsonl", rte_rows(["0"]))
    msg = refusal(["task=rte", f"data_dir={RTE}"], path)
    assert msg == (f"predictions='{path}' must hold each id of rte's test split exactly once (1 row(s)): "
                   "1 of 2 id(s) missing, e.g. '3' (partial=true scores a subset)")


def test_unknown_ids_are_refused_even_when_partial(tmp_path):
    path = write(tmp_path / "p.jsonl", rte_rows(["0", "3", "q-1", "q-2", "q-3", "q-4"]))
    for extra in ([], ["partial=true"]):
        msg = refusal(["task=rte", f"data_dir={RTE}", *extra], path)
        assert "4 id(s) not in split rte (test), e.g. 'q-1', 'q-2', 'q-3', ...: a file for another task" in msg


def test_partial_true_scores_a_subset_and_says_so(tmp_path):
    path = write(tmp_path / "p.jsonl", rte_rows(["3"]))
    out = score_file(["task=rte", f"data_dir={RTE}", "partial=true"], str(path))
    assert out["acc"] == 100.0 and (out["partial"], out["n"], out["total"]) == (True, 1, 2)
    full = write(tmp_path / "full.jsonl", rte_rows(["0", "3"]))
    assert score_file(["task=rte", f"data_dir={RTE}", "partial=true"], str(full))["partial"] is False
    assert "partial" not in score_file(["task=rte", "partial=false"], str(full))
    assert refusal(["task=rte", "partial=maybe"], full) == "partial='maybe' must be true or false"


def test_record_beside_the_file_gives_the_test_size_without_data(tmp_path):
    preds = write(tmp_path / "seed0.predictions.jsonl", rte_rows(["0"]))
    rec = tmp_path / "seed0.json"
    rec.write_text(json.dumps({"task": "rte", "split_sizes": {"train": 6, "dev": 2, "test": 2}}))
    msg = refusal(["task=rte"], preds)
    assert f"1 distinct id(s) but its record {rec} says rte's test split has 2 (1 missing" in msg
    out = score_file(["task=rte", "partial=true"], str(preds))
    assert out["acc"] == 100.0 and (out["partial"], out["n"], out["total"]) == (True, 1, 2)


# --- another task's file --------------------------------------------------------------------------------
def test_other_tasks_file_is_refused(tmp_path):
    # the SST-2 and RTE fixtures share ids ('0', '3'), so only the record beside the file can tell them apart
    preds = write(tmp_path / "seed0.predictions.jsonl",
                  [{"id": "0", "prediction": "positive", "reference": ["positive"]},
                   {"id": "3", "prediction": "negative", "reference": ["negative"]}])
    rec = tmp_path / "seed0.json"
    rec.write_text(json.dumps({"task": "sst2", "split_sizes": {"test": 2}}))
    msg = refusal(["task=rte", f"data_dir={RTE}"], preds)
    assert msg == (f"predictions='{preds}' was written for task 'sst2' (its record {rec} says so), not 'rte'; "
                   "score it with task=sst2")
    rec.write_text(json.dumps({"task": "rte"}))  # a row that names its task wins over ids that happen to match
    rows = rte_rows(["0", "3"])
    rows[1]["task"] = "qnli"
    write(preds, rows)
    assert refusal(["task=rte", f"data_dir={RTE}"], preds) == (
        f"predictions='{preds}' row 2 is for task 'qnli', not 'rte'; score it with task=qnli")


def test_cli_coverage_error_exits_2_in_one_line(tmp_path, capsys):
    path = write(tmp_path / "p.jsonl", rte_rows(["0", "0"]))
    with pytest.raises(SystemExit) as e:
        exit_on_user_error(main, ["task=rte", f"predictions={path}", f"data_dir={RTE}"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: predictions=") and "1 id(s) repeated" in err[0]
    run = subprocess.run([sys.executable, "-m", "runners.score", "task=rte", f"predictions={path}",
                          f"data_dir={RTE}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert "missing" in lines[0] and "1 id(s) repeated" in lines[0] and "e.g. '3'" in lines[0]


# --- WikiSQL: wall-clock deadline, no ATTACH/DETACH -------------------------------------------------------
def fixture_table() -> dict:
    with open(os.path.join(FIX, "wikisql", "test.tables.jsonl"), encoding="utf-8") as f:
        return json.loads(f.readline())


SLOW = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100000000) SELECT count(*) FROM c"


def test_slow_query_is_stopped_by_the_deadline():
    conn = metrics.build_table(fixture_table())
    try:
        t0 = time.monotonic()
        # an operation budget this large never trips (1e8 rows take ~20 s here): only the deadline stops it
        assert metrics.run_sql(conn, SLOW, max_steps=10**15, timeout_s=0.5) is None
        assert time.monotonic() - t0 < 1.5
        assert metrics.run_sql(conn, 'SELECT count(*) FROM "table"', max_steps=10**15, timeout_s=0.5) is not None
        cross = "SELECT count(*) FROM " + ", ".join(f'"table" t{i}' for i in range(17))  # 3 rows ** 17
        t0 = time.monotonic()
        assert metrics.run_sql(conn, cross, max_steps=10**15, timeout_s=0.5) is None
        assert time.monotonic() - t0 < 1.5
    finally:
        conn.close()
    gold = 'SELECT "Player" FROM "table"'
    t0 = time.monotonic()
    assert metrics.execution_accuracy([SLOW], [gold], [fixture_table()], max_steps=10**15, timeout_s=0.5)["acc"] == 0.0
    assert time.monotonic() - t0 < 1.5


def test_attach_and_detach_are_refused(tmp_path):
    table = fixture_table()
    target = tmp_path / "evil.db"
    gold = 'SELECT "Player" FROM "table"'
    for pred in (f"ATTACH '{target}' AS y", f"ATTACH DATABASE '{target}' AS y;", "DETACH DATABASE main",
                 "PRAGMA query_only = OFF", "CREATE TEMP TABLE t(x)"):
        assert metrics.execution_accuracy([pred], [gold], [table])["acc"] == 0.0, pred
    assert not target.exists()
    conn = metrics.build_table(table)  # the table is still built (its inserts are not refused), and readable
    try:
        rows = metrics.run_sql(conn, 'SELECT count(*), max(length("Player")), lower(\'X\') FROM "table"')
        assert rows and rows[0][0] == len(table["rows"])
        assert metrics.run_sql(conn, f"ATTACH '{target}' AS y") is None and not target.exists()
        assert metrics.run_sql(conn, "SELECT length(randomblob(100000000))") is None  # too big a value
    finally:
        conn.close()
    assert metrics.execution_accuracy([gold], [gold], [table])["acc"] == 100.0
