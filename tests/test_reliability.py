"""Faults injected into runs on the tiny backbone: a cell never mixes configs, corrupt records are named
and replaceable, failures leave failed records that tables list, one process trains a run at a time.

    .venv/bin/python -m pytest tests/test_reliability.py -q
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from core.errors import UserError
from runners import aggregate
from runners import results as R
from tests.conftest import ROOT, compose

FAST = ("method=lora", "task=synth-compare", "runner.max_train_examples=16", "runner.max_steps=4", "runner.eval_steps=2")
CELL = ("tiny", "synth-compare", "lora")


def run_cfg(*overrides):
    from runners.train import run

    return run(compose(*FAST, *overrides))


def seed_path(root, seed: int, suffix: str = ".json"):
    return root.joinpath(*CELL, f"seed{seed}{suffix}")


def test_a_second_lr_in_a_cell_is_refused(tmp_results):
    run_cfg("seed=0")
    with pytest.raises(UserError, match=r"runner\.lr: recorded 0.0001, requested 0.5.*a cell is one config"):
        run_cfg("seed=1", "runner.lr=0.5")
    assert not seed_path(tmp_results, 1).exists()
    run_cfg("seed=1", "runner.lr=0.5", "variant=lora-lr0.5")  # its own cell: fine


def test_aggregate_flags_a_mixed_cell_instead_of_a_median(tmp_results):
    cfg0 = R.to_container(compose(*FAST, "seed=0"))
    cfg1 = R.to_container(compose(*FAST, "seed=1", "runner.lr=0.5"))
    for seed, cfg in ((0, cfg0), (1, cfg1)):
        rec = {"schema": 1, "backbone": "tiny", "task": "synth-compare", "method": "lora", "variant": None,
               "cell": "lora", "seed": seed, "status": "ok", "metrics": {"acc": 50.0 + seed}, "dev": {},
               "params": {"trainable": 1, "total": 2}, "config": cfg, "provenance": {}, "wall_time_s": 1.0,
               "curve": {"train": [], "dev": []}}
        R.write_json(str(seed_path(tmp_results, seed)), rec)
    records, problems = aggregate.scan(str(tmp_results))
    assert records == []
    assert len(problems) == 1 and "mixed configs" in problems[0]["problem"] and "runner.lr" in problems[0]["problem"]


def test_truncated_record_is_named_and_replaceable(tmp_results):
    run_cfg("seed=0")
    path = seed_path(tmp_results, 0)
    path.write_text(path.read_text()[:100])  # a write cut short by hand (the harness itself writes atomically)
    with pytest.raises(UserError, match=f"{path}.*not a readable run record.*force=true"):
        run_cfg("seed=0")
    _, problems = aggregate.scan(str(tmp_results))
    assert [p["problem"].split(":")[0] for p in problems] == ["corrupt record"] and problems[0]["path"] == str(path)
    rec = run_cfg("seed=0", "force=true")
    assert rec["status"] == "ok" and json.loads(path.read_text())["status"] == "ok"


def test_force_replaces_a_record_of_a_changed_config(tmp_results):
    run_cfg("seed=0")
    with pytest.raises(UserError, match="add force=true to replace"):
        run_cfg("seed=0", "runner.lr=0.5")
    assert run_cfg("seed=0", "runner.lr=0.5", "force=true")["config"]["runner"]["lr"] == 0.5


def test_nan_loss_stops_at_once_and_is_a_failed_record(tmp_results, monkeypatch):
    import runners.train
    from pefts.registry import build_peft

    def nan_loss(model, cfg):
        built = build_peft(model, cfg)

        def hook(module, args, kwargs, out):
            if out.loss is not None:
                out["loss"] = out.loss * float("nan")
            return out

        built.model.register_forward_hook(hook, with_kwargs=True)
        return built

    monkeypatch.setattr(runners.train, "build_peft", nan_loss)
    with pytest.raises(runners.train.RunFailed, match=r"training loss is nan at step 1"):
        run_cfg("seed=0")
    failed = json.loads(seed_path(tmp_results, 0, ".failed.json").read_text())
    assert failed["status"] == "failed" and "FloatingPointError" in failed["error"] and failed["traceback"]
    assert not seed_path(tmp_results, 0).exists()
    records, problems = aggregate.scan(str(tmp_results))
    assert records == [] and problems[0]["problem"].startswith("failed: FloatingPointError")
    assert "failed: FloatingPointError" in aggregate.problems_markdown(problems)


def test_failure_after_training_is_recorded_and_cleared_by_a_good_rerun(tmp_results, monkeypatch):
    import runners.train

    real = runners.train.predict

    def broken(*a, **k):
        raise RuntimeError("generation broke")

    monkeypatch.setattr(runners.train, "predict", broken)
    with pytest.raises(runners.train.RunFailed, match="generation broke"):
        run_cfg("seed=0")
    assert seed_path(tmp_results, 0, ".failed.json").exists()
    monkeypatch.setattr(runners.train, "predict", real)
    assert run_cfg("seed=0")["status"] == "ok"
    assert not seed_path(tmp_results, 0, ".failed.json").exists(), "a finished run clears its failed record"


@pytest.mark.parametrize("override, text", [
    ("runner.num_beams=0", "runner.num_beams=0 must be an integer >= 1"),
    ("runner.eval_batch_size=0", "runner.eval_batch_size=0 must be an integer >= 1"),
    ("runner.lr=0", "runner.lr=0.0 must be > 0"),
    ("runner.max_seq_len=8", "leaves no room for a prompt"),
    ("runner.dtype=float8", "runner.dtype='float8' is not one of"),
])
def test_bad_runner_settings_fail_before_training(tmp_results, monkeypatch, override, text):
    import runners.train

    monkeypatch.setattr(runners.train, "load_backbone", lambda *a, **k: pytest.fail("loaded a model"))
    with pytest.raises(UserError, match=text.replace("(", r"\(").replace(")", r"\)")):
        run_cfg("seed=0", override)


def test_stale_lock_is_taken_over_and_a_live_one_skips(tmp_results):
    path = seed_path(tmp_results, 0)
    path.parent.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket

    lock = seed_path(tmp_results, 0, ".lock")
    lock.write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(), "started": "then"}))
    assert run_cfg("seed=0")["status"] == "ok" and not lock.exists(), "a dead process's lock is taken over"
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": "now"}))
    with pytest.raises(R.RunLocked, match=f"being run by pid {os.getpid()}"):
        run_cfg("seed=0", "force=true")
    lock.unlink()


def test_concurrent_launches_train_once(tmp_path):
    env = dict(os.environ, HARNESS_RESULTS=str(tmp_path / "runs"), CI="true")
    cmd = [sys.executable, "run.py", "backbone=tiny", "runner=debug", "logger=none", "print_table=false", *FAST,
           "seed=0"]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-1500:] for o in outs]
    text = "\n".join(o[0] + o[1] for o in outs)
    assert text.count("] done in") == 1, text[-3000:]
    assert "being run by pid" in text or "skipped (exists)" in text
    assert sorted(os.listdir(tmp_path / "runs" / "tiny" / "synth-compare" / "lora")) == [
        "seed0.json", "seed0.peft.safetensors", "seed0.predictions.jsonl"]


def test_result_files_are_group_readable(tmp_results):
    run_cfg("seed=0")
    assert oct(seed_path(tmp_results, 0).stat().st_mode & 0o044) == oct(0o044)
