"""Where a method's time to first token goes (`prefill` mode, issue #28): one prefill (generate one token) of
Appendix G's instruction, timed in the same interleaved rounds for four variants of each method:

    bare                  the backbone alone
    bare + n positions    the backbone on the prompt lengthened by the method's n inserted positions (the prompt's
                          tokens 1..n repeated after the first: ordinary tokens, the same sequence length)
    <method> cached       the method with every generator call answered from a cache of its own outputs for that
                          input (computed once, before the rounds): hooks, masks, injection and positions, no generator
    <method>              the method

so, as medians of per-round ratios: positions = (bare + n) / bare, hooks = cached / (bare + n),
generators = method / cached, total = method / bare (the product of the three, round by round).

    python -m scripts.bench prefill methods=bare,iapt,para,idspam rounds=30 threads=2
    python -m scripts.bench prefill methods=bare,idspam batches=16 rounds=5     # B rows of the same prompt

B = `batches` (prefill: 1 unless given; each variant at each B), one module per method (no tenants: the
tenants mode times mixed rows).
"""

from __future__ import annotations

import time

import torch

from scripts.bench import common as C
from scripts.bench.options import Options, device_and_dtype

VARIANTS = ("positions", "cached")  # the two variants besides bare and the method itself


def answer_from_cache(model) -> None:
    """Make `model`'s generator answer every call from a cache keyed by (layer, input shape): the first call per
    key computes the real output, later ones return it (a measuring device for the `cached` variant only: it
    removes the generator's compute and keeps everything around it)."""
    bank = model.generators["default"]
    real, cache = bank.forward, {}

    def cached(layer_idx, x, mask):
        key = (layer_idx, tuple(x.shape))
        if key not in cache:
            cache[key] = real(layer_idx, x, mask)
        return cache[key]

    bank.forward = cached  # an instance attribute: this copy of the model only (built for this purpose)


def lengthened(ids: torch.Tensor, mask: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The left-padded prompt with its tokens 1..n repeated right after its first token: n more positions."""
    T = ids.shape[1]
    first = T - int(mask[0].sum())  # every row is the same prompt here
    ids = torch.cat([ids[:, :first + 1], ids[:, first + 1:first + 1 + n], ids[:, first + 1:]], 1)
    mask = torch.cat([mask[:, :first + 1], mask[:, first + 1:first + 1 + n], mask[:, first + 1:]], 1)
    return ids, mask


def run_prefill(o: Options) -> dict:
    dev, dtype = device_and_dtype(o)
    backbone, tok, _ = C.load(o)
    prompt = C.instruction(tok, o)
    kw = C.gen_kwargs(tok, 1, 1)
    now = C.CLOCKS[o.clock]
    methods = [m for m in o.methods if m != "bare"]
    models = {m: C.build_method(m, backbone, o) for m in methods}
    cached = {m: C.build_method(m, backbone, o) for m in methods if C.is_family(models[m])}
    for model in cached.values():
        answer_from_cache(model)
    n_of = {m: C.inserted_tokens(model) for m, model in models.items()}
    res = C.header(o, dev, dtype, prompt)
    res["methods"] = {m: {"inserted": n_of[m], "cached": m in cached} for m in methods}
    res["results"] = {}
    for B in o.batches:
        ids, mask = C.batch_of([prompt] * B, tok.pad_token_id, dev)
        cases = {"bare": (backbone, ids, mask)}
        for m in methods:
            if n_of[m]:
                cases[f"bare+{n_of[m]}"] = (backbone, *lengthened(ids, mask, n_of[m]))
            if m in cached:
                cases[f"{m} cached"] = (cached[m], ids, mask)
            cases[m] = (models[m], ids, mask)
        names, raw = list(cases), {k: [] for k in cases}
        with torch.no_grad():
            for model, i, mk in cases.values():  # fill the caches: every later call of `cached` is a lookup
                model.generate(input_ids=i, attention_mask=mk, **kw)
            for r in range(o.warmup + o.rounds):
                for k in C.rotated(names, r):
                    model, i, mk = cases[k]
                    if dev == "cuda":
                        torch.cuda.synchronize()
                    t0 = now()
                    model.generate(input_ids=i, attention_mask=mk, **kw)
                    if dev == "cuda":
                        torch.cuda.synchronize()
                    if r >= o.warmup:
                        raw[k].append(now() - t0)
                C.progress(f"prefill B={B}: round {r + 1}/{o.warmup + o.rounds}")
        res["results"][f"B{B}"] = _cells(raw, methods, n_of, cached)
    res["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    return res


def _ratio(raw: dict, a: str, b: str) -> dict:
    return C.summary([x / y for x, y in zip(raw[a], raw[b])])


def _cells(raw: dict, methods: list[str], n_of: dict, cached: dict) -> dict:
    out = {"bare": {"ttft_s": C.summary(raw["bare"])}}
    for m in methods:
        pos = f"bare+{n_of[m]}" if n_of[m] else "bare"
        c = {"ttft_s": C.summary(raw[m]), "total": _ratio(raw, m, "bare")}
        if n_of[m]:
            c["positions"] = _ratio(raw, pos, "bare")
            c["positions_ttft_s"] = C.summary(raw[pos])
        if m in cached:
            c["cached_ttft_s"] = C.summary(raw[f"{m} cached"])
            c["hooks"] = _ratio(raw, f"{m} cached", pos)
            c["generators"] = _ratio(raw, m, f"{m} cached")
        out[m] = c
    return out
