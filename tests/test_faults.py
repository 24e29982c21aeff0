"""Fault injection, in one place (issue #30): each expected fault around a run and the outcome promised for it.

| fault injected | promised outcome |
|---|---|
| results_dir under a regular file (real) | one line naming the folder, exit 2, nothing written |
| results folder refuses files (PermissionError injected at the write probe) | one line, exit 2, before any model |
| disk full when the record is written (ENOSPC injected at os.replace) | one line naming seed<k>.json; no record, answers, weights, temp file, failed record or lock left |
| disk full when a checkpoint is written (ENOSPC injected into the checkpoint's writer) | one line naming the checkpoint; no record, no failed record |
| bounds: max_steps 0 / -2, seed -1 / 2^32, max_epochs 0, warmup_ratio 1.5, weight_decay < 0, batch sizes 0 | one line naming key, value and the valid range, before any model; nothing written |
| a data file that is not UTF-8 | one line naming the file, the line, the column and the byte |
| a launch whose run another live process holds | `skipped: ...` (no "error"), exit 0 |
| a lock of another host | skipped with the way out (break_lock=true); break_lock=true takes it over |
| several GPUs visible to one process without a launcher | one line: use torchrun or CUDA_VISIBLE_DEVICES |
| SIGTERM / SIGINT at a step without a checkpoint (in process and from outside) | the step finishes, a complete checkpoint of it, exit 75, nothing finished-looking; the relaunch resumes to the uninterrupted run's metrics |
| force=true under torchrun with old checkpoints | rank 0 clears them once (main_process_first), one record |

Elsewhere: kill -9 and resume (tests/test_reliability.py, one process; tests/test_scaleout.py, torchrun and
DeepSpeed ZeRO-2/3, `slow`), a NaN loss, a corrupt record, a second learning rate in a cell, concurrent launches
(tests/test_reliability.py), bad data rows (tests/test_data_errors.py), bad options (tests/test_train.py).
Exit codes: core/errors.py and the README.

    .venv/bin/python -m pytest tests/test_faults.py -q
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from core.errors import EXIT_PREEMPTED, UserError
from runners import results as R
from tests.conftest import ROOT, compose

FAST = ("method=lora", "task=synth-compare", "runner.max_train_examples=16", "runner.max_steps=4", "runner.eval_steps=2")
CELL = ("tiny", "synth-compare", "lora")
CLI = ("backbone=tiny", "runner=debug", "logger=none", "print_table=false")

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def run_cfg(*overrides):
    from runners.train import run

    return run(compose(*FAST, *overrides))


def cli(results, *args, timeout=300):
    env = dict(os.environ, HARNESS_RESULTS=str(results), CI="true")
    return subprocess.run([sys.executable, "run.py", *CLI, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


def files_of(root) -> list[str]:
    """Every file under `root` (relative paths), hidden temp files included."""
    out = []
    for folder, _, names in os.walk(root):
        out += [os.path.relpath(os.path.join(folder, n), root) for n in names]
    return sorted(out)


def no_model(monkeypatch):
    import runners.train

    monkeypatch.setattr(runners.train, "load_backbone", lambda *a, **k: pytest.fail("loaded a model"))


def assert_one_line(stderr: str, *needles: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-2000:]
    for n in needles:
        assert n in lines[0], (n, lines[0])


# -- file system ------------------------------------------------------------------------------------------
def test_results_dir_under_a_regular_file_is_one_line_and_exit_2(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    p = cli(blocker / "runs", *FAST, "seed=0")
    assert p.returncode == 2, p.stderr[-2000:]
    assert_one_line(p.stderr, "error: cannot write the results folder", str(blocker), "results_dir=")
    assert blocker.read_text() == "not a folder"


def test_results_folder_that_refuses_files_fails_before_any_model(tmp_results, monkeypatch):
    no_model(monkeypatch)

    def refuse(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", k.get("dir"))

    monkeypatch.setattr(R.tempfile, "mkstemp", refuse)
    with pytest.raises(R.WriteError, match="cannot write the results folder .*Permission denied"):
        run_cfg("seed=0")
    assert files_of(tmp_results) == []


def test_disk_full_at_the_record_leaves_no_partial_run(tmp_results, monkeypatch):
    real = os.replace

    def full(src, dst, *a, **k):
        if str(dst).endswith("seed0.json"):
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(R.WriteError, match=r"cannot write .*seed0\.json.*No space left on device.*no record"):
        run_cfg("seed=0")
    left = [f for f in files_of(tmp_results) if "seed0.ckpt" not in f]  # its checkpoints stay: a rerun resumes
    assert left == [], "no record, answers, weights, temp file, failed record or lock"


def test_disk_full_at_a_checkpoint_is_one_line_and_no_failed_record(tmp_results, monkeypatch):
    import runners.trainer

    def full(model, path):
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(runners.trainer, "save_peft", full)
    with pytest.raises(R.WriteError, match="cannot write a checkpoint .*No space left on device"):
        run_cfg("seed=0")
    left = files_of(tmp_results)
    assert not [f for f in left if f.endswith(("seed0.json", "failed.json", ".lock"))], left


# -- bounds -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("override, text", [
    ("runner.max_steps=0", "runner.max_steps=0 must be >= 1, or -1 (no step cap"),
    ("runner.max_steps=-2", "runner.max_steps=-2 must be >= 1, or -1"),
    ("seed=-1", "seed=-1 must be an integer in [0, 2^32)"),
    ("seed=4294967296", "seed=4294967296 must be an integer in [0, 2^32)"),
    ("runner.max_epochs=0", "runner.max_epochs=0.0 must be > 0"),
    ("runner.warmup_ratio=1.5", "runner.warmup_ratio=1.5 must lie in [0, 1]"),
    ("runner.weight_decay=-0.1", "runner.weight_decay=-0.1 must be >= 0"),
    ("runner.small_batch_size=0", "runner.small_batch_size=0 must be an integer >= 1"),
    ("runner.micro_batch_size=0", "runner.micro_batch_size=0 must be an integer >= 1"),
    ("runner.batch_size=0", "runner.batch_size=0 must be >= 1 or null"),
    ("runner.max_train_examples=0", "runner.max_train_examples=0 must be >= 1 or null"),
    ("runner.max_seq_len=0", "runner.max_seq_len=0 must be an integer >= 1"),
    ("runner.num_beams=0", "runner.num_beams=0 must be an integer >= 1"),
    ("runner.loss_positions=some", "runner.loss_positions='some' is not one of labelled, all"),
])
def test_out_of_bounds_settings_fail_before_any_model(tmp_results, monkeypatch, override, text):
    no_model(monkeypatch)
    with pytest.raises(UserError) as e:
        run_cfg(override)
    assert text in str(e.value) and "\n" not in str(e.value)
    assert files_of(tmp_results) == [], "nothing written: no record, failed record or lock"


def test_negative_seed_on_the_command_line_is_one_line_and_exit_2(tmp_path):
    p = cli(tmp_path, *FAST, "seed=-1")
    assert p.returncode == 2
    assert_one_line(p.stderr, "seed=-1 must be an integer in [0, 2^32)")
    assert not (tmp_path / "tiny").exists()


# -- encodings --------------------------------------------------------------------------------------------
def test_a_data_file_that_is_not_utf8_names_file_line_and_byte(tmp_path):
    from tasks.registry import build_task

    folder = tmp_path / "RTE"
    folder.mkdir()
    rows = ["index\tsentence1\tsentence2\tlabel", "0\tA cat sat.\tA cat.\tentailment",
            "1\tCaf\xe9 au lait.\tA drink.\tentailment", "2\tRain.\tSun.\tnot_entailment"]
    for split in ("train", "dev", "test"):
        (folder / f"{split}.tsv").write_bytes("\n".join(rows).encode("latin-1") + b"\n")
    with pytest.raises(UserError) as e:
        build_task(compose("task=rte").task).splits(str(folder))
    msg = str(e.value)
    assert "train.tsv" in msg and "line 3 is not UTF-8 (byte 0xe9 at column 6)" in msg and "\n" not in msg, msg


# -- locks ------------------------------------------------------------------------------------------------
def test_a_launch_skipped_by_a_live_lock_says_skipped_and_exits_0(tmp_path):
    lock = tmp_path.joinpath(*CELL, "seed0.lock")
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": "now"}))
    p = cli(tmp_path, *FAST, "seed=0")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "skipped: " in p.stderr and f"being run by pid {os.getpid()}" in p.stderr, p.stderr[-2000:]
    assert "error" not in p.stderr.lower(), p.stderr[-2000:]
    assert not tmp_path.joinpath(*CELL, "seed0.json").exists() and lock.exists()


def test_a_lock_of_another_host_is_taken_over_only_with_break_lock(tmp_results):
    lock = tmp_results.joinpath(*CELL, "seed0.lock")
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"pid": 1, "host": "node-elsewhere", "started": "then"}))
    with pytest.raises(R.RunLocked, match="on host node-elsewhere .*cannot be checked .*break_lock=true"):
        run_cfg("seed=0")
    assert lock.exists() and not tmp_results.joinpath(*CELL, "seed0.json").exists()
    assert run_cfg("seed=0", "break_lock=true")["status"] == "ok" and not lock.exists()


# -- several GPUs in one process ----------------------------------------------------------------------------
def test_several_gpus_in_one_process_are_refused_without_a_launcher(monkeypatch):
    from runners.train import validate_settings

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(UserError, match=r"4 GPUs are visible to one process: .*DataParallel .*torchrun "
                                        r"--nproc_per_node=4.*CUDA_VISIBLE_DEVICES=0"):
        validate_settings(compose(*FAST, "runner.device=cuda"))
    monkeypatch.setenv("WORLD_SIZE", "4")  # under torchrun each rank takes its own GPU
    validate_settings(compose(*FAST, "runner.device=cuda"))


# -- preemption ---------------------------------------------------------------------------------------------
PREEMPT = ("method=lora", "task=synth-compare", "runner.max_train_examples=64", "runner.max_steps=12",
           "runner.eval_steps=4", "runner.patience=100", "seed=0")


def test_sigterm_at_a_step_without_checkpoint_checkpoints_it_and_resumes_exactly(tmp_path, monkeypatch, caplog):
    """The signal arrives inside step 3 (checkpoints come at dev evaluations, steps 4, 8, 12): the step
    finishes, checkpoint-3 is written, Preempted is raised, nothing finished-looking is left; the relaunch
    resumes from it to the uninterrupted run's metrics."""
    from runners.train import Preempted, run
    from runners.trainer import HarnessTrainer

    monkeypatch.setenv("HARNESS_RESULTS", str(tmp_path / "ref"))
    ref = run(compose(*PREEMPT))
    monkeypatch.setenv("HARNESS_RESULTS", str(tmp_path / "stopped"))
    real, calls = HarnessTrainer.training_step, []

    def step_then_signal(self, *a, **k):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # a real signal, to the real handler, mid-step
        return real(self, *a, **k)

    monkeypatch.setattr(HarnessTrainer, "training_step", step_then_signal)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Preempted, match=r"SIGTERM after step 3, checkpoint .*checkpoint-3; relaunch"):
        run(compose(*PREEMPT))
    cell = tmp_path.joinpath("stopped", *CELL)
    assert sorted(p.name for p in (cell / "seed0.ckpt").glob("checkpoint-*")) == ["checkpoint-3"]
    assert (cell / "seed0.ckpt" / "checkpoint-3" / "harness.json").exists(), "a complete checkpoint"
    assert sorted(p.name for p in cell.iterdir()) == ["seed0.ckpt"], "no record, failed record or lock"
    assert signal.getsignal(signal.SIGTERM) is before, "the run's handler is removed after training"
    monkeypatch.setattr(HarnessTrainer, "training_step", real)
    with caplog.at_level("INFO", logger="runners.train"):
        resumed = run(compose(*PREEMPT))
    assert "checkpoint-3" in caplog.text and "resuming from" in caplog.text
    assert resumed["metrics"] == ref["metrics"] and resumed["dev"] == ref["dev"] and resumed["steps"] == 12
    for a, b in zip(resumed["curve"]["dev"], ref["curve"]["dev"]):
        assert a["step"] == b["step"] and a["dev_loss"] == pytest.approx(b["dev_loss"], rel=1e-6)
    assert sorted(p.name for p in cell.iterdir()) == ["seed0.json", "seed0.peft.safetensors",
                                                      "seed0.predictions.jsonl"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_from_outside_exits_75_and_the_relaunch_finishes_the_run(tmp_path, sig):
    """The signal is sent once the run has made its checkpoint folder (training is being set up, no step has
    a checkpoint): exit 75 with one `stopped:` line, no record; the relaunch resumes and equals a run that was
    never stopped."""
    ref = cli(tmp_path / "ref", *PREEMPT)
    assert ref.returncode == 0, ref.stderr[-2000:]
    env = dict(os.environ, HARNESS_RESULTS=str(tmp_path / "stopped"), CI="true")
    proc = subprocess.Popen([sys.executable, "run.py", *CLI, *PREEMPT], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    marker = tmp_path.joinpath("stopped", *CELL, "seed0.ckpt", "config.json")
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not marker.exists():
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before the signal"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_PREEMPTED, err[-2000:]
    stopped = [line for line in err.splitlines() if line.startswith("stopped: ")]
    assert len(stopped) == 1 and signal.Signals(sig).name in stopped[0] and "relaunch" in stopped[0], err[-2000:]
    assert "Traceback" not in err
    cell = tmp_path.joinpath("stopped", *CELL)
    assert not (cell / "seed0.json").exists() and not (cell / "seed0.failed.json").exists()
    again = cli(tmp_path / "stopped", *PREEMPT)
    assert again.returncode == 0, again.stderr[-2000:]
    a, b = (R.read_record(str(p.joinpath(*CELL, "seed0.json"))) for p in (tmp_path / "ref", tmp_path / "stopped"))
    assert a["metrics"] == b["metrics"] and a["dev"] == b["dev"] and a["steps"] == b["steps"]


@pytest.mark.slow
def test_force_under_torchrun_clears_old_checkpoints_once(tmp_path):
    """Checkpoints of another config beside the run; `force=true` in a 2-process torchrun launch: rank 0
    removes them first (main_process_first), the other rank then finds the fresh folder; one record."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with the gloo backend is not available")
    args = (*CLI, *FAST, "method.dropout=0", "seed=0", "runner.device=cpu", "runner.batch_size=4")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(CI="true", HARNESS_RESULTS=str(tmp_path), OMP_NUM_THREADS="1")
    old = tmp_path.joinpath(*CELL, "seed0.ckpt")
    (old / "checkpoint-2").mkdir(parents=True)
    (old / "config.json").write_text(json.dumps({"runner": {"lr": 123.0}}))
    (old / "checkpoint-2" / "harness.json").write_text("{}")
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "run.py", *args, "force=true", f"hydra.run.dir={tmp_path / 'out'}"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "resuming from" not in p.stdout + p.stderr, "force=true must not resume the old checkpoints"
    assert sorted(os.listdir(tmp_path.joinpath(*CELL))) == ["seed0.json", "seed0.peft.safetensors",
                                                          "seed0.predictions.jsonl"]
