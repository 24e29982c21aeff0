"""scripts/gpu_check.py without a GPU: the dry run's steps, its one-line errors, the loss check on hand-made
records. (The GPU run itself: when a device is lent; its records go under results/bench/ with the device named.)

    .venv/bin/python -m pytest tests/test_gpu_check.py -q
"""

from __future__ import annotations

import math

import pytest

from core.errors import exit_on_user_error
from scripts import gpu_check


def test_dry_run_lists_every_step_on_cuda_in_bf16(capsys):
    assert gpu_check.main(["dry_run=true", "methods=lora,iapt", "rounds=2", "steps=10", "out=/tmp/g"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["train lora", "train iapt", "table4", "tenants"]
    for line in lines[:2]:
        assert "runner.device=cuda" in line and "runner.dtype=bfloat16" in line and "runner.max_steps=10" in line
        assert "results_dir=/tmp/g/gpu_runs" in line
    assert "scripts.bench table4 device=cuda dtype=bfloat16 rounds=2" in lines[2]
    assert "batches=1,16,64" in lines[3] and "out=/tmp/g" in lines[3]


@pytest.mark.parametrize("arg, says", [
    ("rounds=0", "rounds='0' must be a positive integer"),
    ("methods=lora,nope", "methods: 'nope' is not a registered method"),
    ("dry_run=maybe", "dry_run='maybe' must be true or false"),
    ("speed=2", "unknown argument 'speed=2'; valid: dry_run=, out=, rounds=, steps=, methods=, data_root="),
])
def test_bad_options_are_one_line_and_exit_2(arg, says, capsys):
    with pytest.raises(SystemExit) as e:
        exit_on_user_error(gpu_check.main, ["dry_run=true", arg])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and says in err, err


def test_without_a_gpu_the_check_refuses_in_one_line(monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as e:
        exit_on_user_error(gpu_check.main, [])
    assert e.value.code == 2 and "no CUDA device is visible" in capsys.readouterr().err


def test_loss_check():
    def rec(*losses, status="ok"):
        return {"status": status, "curve": {"train": [{"step": i, "train_loss": x} for i, x in enumerate(losses)]}}

    assert gpu_check.loss_problem(rec(2.0, 1.5, 0.9)) is None
    assert "did not fall" in gpu_check.loss_problem(rec(1.0, 1.2))
    assert "non-finite" in gpu_check.loss_problem(rec(2.0, math.nan, 0.5))
    assert "need 2 or more" in gpu_check.loss_problem(rec(1.0))
    assert "status failed" in gpu_check.loss_problem({"status": "failed", "error": "boom"})
