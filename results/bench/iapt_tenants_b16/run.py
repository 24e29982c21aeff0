"""Where IAPT's extra prefill time with 16 mixed tenants goes: one prefill (one new token) of Appendix G's
instruction at B = 16 (SmolLM2-135M, fp32, 2 threads), timed in interleaved rounds for the bare backbone, IAPT with
one module for every row (no routing) and IAPT with 16 tenants, row k routed to tenant k (the tenants benchmark's
setting); inside each IAPT prefill the seconds spent in its generator calls (the bank's `forward` for one module,
`GeneratorBank.forward_rows` for the tenants) are summed by a timing wrapper (README.md beside this file).

    .venv/bin/python results/bench/iapt_tenants_b16/run.py     # from the repository root, on a quiet machine
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..")))
from pefts.blocks.generators import GeneratorBank  # noqa: E402
from scripts.bench import common as C  # noqa: E402
from scripts.bench.options import parse  # noqa: E402

B, ROUNDS, WARMUP = 16, 8, 1
spent = [0.0]  # seconds inside generator calls during the current prefill


def timed(fn):
    def wrapper(*a, **k):
        t0 = time.perf_counter()
        out = fn(*a, **k)
        spent[0] += time.perf_counter() - t0
        return out
    return wrapper


def main() -> None:
    torch.set_num_threads(2)
    o = parse(["tenants", "methods=bare,iapt", f"batches={B}", "threads=2"])
    backbone, tok, _ = C.load(o)
    kw = C.gen_kwargs(tok, 1, 1)
    one = C.build_method("iapt", backbone, o)
    one.generators["default"].forward = timed(one.generators["default"].forward)  # this copy only
    models, names = C.tenant_models(["iapt"], backbone, B, o)
    GeneratorBank.forward_rows = staticmethod(timed(GeneratorBank.forward_rows))  # this process only
    ids, mask = C.batch_of([C.instruction(tok, o)] * B, tok.pad_token_id, "cpu")
    cases = {"bare": (backbone, {}), "iapt one module": (one, {}),
             "iapt 16 tenants": (models["iapt"], C.routing(models["iapt"], names["iapt"][:B]))}
    raw = {k: [] for k in cases}
    gen = {k: [] for k in cases}
    with torch.no_grad():
        for r in range(WARMUP + ROUNDS):
            for k in C.rotated(list(cases), r):
                model, route = cases[k]
                spent[0] = 0.0
                t0 = time.perf_counter()
                model.generate(input_ids=ids, attention_mask=mask, **kw, **route)
                if r >= WARMUP:
                    raw[k].append(time.perf_counter() - t0)
                    gen[k].append(spent[0])
            print(f"round {r + 1}/{WARMUP + ROUNDS}", file=sys.stderr, flush=True)
    out = {}
    for k in cases:
        out[k] = {"ttft_s": statistics.median(raw[k]), "generator_s": statistics.median(gen[k]),
                  "x_bare": C.summary([x / b for x, b in zip(raw[k], raw["bare"])]),
                  "raw_s": raw[k], "raw_generator_s": gen[k]}
        print(f"{k:16s} TTFT {out[k]['ttft_s']:.3f} s  x bare {out[k]['x_bare']['median']:.3f} "
              f"[{out[k]['x_bare']['q1']:.3f}-{out[k]['x_bare']['q3']:.3f}]  generators {out[k]['generator_s']:.3f} s")
    with open(os.path.join(os.path.dirname(__file__), "result.json"), "w") as f:
        json.dump({"B": B, "rounds": ROUNDS, "warmup": WARMUP, "cases": out}, f, indent=1)


if __name__ == "__main__":
    main()
