"""Mixed-tenant batches: B rows, row k from tenant k with its own module, against the bare backbone at the
same B; tokens/s and its per-round ratio to the bare backbone and to LoRA, and one tenant's module bytes.

    python -m scripts.bench tenants                 # B = 1, 4, 16, 64 rows, one tenant each -> tenants.{json,md}, figures/bench_tenants.png
    make bench-tenants

Multi-tenant (`tenants`): B rows, row k from tenant k with its own module: the input-aware methods through
`FamilyModel.add_tenant` + `generate(tenant_ids=...)` (tenant k = the perturbed default, perturbed again with
seed k), LoRA through peft's mixed-adapter batches (one adapter per tenant by `add_adapter`, `generate(...,
adapter_names=...)`) and, row `lora_bgmv`, the same adapters applied by gather + batched matmuls
(scripts/bench/bgmv.py, the way Punica and S-LoRA batch tenants), against the bare backbone at the same B.

A sweep at B = 64 costs about 10 minutes a round on a 2-core CPU, so it runs in sittings like the stream: after
each (beam, B) block the record so far is written to <out>/<stem>.partial.json, and a later run with the same
options, commit and machine measures only the blocks still missing (resume=false starts again); the record lists
its `sittings`.
"""

from __future__ import annotations

from scripts.bench import common as C
from scripts.bench.options import Options, device_and_dtype


def run_tenants(o: Options) -> dict:
    dev, dtype = device_and_dtype(o)
    backbone, tok, _ = C.load(o)
    prompt = C.instruction(tok, o)
    res = C.header(o, dev, dtype, prompt)
    sit = C.Sittings(o, dev, res, carry=("methods",))  # tenant bytes, for a sweep with nothing left to build
    keys = [f"beam{b}/B{B}" for b in o.beams for B in o.batches]
    if all(sit.done(k) for k in keys):  # a sweep stopped after its last block: nothing to build
        return sit.finish(keys)
    n_tenants = max(o.batches)
    models, names = C.tenant_models(o.methods, backbone, n_tenants, o)
    clocks = {m: C.StepClock(C.causal_lm(model), dev == "cuda", o.clock) for m, model in models.items()}
    res["methods"] = {m: {"tenant_bytes": C.tenant_bytes(models[m]), "tenants": n_tenants if m != "bare" else 0}
                      for m in o.methods}
    for beams in o.beams:
        kw = C.gen_kwargs(tok, o.new_tokens, beams)
        for B in o.batches:
            if sit.done(f"beam{beams}/B{B}"):
                continue
            ids, mask = C.batch_of([prompt] * B, tok.pad_token_id, dev)
            raw = {m: [] for m in o.methods}
            for r in range(o.warmup + o.rounds):
                for m in C.rotated(o.methods, r):
                    route = C.routing(models[m], None if names[m] is None else names[m][:B])
                    _, t = C.timed_generate(models[m], clocks[m], ids, mask, kw, route)
                    if r >= o.warmup:
                        raw[m].append(t)
                C.progress(f"tenants beam {beams} B={B}: round {r + 1}/{o.warmup + o.rounds}")
            cells = {}
            for m, ts in raw.items():
                cells[m] = {"tps": C.summary([t.tps for t in ts]),
                            "ttft_s": C.summary([t.ttft_s for t in ts]),
                            "decode_s_per_token": C.summary([t.decode_s for t in ts]),
                            "ratio_to_bare": C.summary([t.tps / b.tps for t, b in zip(ts, raw["bare"])]),
                            "raw_total_s": [t.total_s for t in ts]}
                if "lora" in raw:
                    cells[m]["ratio_to_lora"] = C.summary([t.tps / b.tps for t, b in zip(ts, raw["lora"])])
            sit.add(f"beam{beams}/B{B}", cells)
    for c in clocks.values():
        c.remove()
    return sit.finish(keys)
