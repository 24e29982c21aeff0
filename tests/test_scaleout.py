"""Scale-out (#14): the DeepSpeed runners, data parallel with torchrun, and Hydra's Slurm / joblib launchers.

Real multi-process runs on the CPU (gloo): `torchrun --nproc_per_node 2` must give the one-process record, and
each launcher must run tiny cells. Tests that need an optional package (the `deepspeed` or `cluster` extras) skip
with the reason when it is absent; the DeepSpeed training runs are `slow` (DeepSpeed JIT-builds a CPU op first).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from core.errors import UserError
from runners import results as R
from tests.conftest import ROOT

PY = sys.executable
# the smallest real cell; dropout off: each rank draws its own masks for its share of a batch, so with dropout
# two processes match one only in distribution, not number for number
TINY = ("backbone=tiny", "runner=debug", "logger=none", "task=synth-compare", "method=lora", "method.dropout=0",
        "print_table=false")
CELL = ("tiny", "synth-compare", "lora")
# run.py's own entry (its sweep syntax, then Hydra's main) without its argv pre-checks: run.py's check_keys
# refuses `hydra/launcher=...` as an unknown top-level key (the CLI test below pins that)
HYDRA_MAIN = ("import sys, run; sys.argv = [run.__file__, '--config-path', run.CONF, "
              "*run.expand_argv(sys.argv[1:])]; run.main()")


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


needs_deepspeed = pytest.mark.skipif(not installed("deepspeed"),
                                     reason='deepspeed is not installed (pip install -e ".[deepspeed]")')
needs_submitit = pytest.mark.skipif(not installed("hydra_plugins.hydra_submitit_launcher"),
                                    reason='hydra-submitit-launcher is not installed (pip install -e ".[cluster]")')
needs_joblib = pytest.mark.skipif(not installed("hydra_plugins.hydra_joblib_launcher"),
                                  reason='hydra-joblib-launcher is not installed (pip install -e ".[cluster]")')


def env_for(results) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(CI="true", HARNESS_RESULTS=str(results), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return env


def sh(cmd: list[str], results, timeout: int = 300) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, cwd=ROOT, env=env_for(results), capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{' '.join(cmd)} exited {p.returncode}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


def torchrun(n: int) -> list[str]:  # --standalone: a local rendezvous on a free port
    return [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n)]


def cell_files(results) -> list[str]:
    folder = os.path.join(str(results), *CELL)
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def record(results, seed: int = 0) -> dict:
    return R.read_record(os.path.join(str(results), *CELL, f"seed{seed}.json"))


def assert_same_run(one: dict, two: dict, rel: float = 1e-5) -> None:
    """Same optimizer steps, effective batch, metrics, and losses within `rel` (the float summation order of
    an all-reduce differs from one process's sum: 1e-7 relative observed; a missing gradient sync, each rank
    then training on its half of every batch, moves the losses by 1e-4 relative and more)."""
    assert two["steps"] == one["steps"] and two["effective_batch_size"] == one["effective_batch_size"]
    assert two["metrics"] == pytest.approx(one["metrics"], abs=1e-9)
    assert two["dev"]["best_step"] == one["dev"]["best_step"]
    for part in ("train", "dev"):
        a, b = one["curve"][part], two["curve"][part]
        assert [p["step"] for p in b] == [p["step"] for p in a]
        key = "train_loss" if part == "train" else "dev_loss"
        assert [p[key] for p in b] == pytest.approx([p[key] for p in a], rel=rel), part


# --- DeepSpeed runner configs -------------------------------------------------------------------------------

DS_JSONS = {"z2.json": (2, None, None), "z2_offload.json": (2, "cpu", None),
            "z3.json": (3, None, None), "z3_offload.json": (3, "cpu", "cpu")}


@pytest.mark.parametrize("runner,stage", [("deepspeed_z2", 2), ("deepspeed_z3", 3)])
def test_deepspeed_runner_points_at_a_trainer_ready_json(runner, stage):
    from core import config

    r = config.compose(["backbone=tiny", "logger=none", f"runner={runner}"]).runner
    assert r.name == runner and r.dtype == "bfloat16"
    path = os.path.join(ROOT, r.deepspeed)
    assert os.path.isfile(path), f"runner.deepspeed={r.deepspeed} is not a file under the repo root"
    with open(path) as f:
        ds = json.load(f)
    assert ds["zero_optimization"]["stage"] == stage


@pytest.mark.parametrize("name", sorted(DS_JSONS))
def test_deepspeed_jsons_leave_batch_and_precision_to_the_trainer(name):
    stage, offload_optimizer, offload_param = DS_JSONS[name]
    with open(os.path.join(ROOT, "conf", "deepspeed", name)) as f:
        ds = json.load(f)
    # "auto": Trainer fills them from TrainingArguments, so the runner's batch split and dtype decide
    for key in ("train_micro_batch_size_per_gpu", "train_batch_size", "gradient_accumulation_steps",
                "gradient_clipping"):
        assert ds[key] == "auto", key
    assert ds["bf16"]["enabled"] == "auto" and ds["fp16"]["enabled"] == "auto"
    assert "optimizer" not in ds and "scheduler" not in ds, "the runner's AdamW groups and schedule must be used"
    zero = ds["zero_optimization"]
    assert zero["stage"] == stage
    assert zero.get("offload_optimizer", {}).get("device") == offload_optimizer
    assert zero.get("offload_param", {}).get("device") == offload_param
    if offload_optimizer:  # DeepSpeed refuses a client (torch) optimizer with offload unless told
        assert ds["zero_force_ds_cpu_optimizer"] is False


@needs_deepspeed
def test_deepspeed_jsons_validate_through_deepspeeds_config():
    """TrainingArguments(deepspeed=...) fills the "auto" values (HfTrainerDeepSpeedConfig), then DeepSpeed's own
    DeepSpeedConfig parses and checks them (batch = micro x accumulation x world). In a subprocess: the
    DeepSpeed TrainingArguments set process-wide state (ACCELERATE_USE_DEEPSPEED, transformers' ZeRO-3 global)."""
    script = r"""
import json, sys, tempfile
from core.config import compose
from runners.backbones import load_backbone
from runners.train import split_batch
from transformers import TrainingArguments
from transformers.integrations.deepspeed import unset_hf_deepspeed_config
from deepspeed.runtime.config import DeepSpeedConfig
out = {}
for runner, ds in [("deepspeed_z2", None), ("deepspeed_z2", "conf/deepspeed/z2_offload.json"),
                   ("deepspeed_z3", None), ("deepspeed_z3", "conf/deepspeed/z3_offload.json")]:
    cfg = compose(["backbone=tiny", "logger=none", f"runner={runner}", "runner.dtype=float32"]
                  + ([f"runner.deepspeed={ds}"] if ds else []))
    unset_hf_deepspeed_config()  # as runners/train.py: the last loop's ZeRO-3 config would partition the model
    model = load_backbone(cfg.backbone)[0]  # before TrainingArguments, as runners/train.py does
    micro, accumulation = split_batch(16, cfg.runner.micro_batch_size, 1)
    args = TrainingArguments(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=micro,
                             gradient_accumulation_steps=accumulation, deepspeed=cfg.runner.deepspeed, use_cpu=True,
                             report_to="none", max_steps=10)
    hf = args.hf_deepspeed_config
    hf.trainer_config_finalize(args, model, 10)  # the model-size "auto" values of ZeRO-3
    c = DeepSpeedConfig(hf.config)
    opt, par = c.zero_config.offload_optimizer, c.zero_config.offload_param
    out[cfg.runner.deepspeed] = {"stage": c.zero_optimization_stage, "batch": c.train_batch_size,
        "micro": c.train_micro_batch_size_per_gpu, "accumulation": c.gradient_accumulation_steps,
        "clip": c.gradient_clipping, "offload": [str(opt.device) if opt else None, str(par.device) if par else None],
        "force_ds_cpu_optimizer": c.zero_force_ds_cpu_optimizer,
        "left_auto": [k for k, v in hf.config.items() if v == "auto"]}
print("RESULT" + json.dumps(out))
"""
    p = subprocess.run([PY, "-c", script], cwd=ROOT, env=env_for("/nonexistent"), capture_output=True, text=True,
                       timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.split("RESULT", 1)[1])
    assert set(out) == {f"conf/deepspeed/{name}" for name in DS_JSONS}
    for name, (stage, offload_optimizer, offload_param) in DS_JSONS.items():
        got = out[f"conf/deepspeed/{name}"]
        assert got["stage"] == stage, name
        assert (got["batch"], got["micro"], got["accumulation"]) == (16, 4, 4), name  # 4 rows x 4 steps x 1
        assert got["clip"] == 1.0 and got["left_auto"] == [], name  # Trainer's max_grad_norm; nothing unfilled
        assert got["offload"] == [offload_optimizer, offload_param], name
        assert got["force_ds_cpu_optimizer"] is (offload_optimizer is None), name


def test_runner_builds_trainingarguments_with_the_deepspeed_json(tmp_results, monkeypatch):
    """runners/train.py hands runner.deepspeed to TrainingArguments, with the effective batch split over
    WORLD_SIZE (here 2 processes: 4 rows x 2 accumulation steps x 2 = 16, Appendix F's small-task batch)."""
    import runners.train as T
    from tests.conftest import compose

    seen = {}

    class Stop(Exception):
        pass

    def capture(**kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(T, "TrainingArguments", capture)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = compose("runner=deepspeed_z2", "method=lora", "task=synth-compare", "runner.max_train_examples=16",
                  "runner.max_dev_examples=8", "runner.max_test_examples=8", "backbone=tiny", "logger=none",
                  debug=False)
    with pytest.raises(T.RunFailed, match="Stop"):
        T.run(cfg)
    assert seen["deepspeed"] == "conf/deepspeed/z2.json"
    assert (seen["per_device_train_batch_size"], seen["gradient_accumulation_steps"]) == (4, 2)
    assert seen["bf16"] is True and seen["eval_on_start"] is True


# --- data parallel: the batch split and the lock ------------------------------------------------------------

def test_split_batch_keeps_the_effective_batch_at_any_world_size():
    from runners.train import split_batch

    assert split_batch(16, 4) == (4, 4)
    assert split_batch(16, 4, 2) == (4, 2)
    assert split_batch(4, 4, 2) == (2, 1)  # runner=debug on 2 processes: 2 rows each, no accumulation
    assert split_batch(128, 4, 8) == (4, 4)
    assert split_batch(16, 32, 4) == (4, 1)
    for micro, world in ((4, 1), (4, 2), (2, 8)):
        rows, accumulation = split_batch(16, micro, world)
        assert rows * accumulation * world == 16
    with pytest.raises(UserError, match="not divisible by the 3 processes"):
        split_batch(16, 4, 3)
    with pytest.raises(UserError, match="micro_batch_size=3 x 2 processes"):
        split_batch(16, 3, 2)
    with pytest.raises(UserError, match="not a multiple of runner.micro_batch_size=3$"):
        split_batch(16, 3)


def test_run_lock_is_rank_zeros_and_a_held_lock_stops_a_multi_process_launch(tmp_path, monkeypatch):
    from runners.train import run_lock

    path = str(tmp_path / "seed0.json")
    lock = str(tmp_path / "seed0.lock")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with run_lock(path):
        assert not os.path.exists(lock), "only rank 0 takes the lock"
    monkeypatch.setenv("RANK", "0")
    with run_lock(path):
        assert os.path.exists(lock)
        with pytest.raises(UserError, match="2-process launch stops here") as e:  # not a skip: exit 2
            with run_lock(path):
                pass
        assert not isinstance(e.value, R.RunLocked)
        monkeypatch.setenv("WORLD_SIZE", "1")
        with pytest.raises(R.RunLocked):  # one process: skipped as before
            with run_lock(path):
                pass
    assert not os.path.exists(lock)


def test_torchrun_two_processes_write_one_record_equal_to_one_process(tmp_path):
    """A REAL 2-process CPU run (gloo): one record, equal to the 1-process record. runner=debug's batch of 4
    becomes 2 rows per process x 2 processes (accumulation from WORLD_SIZE), the same rows per optimizer step
    as one process; Trainer divides the loss by the tokens of all processes; both ranks seed alike."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with the gloo backend is not available")
    one, two = tmp_path / "one", tmp_path / "two"
    sh([PY, "run.py", *TINY, f"hydra.run.dir={tmp_path / 'out1'}"], one)
    p = sh([*torchrun(2), "run.py", *TINY, f"hydra.run.dir={tmp_path / 'out2'}"], two)
    assert p.stdout.count("[tiny/synth-compare/lora/seed0] done") == 2, p.stdout  # both ranks ran it
    assert cell_files(two) == ["seed0.json", "seed0.peft.safetensors", "seed0.predictions.jsonl"], \
        "exactly one record, no lock, failed record or checkpoints left"
    a, b = record(one), record(two)
    assert_same_run(a, b)
    assert b["split_sizes"] == a["split_sizes"] and b["effective_batch_size"] == 4
    with open(os.path.join(two, *CELL, "seed0.predictions.jsonl")) as f2, \
            open(os.path.join(one, *CELL, "seed0.predictions.jsonl")) as f1:
        assert f2.read() == f1.read()
    from safetensors.torch import load_file

    w1 = load_file(os.path.join(one, *CELL, "seed0.peft.safetensors"))
    w2 = load_file(os.path.join(two, *CELL, "seed0.peft.safetensors"))
    assert set(w1) == set(w2)
    for k in w1:
        assert w2[k].shape == w1[k].shape
        assert (w2[k] - w1[k]).abs().max().item() <= 1e-5 * max(1.0, w1[k].abs().max().item()), k


@pytest.mark.slow
@needs_deepspeed
@pytest.mark.parametrize("runner", ["deepspeed_z2", "deepspeed_z3"])
def test_deepspeed_two_processes_on_cpu_match_one_process(tmp_path, runner):
    """ZeRO-2/3 through Trainer's DeepSpeed integration, 2 CPU processes (DeepSpeed's CPU accelerator, gloo).
    A high learning rate makes step 0 the best dev state, so the record must come from the restored state:
    under ZeRO-3 the best-state copy, its restore and the saved PEFT weights gather the partitioned parameters."""
    common = (*TINY, f"runner={runner}", "runner.dtype=float32", "runner.device=cpu", "runner.max_steps=3",
              "runner.eval_steps=3", "runner.batch_size=4", "runner.patience=2", "runner.num_beams=1",
              "runner.eval_batch_size=8", "runner.max_train_examples=24", "runner.max_dev_examples=8",
              "runner.max_test_examples=8", "runner.max_seq_len=256", "runner.logging_steps=1", "runner.lr=0.3")
    common = tuple(a for a in common if a != "runner=debug")
    one, two = tmp_path / "one", tmp_path / "two"
    sh([PY, "run.py", *common, "runner.deepspeed=null", f"hydra.run.dir={tmp_path / 'o1'}"], one)
    sh([*torchrun(2), "run.py", *common, f"hydra.run.dir={tmp_path / 'o2'}"], two, timeout=540)
    assert cell_files(two) == ["seed0.json", "seed0.peft.safetensors", "seed0.predictions.jsonl"]
    a, b = record(one), record(two)
    assert a["dev"]["best_step"] == 0, "the test needs a run whose best dev state is not the last"
    assert_same_run(a, b)
    assert b["params"] == a["params"]
    from safetensors.torch import load_file

    w1 = load_file(os.path.join(one, *CELL, "seed0.peft.safetensors"))
    w2 = load_file(os.path.join(two, *CELL, "seed0.peft.safetensors"))
    assert {k: tuple(v.shape) for k, v in w2.items()} == {k: tuple(v.shape) for k, v in w1.items()}
    for k in w1:  # the restored step-0 state: LoRA's B starts at zero
        assert (w2[k] - w1[k]).abs().max().item() <= 1e-6, k


# --- Hydra launchers ----------------------------------------------------------------------------------------

@needs_submitit
def test_slurm_launcher_config_composes_with_its_cluster_keys():
    from core import config

    cfg = config.compose(["backbone=tiny", "logger=none", "hydra/launcher=slurm", "hydra.launcher.partition=a100"],
                         return_hydra_config=True)
    lc = cfg.hydra.launcher
    assert lc._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert lc.partition == "a100"  # overridable on the command line
    assert (lc.gpus_per_node, lc.tasks_per_node, lc.timeout_min, lc.array_parallelism) == (1, 1, 720, 64)
    assert "export HF_HUB_OFFLINE=1" in lc.setup
    assert cfg.hydra.runtime.choices["hydra/launcher"] == "slurm"


@needs_joblib
def test_local_parallel_launcher_config_composes():
    from core import config

    cfg = config.compose(["backbone=tiny", "logger=none", "hydra/launcher=local_parallel"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_ == "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    assert cfg.hydra.launcher.n_jobs == 2 and cfg.hydra.launcher.backend == "loky"


@needs_submitit
def test_submitit_local_executor_runs_one_cell(tmp_path):
    results, sweep = tmp_path / "runs", tmp_path / "sweep"
    p = sh([PY, "-c", HYDRA_MAIN, "--multirun", *TINY, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
            f"hydra.sweep.dir={sweep}"], results)
    assert "Submitit 'local' sweep output dir" in p.stdout + p.stderr
    assert cell_files(results) == ["seed0.json", "seed0.peft.safetensors", "seed0.predictions.jsonl"]
    assert record(results)["status"] == "ok"
    logs = [f for _, _, fs in os.walk(sweep / ".submitit") for f in fs if f.endswith("_log.out")]
    assert logs, "the cell ran as a submitit job (its log under <sweep>/.submitit/)"


@needs_joblib
def test_joblib_launcher_runs_two_seeds_in_parallel(tmp_path):
    results = tmp_path / "runs"
    p = sh([PY, "-c", HYDRA_MAIN, *TINY, "seed=0,1", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
            f"hydra.sweep.dir={tmp_path / 'sweep'}"], results)
    assert "Joblib.Parallel(n_jobs=2" in p.stdout + p.stderr
    assert cell_files(results) == ["seed0.json", "seed0.peft.safetensors", "seed0.predictions.jsonl",
                                   "seed1.json", "seed1.peft.safetensors", "seed1.predictions.jsonl"]
    assert record(results, 0)["seed"] == 0 and record(results, 1)["seed"] == 1


@needs_submitit
def test_cli_accepts_a_launcher_override(tmp_path):
    p = subprocess.run([PY, "run.py", "hydra/launcher=slurm", "--cfg", "hydra", "-p", "hydra.launcher"], cwd=ROOT,
                       env=env_for(tmp_path), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "SlurmLauncher" in p.stdout, p.stderr[-2000:]


def _descendants(pid: int) -> list[int]:
    parents = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    parents[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    out, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, parent in parents.items() if parent == p]
        out += kids
        frontier += kids
    return out


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds torchrun's workers through /proc")
@pytest.mark.parametrize("runner", ["default", pytest.param("deepspeed_z2", marks=needs_deepspeed),
                                    pytest.param("deepspeed_z3", marks=needs_deepspeed)])
def test_killed_two_process_run_resumes_to_the_same_record(tmp_path, runner):
    """SIGKILL a 2-process run (torchrun and its workers, as a preempted node) after its first checkpoint;
    the relaunch resumes from it (Trainer's or DeepSpeed's checkpoint) to the uninterrupted run's record."""
    import signal
    import time

    args = ("backbone=tiny", "logger=none", "task=synth-compare", "method=lora", "method.dropout=0",
            "print_table=false", f"runner={runner}", "runner.dtype=float32", "runner.device=cpu",
            "runner.max_steps=12", "runner.batch_size=4", "runner.eval_steps=4", "runner.patience=100",
            "runner.num_beams=1", "runner.eval_batch_size=8", "runner.max_train_examples=64",
            "runner.max_dev_examples=8", "runner.max_test_examples=8", "runner.max_seq_len=256",
            "runner.logging_steps=1", f"hydra.run.dir={tmp_path / 'out'}")  # a logged loss per step: none spans the kill
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    sh([*torchrun(2), "run.py", *args], ref)
    proc = subprocess.Popen([*torchrun(2), "run.py", *args], cwd=ROOT, env=env_for(killed),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = killed.joinpath(*CELL, "seed0.ckpt")
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if sorted(ckpt.glob("checkpoint-*/harness.json")):
            for pid in [*_descendants(proc.pid), proc.pid]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.wait()
            break
        time.sleep(0.01)
    assert not killed.joinpath(*CELL, "seed0.json").exists(), "the run was killed before it finished"
    p = sh([*torchrun(2), "run.py", *args], killed)
    assert p.stdout.count("resuming from") == 2, p.stdout[-3000:]  # both ranks
    assert_same_run(record(ref), record(killed), rel=1e-6)
    assert cell_files(killed) == ["seed0.json", "seed0.peft.safetensors", "seed0.predictions.jsonl"]
