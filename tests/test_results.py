"""Result records: schema, atomic writes, skip of finished runs, conflicts, median aggregation."""

from __future__ import annotations

import json
import os

import pytest

from core.errors import UserError
from runners import results as R
from runners.aggregate import load_records, summarize
from runners.aggregate import main as aggregate_main
from tests.conftest import compose


def fake_record(backbone="tiny", task="rte", cell="lora", seed=0, acc=50.0, status="ok", config=None):
    return {"schema": 1, "backbone": backbone, "task": task, "method": cell, "variant": None, "cell": cell,
            "seed": seed, "status": status, "metrics": {"acc": acc, "other": 1.0}, "dev": {},
            "params": {"trainable": 10, "total": 100}, "config": config or {}, "provenance": {},
            "wall_time_s": 1.0, "curve": {"train": [], "dev": []}}


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "a" / "seed0.json"
    R.write_json(str(path), {"x": 1})
    assert json.loads(path.read_text()) == {"x": 1}

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(RuntimeError):
        R.write_json(str(path), {"x": 2})
    assert json.loads(path.read_text()) == {"x": 1}, "a failed write must not touch the old file"
    assert sorted(os.listdir(path.parent)) == ["seed0.json"], "no temp file may be left behind"


def test_result_path_uses_variant_and_seed(tmp_results):
    cfg = compose("method=lora", "task=rte", "seed=3")
    assert R.result_path(cfg).endswith(os.path.join("tiny", "rte", "lora", "seed3.json"))
    cfg = compose("method=lora", "task=rte", "variant=lora-r8", "method.r=8")
    assert R.result_path(cfg).endswith(os.path.join("tiny", "rte", "lora-r8", "seed0.json"))
    with pytest.raises(UserError, match="result path"):
        R.result_path(compose("variant=../x"))


def test_finished_record_is_returned_and_conflict_is_an_error(tmp_path):
    cfg = compose("method=lora", "task=rte")
    config = R.to_container(cfg)
    path = tmp_path / "seed0.json"
    assert R.load_finished(str(path), config) is None
    R.write_json(str(path), fake_record(config=config))
    assert R.load_finished(str(path), config)["metrics"]["acc"] == 50.0
    # the seed, the logger and the data folder do not identify a run
    other = R.to_container(compose("method=lora", "task=rte", "seed=4", "logger=wandb", "data_dir=/x"))
    assert R.load_finished(str(path), other) is not None
    changed = R.to_container(compose("method=lora", "task=rte", "method.r=8"))
    with pytest.raises(UserError, match=r"method\.r: recorded 4, requested 8"):
        R.load_finished(str(path), changed)


def test_failed_record_is_not_finished(tmp_path):
    config = R.to_container(compose())
    path = tmp_path / "seed0.json"
    R.write_json(str(path), fake_record(status="failed", config=config))
    assert R.load_finished(str(path), config) is None


def test_median_aggregation_on_hand_made_files(tmp_path, capsys):
    runs = tmp_path / "runs"
    for seed, acc in enumerate([70.0, 90.0, 60.0, 80.0, 100.0]):
        R.write_json(str(runs / "tiny" / "rte" / "lora" / f"seed{seed}.json"), fake_record(seed=seed, acc=acc))
    for seed, acc in enumerate([10.0, 30.0]):
        R.write_json(str(runs / "tiny" / "rte" / "ia3" / f"seed{seed}.json"), fake_record(cell="ia3", seed=seed, acc=acc))
    R.write_json(str(runs / "tiny" / "rte" / "ia3" / "seed7.json"), fake_record(cell="ia3", seed=7, acc=99, status="failed"))
    (runs / "tiny" / "rte" / "ia3" / "seed8.json").write_text("{ truncated")  # unreadable: ignored
    df = summarize(load_records(str(runs))).set_index("cell")
    assert df.loc["lora", "median"] == 80.0 and df.loc["lora", "n"] == 5
    assert (df.loc["lora", "min"], df.loc["lora", "max"]) == (60.0, 100.0)
    assert df.loc["ia3", "median"] == 20.0 and df.loc["ia3", "n"] == 2, "failed/partial runs must not count"
    assert df.loc["lora", "metric"] == "acc", "the main metric is the first key"
    aggregate_main([f"results_dir={runs}", f"out={tmp_path / 'tables'}", "name=t"])
    out = capsys.readouterr().out
    assert "| tiny | rte | lora | acc | 80.00 | 5 | 60.00 | 100.00 |" in out
    assert (tmp_path / "tables" / "t.csv").exists() and (tmp_path / "tables" / "t.md").exists()


def test_aggregate_rejects_bad_argument():
    with pytest.raises(SystemExit, match="valid: results_dir"):
        aggregate_main(["reslts_dir=x"])


def test_a_cell_at_chance_level_is_said_so():
    from runners.aggregate import summarize
    from runners.summary import chance_notes

    recs = [{"backbone": "b", "task": "synth-compare", "cell": cell, "seed": s, "metrics": {"acc": acc},
             "params": {"trainable": 1}, "chance": 50.0}
            for cell, accs in (("iapt", (48.0, 51.0, 49.0)), ("lora", (85.0, 80.0, 78.0))) for s, acc in enumerate(accs)]
    notes = chance_notes(summarize(recs), recs)
    assert notes == ["note: iapt on synth-compare (49.0) is at chance level (50% for a uniform guess): it has not "
                     "learned the task at this budget"]


def test_keys_added_later_compare_equal_to_their_old_value():
    from runners.results import comparable, diff_keys

    old = {"runner": {"lr": 1e-3}, "method": {"name": "iapt", "init": "default"}}
    new = {"runner": {"lr": 1e-3, "scoring": "generate"},
           "method": {"name": "iapt", "init": "default", "init_std": 1e-3, "pool_skip_first": False}}
    assert diff_keys(comparable(old), comparable(new)) == []
    changed = {"runner": {"lr": 1e-3, "scoring": "likelihood"}, "method": dict(new["method"], pool_skip_first=True)}
    assert len(diff_keys(comparable(old), comparable(changed))) == 2
    lora = {"method": {"name": "lora", "r": 4}}
    assert "init_std" not in comparable(lora)["method"], "method keys of one method only"
