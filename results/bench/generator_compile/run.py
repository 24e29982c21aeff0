"""Where IAPT's generator time at prefill goes: capture the 30 bank calls of one B=1 prefill (Appendix G's
instruction, SmolLM2-135M, fp32, 2 threads), replay them eagerly, profile five replays, then torch.compile the
generator call and time compiled against eager in 30 interleaved rounds (README.md beside this file).

    .venv/bin/python results/bench/generator_compile/run.py     # from the repository root, on a quiet machine
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import torch
import torch._dynamo
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..")))
from scripts.bench import common as C  # noqa: E402
from scripts.bench.options import parse  # noqa: E402


def replay(fn, calls) -> None:
    with torch.no_grad():
        for layer, x, m in calls:
            fn(layer, x, m)


def timeit(fn, calls, n: int = 40) -> float:
    """Median seconds of one replay of the captured calls over n replays."""
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        replay(fn, calls)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main() -> None:
    torch.set_num_threads(2)
    o = parse(["prefill", "methods=bare,iapt", "threads=2"])
    backbone, tok, _ = C.load(o)
    kw = C.gen_kwargs(tok, 1, 1)
    model = C.build_method("iapt", backbone, o)
    bank = model.generators["default"]
    calls, real = [], bank.forward

    def record(layer_idx, x, mask):
        calls.append((layer_idx, x.clone(), mask))
        return real(layer_idx, x, mask)

    bank.forward = record  # this script's copy of the model only, for one capturing prefill
    ids, mask = C.batch_of([C.instruction(tok, o)], tok.pad_token_id, "cpu")
    with torch.no_grad():
        model.generate(input_ids=ids, attention_mask=mask, **kw)
    bank.forward = real
    print("calls", len(calls), "x", tuple(calls[0][1].shape), "mask", tuple(calls[0][2].shape), calls[0][2].dtype)
    print(bank.generators[0])

    for _ in range(5):
        replay(bank, calls)
    t_eager = timeit(bank, calls)
    print(f"eager: {t_eager * 1e3:.2f} ms per prefill's 30 calls ({t_eager / len(calls) * 1e6:.0f} us/call)")
    full = []
    with torch.no_grad():
        for _ in range(10):
            t0 = time.perf_counter()
            model.generate(input_ids=ids, attention_mask=mask, **kw)
            full.append(time.perf_counter() - t0)
    print(f"whole prefill: {statistics.median(full) * 1e3:.1f} ms")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(5):
            replay(bank, calls)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))

    # torch.compile of each generator call as one graph (one compiled function, the module an argument)
    torch._dynamo.config.cache_size_limit = 64
    torch._dynamo.config.accumulated_cache_size_limit = 512
    compiled = torch.compile(lambda g, x, m, pm, q: g(x, m, pm, q), dynamic=False)

    def call_compiled(layer, x, m):
        pos = bank._pos(layer)
        gen = bank.generators[pos]
        return compiled(gen, x, m, bank._pool_mask(m) if gen.skip_first else m, bank._queries(m).get(pos))

    t0 = time.perf_counter()
    replay(call_compiled, calls)
    print(f"compile (first replay): {time.perf_counter() - t0:.1f} s")
    with torch.no_grad():
        for layer, x, m in calls[:3]:
            a, b = bank(layer, x, m), call_compiled(layer, x, m)
            print("max abs diff", (a - b).abs().max().item(), "scale", a.abs().max().item())
    for _ in range(3):
        replay(call_compiled, calls)
    t_c = timeit(call_compiled, calls)
    print(f"compiled: {t_c * 1e3:.2f} ms per 30 calls ({t_c / len(calls) * 1e6:.0f} us/call); eager {t_eager * 1e3:.2f}")
    print(f"eager again: {timeit(bank, calls) * 1e3:.2f}")

    # interleaved: eager against compiled, 30 rounds of 5 replays each (odd rounds also in the other order)
    ratios, te, tcs = [], [], []
    for r in range(30):
        a, b = timeit(bank, calls, 5), timeit(call_compiled, calls, 5)
        if r % 2:
            b2, a2 = timeit(call_compiled, calls, 5), timeit(bank, calls, 5)
            a, b = (a + a2) / 2, (b + b2) / 2
        te.append(a)
        tcs.append(b)
        ratios.append(b / a)
    q = statistics.quantiles(ratios, n=4)
    print(f"interleaved 30 rounds: eager median {statistics.median(te) * 1e3:.2f} ms, compiled "
          f"{statistics.median(tcs) * 1e3:.2f} ms, compiled/eager median {statistics.median(ratios):.3f} "
          f"[IQR {q[0]:.3f}-{q[2]:.3f}] min {min(ratios):.3f} max {max(ratios):.3f}")


if __name__ == "__main__":
    main()
