"""The prepared GPU check (issue #28): what a machine with one CUDA device runs in under 10 minutes, records
under results/bench/ with the device named.

    python -m scripts.gpu_check dry_run=true           # the steps it would run, on any machine (runs nothing)
    python -m scripts.gpu_check                        # run them (needs a CUDA device)
    make gpu-check [GPU_ARGS="rounds=3 steps=20"]

Steps, each a subprocess of this checkout, stopped at the first failure:
1. train: every method of `methods` (LoRA and the input-aware presets) for `steps` optimizer steps in bf16 on
   SmolLM2-135M, real SST-2 rows (experiment=iapt_sst2_cpu on cuda, 64 test rows), records under
   <out>/gpu_runs/; then the loss check: status ok, every logged training loss finite, the last logged one
   below the first.
2. table4: `python -m scripts.bench table4 device=cuda dtype=bfloat16 rounds=<rounds>` -> <out>/table4_cuda*.
3. tenants: `python -m scripts.bench tenants device=cuda dtype=bfloat16 batches=1,16,64 rounds=<rounds>`.

Options (key=value): dry_run= (false), out= (results/bench), rounds= (5), steps= (30), methods=
(lora,iapt,parade,para,idspam,lpt), data_root= (../shared/data or $HARNESS_DATA). Bad input: one line, exit 2.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys

from core.errors import UserError, exit_on_user_error

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULTS = {"dry_run": "false", "out": os.path.join(ROOT, "results", "bench"), "rounds": "5", "steps": "30",
            "methods": "lora,iapt,parade,para,idspam,lpt",
            "data_root": os.environ.get("HARNESS_DATA", os.path.join(os.path.dirname(ROOT), "shared", "data"))}


def options(argv: list[str]) -> dict:
    """{option: value} over DEFAULTS, checked; UserError naming the valid options."""
    opts = dict(DEFAULTS)
    for a in argv:
        key, sep, value = a.partition("=")
        if not sep or key not in DEFAULTS:
            raise UserError(f"unknown argument '{a}'; valid: {', '.join(f'{k}=' for k in DEFAULTS)}")
        opts[key] = value
    if opts["dry_run"] not in ("true", "false"):
        raise UserError(f"dry_run={opts['dry_run']!r} must be true or false")
    for key in ("rounds", "steps"):
        if not opts[key].isdigit() or int(opts[key]) < 1:
            raise UserError(f"{key}={opts[key]!r} must be a positive integer")
    from pefts.registry import METHODS

    bad = [m for m in opts["methods"].split(",") if m not in METHODS.names()]
    if bad:
        raise UserError(f"methods: {bad[0]!r} is not a registered method; valid: {', '.join(METHODS.names())}")
    return opts


def steps(opts: dict) -> list[tuple[str, list[str]]]:
    """(name, command) of every step, in order."""
    py, out, rounds = sys.executable, opts["out"], opts["rounds"]
    runs = os.path.join(out, "gpu_runs")
    n = int(opts["steps"])
    out_steps = []
    for method in opts["methods"].split(","):
        out_steps.append((f"train {method}", [
            py, "run.py", "experiment=iapt_sst2_cpu", f"method={method}", "seed=0", "runner.device=cuda",
            "runner.dtype=bfloat16", f"runner.max_steps={n}", f"runner.eval_steps={n}", "runner.logging_steps=1",
            "runner.max_test_examples=64", "runner.max_dev_examples=64", "print_table=false", "force=true",
            f"results_dir={runs}", f"data_dir={os.path.join(opts['data_root'], 'glue', 'SST-2')}"]))
    common = ["device=cuda", "dtype=bfloat16", f"rounds={rounds}", "warmup=1", f"out={out}"]
    out_steps.append(("table4", [py, "-m", "scripts.bench", "table4", *common]))
    out_steps.append(("tenants", [py, "-m", "scripts.bench", "tenants", *common, "batches=1,16,64"]))
    return out_steps


def loss_problem(record: dict) -> str | None:
    """Why a short training run's record fails the loss check, or None: status ok, every logged training loss
    finite, and the last one below the first."""
    if record.get("status") != "ok":
        return f"status {record.get('status')}: {record.get('error', '?')}"
    losses = [e["train_loss"] for e in (record.get("curve") or {}).get("train", [])]
    if len(losses) < 2:
        return f"{len(losses)} training losses logged (need 2 or more)"
    if not all(isinstance(x, (int, float)) and math.isfinite(x) for x in losses):
        return f"non-finite training loss in {losses}"
    if not losses[-1] < losses[0]:
        return f"training loss did not fall: first {losses[0]:.4f}, last {losses[-1]:.4f}"
    return None


def main(argv: list[str]) -> int:
    opts = options(argv)
    plan = steps(opts)
    if opts["dry_run"] == "true":
        for name, cmd in plan:
            print(f"{name}: {shlex.join(cmd)}")
        return 0
    import torch

    if not torch.cuda.is_available():
        raise UserError("no CUDA device is visible: the GPU check needs one (dry_run=true prints its steps)")
    print(f"device: {torch.cuda.get_device_name(0)}", flush=True)
    for name, cmd in plan:
        print(f"== {name}", flush=True)
        if subprocess.run(cmd, cwd=ROOT).returncode != 0:
            print(f"error: step '{name}' failed", file=sys.stderr)
            return 1
        if name.startswith("train "):
            method = name.split(" ", 1)[1]
            path = os.path.join(opts["out"], "gpu_runs", "smollm2-135m", "sst2", method, "seed0.json")
            with open(path, encoding="utf-8") as f:
                problem = loss_problem(json.load(f))
            if problem:
                print(f"error: {method}: {problem}", file=sys.stderr)
                return 1
            print(f"{method}: loss check passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(exit_on_user_error(main, sys.argv[1:]))
