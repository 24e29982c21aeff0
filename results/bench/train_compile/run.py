"""Does the Trainer's torch.compile (TrainingArguments.torch_compile, inductor on CPU) pay for a CPU training run?
Issue #26's lever "torch.compile where it helps on CPU (measure compile time against the run it saves)".

For each method, two cells are built the way scripts/bench/train.py builds them (runners/train.py's stages,
`experiment=iapt_sst2_cpu`, SmolLM2-135M, real SST-2 rows, fp32, labelled positions): eager and compiled. The
first round of each is timed step by step (the compiled one holds the compile and any recompiles: the steps'
lengths differ, so dynamo compiles again with dynamic shapes), then `rounds` interleaved rounds of `steps`
steps time steady state (same batches each round, so no recompiles: this favours compile). The dev loss
(Trainer.evaluate on the 8 dev rows the bench keeps) is timed twice per cell too: the compiled eval graph is
another compile. Written: results/bench/train_compile/train_compile.{json,md} (README.md reads them).

    .venv/bin/python results/bench/train_compile/run.py [methods=lora,parade,iapt] [rounds=4] [steps=4]
    .venv/bin/python results/bench/train_compile/run.py backbone=tiny methods=lora rounds=1 steps=2 out=/tmp/tc
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..")))
from scripts.bench import common as C  # noqa: E402
from scripts.bench.options import parse  # noqa: E402
from scripts.bench.train import harness_cell  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def timed_eval(trainer) -> float:
    t0 = time.perf_counter()
    trainer.evaluate()
    return time.perf_counter() - t0


def main(argv: list[str]) -> None:
    args = dict(a.split("=", 1) for a in argv)
    out = args.pop("out", HERE)
    o = parse(["train", "dtypes=float32", "tasks=sst2", "loop=false", "threads=2",
               *(f"{k}={v}" for k, v in args.items())])
    torch.set_num_threads(o.threads)
    rows, cells = [], {}
    with tempfile.TemporaryDirectory(prefix="train-compile-") as scratch:
        for method in o.methods:
            for compiled in (False, True):
                C.progress(f"{method} {'compiled' if compiled else 'eager'}: building, first round")
                cell, _ = harness_cell(o, method, "sst2", "float32", "labelled", "cpu",
                                       os.path.join(scratch, f"{method}{int(compiled)}"), compile=compiled)
                t0 = time.perf_counter()
                times, real, _ = cell.step()
                first = time.perf_counter() - t0
                cells[method, compiled] = {"cell": cell, "first_round_s": first, "first_steps_s": times,
                                           "rounds": []}
        for r in range(o.rounds):
            for c in C.rotated(list(cells.values()), r):
                times, real, _ = c["cell"].step()
                c["rounds"].append({"s_per_step": sum(times) / len(times), "tokens_per_s": real / sum(times)})
            C.progress(f"round {r + 1}/{o.rounds}")
        for c in cells.values():
            c["eval_s"] = [timed_eval(c["cell"].trainer), timed_eval(c["cell"].trainer)]
    for method in o.methods:
        e, k = cells[method, False], cells[method, True]
        ratio = [b["tokens_per_s"] / a["tokens_per_s"] for a, b in zip(e["rounds"], k["rounds"])]
        steady_e = statistics.median(x["s_per_step"] for x in e["rounds"])
        steady_k = statistics.median(x["s_per_step"] for x in k["rounds"])
        overhead = k["first_round_s"] - o.steps * steady_k - (e["first_round_s"] - o.steps * steady_e)
        overhead += (k["eval_s"][0] - k["eval_s"][1]) - (e["eval_s"][0] - e["eval_s"][1])
        saved = steady_e - steady_k
        rows.append({"method": method, "eager_first_steps_s": e["first_steps_s"],
                     "compiled_first_steps_s": k["first_steps_s"], "eager_s_per_step": steady_e,
                     "compiled_s_per_step": steady_k, "compiled_over_eager_tokens_per_s": C.summary(ratio),
                     "eager_eval_s": e["eval_s"], "compiled_eval_s": k["eval_s"], "compile_overhead_s": overhead,
                     "break_even_steps": overhead / saved if saved > 0 else None})
    rec = {**C.header(o, "cpu", "float32", []), "rows": rows}
    rec.pop("prompt", None)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "train_compile.json"), "w", encoding="utf-8") as f:
        json.dump(rec, f, indent=1)
    lines = [f"# torch.compile of the training step ({rec['device_name']}, {o.threads} threads, {o.backbone}, "
             f"SST-2, fp32, {o.steps} steps x {o.rounds} interleaved rounds)", "",
             "| method | eager s/step | compiled s/step | compiled ÷ eager tok/s, median [IQR] | first round: eager "
             "steps (s) | first round: compiled steps (s) | dev loss eval, eager 1st / 2nd (s) | compiled 1st / 2nd (s) "
             "| compile overhead (s) | break-even steps |", "|---|---|---|---|---|---|---|---|---|---|"]
    for x in rows:
        s = x["compiled_over_eager_tokens_per_s"]
        even = "never (no faster)" if x["break_even_steps"] is None else f"{x['break_even_steps']:.0f}"
        lines.append(
            f"| {x['method']} | {x['eager_s_per_step']:.2f} | {x['compiled_s_per_step']:.2f} | {s['median']:.3f} "
            f"[{s['q1']:.3f}–{s['q3']:.3f}] | {' '.join(f'{t:.1f}' for t in x['eager_first_steps_s'])} | "
            f"{' '.join(f'{t:.1f}' for t in x['compiled_first_steps_s'])} | "
            f"{x['eager_eval_s'][0]:.1f} / {x['eager_eval_s'][1]:.1f} | "
            f"{x['compiled_eval_s'][0]:.1f} / {x['compiled_eval_s'][1]:.1f} | {x['compile_overhead_s']:.0f} | "
            f"{even} |")
    with open(os.path.join(out, "train_compile.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])
