"""A request stream: Poisson arrivals from N tenants served with dynamic batching; throughput, p50/p95 latency
and the bytes of the tenants' modules.

    python -m scripts.bench stream                  # Poisson stream of requests from N = 1, 16, 256 tenants -> stream.{json,md}
    make bench-stream

Stream (`stream`): `requests` requests from N tenants (uniform) with prompts of varied length (prefixes of the
instruction, 16 tokens to its full length), arriving as a fixed-seed Poisson process; a scheduler takes up to
max_batch arrived requests (FIFO) into one mixed-tenant, left-padded batch. Service times are measured; the
clock is virtual (it jumps to the next arrival when idle, so no time is spent sleeping). Reported: throughput
(new tokens / (last completion - first arrival)), p50/p95 latency (completion - arrival) and the bytes of one
tenant's module tensors. With N = 1 every method serves one module by its plain path (no tenant routing).

A full stream takes hours on a CPU, so it can run in sittings: after each tenant count the record so far is
written to <out>/<stem>.partial.json; a later run with the same options, commit and machine continues at the
next tenant count with the same arrival rate (so the same stream), and the record lists its `sittings`
(resume=false: start again). Every tenant count's methods are measured in one sitting, interleaved.
"""

from __future__ import annotations

import gc
import random
import statistics
from dataclasses import dataclass

from scripts.bench.common import (
    Sittings,
    StepClock,
    batch_of,
    causal_lm,
    gen_kwargs,
    header,
    instruction,
    load,
    progress,
    rotated,
    routing,
    summary,
    tenant_bytes,
    tenant_models,
    timed_generate,
)
from scripts.bench.options import Options, device_and_dtype


@dataclass
class Request:
    arrival: float
    tenant: int
    prompt: list[int]


def make_stream(prompt: list[int], n_requests: int, n_tenants: int, rate: float, seed: int) -> list[Request]:
    """Fixed-seed Poisson arrivals (exponential gaps, mean 1/rate), tenants uniform in [0, N), prompts the
    instruction's first L tokens, L uniform in [min(16, len), len]."""
    rng = random.Random(seed)
    t, out = 0.0, []
    lo = min(16, len(prompt))
    for _ in range(n_requests):
        out.append(Request(t, rng.randrange(n_tenants), prompt[: rng.randint(lo, len(prompt))]))
        t += rng.expovariate(rate)
    return out


def serve(model, clock, stream: list[Request], names: list[str] | None, tok, kw: dict, max_batch: int, dev) -> dict:
    """Serve `stream` with a FIFO dynamic batcher on a virtual clock (measured service times)."""
    now, i, queue, lat, batches = 0.0, 0, [], [], []
    while i < len(stream) or queue:
        if not queue and stream[i].arrival > now:
            now = stream[i].arrival  # idle: jump to the next arrival
        while i < len(stream) and stream[i].arrival <= now:
            queue.append(stream[i])
            i += 1
        batch, queue = queue[:max_batch], queue[max_batch:]
        ids, mask = batch_of([r.prompt for r in batch], tok.pad_token_id, dev)
        route = routing(model, None if names is None else [names[r.tenant] for r in batch])
        _, t = timed_generate(model, clock, ids, mask, kw, route)
        now += t.total_s
        lat += [now - r.arrival for r in batch]
        batches.append(len(batch))
    span = now - stream[0].arrival
    q = statistics.quantiles(lat, n=20, method="inclusive")
    return {"throughput_tps": len(stream) * kw["max_new_tokens"] / span, "p50_s": statistics.median(lat),
            "p95_s": q[18], "span_s": span, "batches": len(batches), "mean_batch": statistics.mean(batches)}


def run_stream(o: Options) -> dict:
    dev, dtype = device_and_dtype(o)
    backbone, tok, _ = load(o)
    prompt = instruction(tok, o)
    kw = gen_kwargs(tok, o.new_tokens, o.beams[0])
    res = header(o, dev, dtype, prompt)
    sit = Sittings(o, dev, res, carry=("stream", "methods"))  # the same arrival rate, so the same stream
    if not sit.resumed:
        res["methods"] = {}
        bare_clock = StepClock(causal_lm(backbone), dev == "cuda", o.clock)
        mid = prompt[: (min(16, len(prompt)) + len(prompt)) // 2]
        ids, mask = batch_of([mid], tok.pad_token_id, dev)
        one = []
        for _ in range(max(3, o.warmup + 2)):
            one.append(timed_generate(backbone, bare_clock, ids, mask, kw)[1].total_s)
        bare_clock.remove()
        rate = o.load / statistics.median(one[1:])  # requests/s: `load` x what the bare backbone serves one at a time
        res["stream"] = {"rate_per_s": rate, "bare_single_request_s": statistics.median(one[1:]),
                         "requests": o.requests, "max_batch": o.max_batch}
    rate = res["stream"]["rate_per_s"]
    for N in o.tenants:
        if sit.done(f"N{N}"):
            continue
        models, names = tenant_models(o.methods, backbone, N, o, routed=False)
        for m in o.methods:
            res["methods"].setdefault(m, {"tenant_bytes": tenant_bytes(models[m])})
        clocks = {m: StepClock(causal_lm(model), dev == "cuda", o.clock) for m, model in models.items()}
        stream = make_stream(prompt, o.requests, N, rate, o.seed)
        raw = {m: [] for m in o.methods}
        for r in range(o.repeats + (1 if o.warmup else 0)):
            for m in rotated(o.methods, r):
                out = serve(models[m], clocks[m], stream, names[m], tok, kw, o.max_batch, dev)
                if r >= (1 if o.warmup else 0):
                    raw[m].append(out)
            progress(f"stream N={N}: repeat {r + 1}/{o.repeats + (1 if o.warmup else 0)}")
        cells = {}
        for m, outs in raw.items():
            cells[m] = {k: summary([x[k] for x in outs]) for k in ("throughput_tps", "p50_s", "p95_s", "mean_batch")}
            cells[m]["ratio_to_bare"] = summary([x["throughput_tps"] / b["throughput_tps"]
                                                 for x, b in zip(outs, raw["bare"])])
            if "lora" in raw:
                cells[m]["ratio_to_lora"] = summary([x["throughput_tps"] / b["throughput_tps"]
                                                     for x, b in zip(outs, raw["lora"])])
            cells[m]["tenant_bytes"] = tenant_bytes(models[m])
            cells[m]["tenants_bytes_total"] = (tenant_bytes(models[m]) * N) if m != "bare" else 0
        sit.add(f"N{N}", cells)
        for c in clocks.values():
            c.remove()
        del models, clocks
        gc.collect()
    return sit.finish([f"N{N}" for N in o.tenants])
