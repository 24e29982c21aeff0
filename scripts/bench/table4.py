"""Table 4 of the papers (iapt.txt Appendix G, parade.txt Appendix F, para.txt section 4.5): one request,
beams 1 and 3, every method on one shared backbone, rounds interleaved; tokens/s, time to first token, decode
time per token and peak memory, beside the papers' numbers (results/paper/*_table4.csv).

    python -m scripts.bench table4                  # SmolLM2-135M, beams 1 and 3, 100 rounds -> results/bench/table4.{json,md}
    python -m scripts.bench table4 backbone=tiny quick=true out=/tmp/bench   # seconds (the tests)
    make table4

Peak memory: `model_mib` (the backbone's tensors plus the method's own) + `generate_peak_mib` (the most memory
generate() holds at once above what was allocated when it started: activations, KV cache, soft prompts), in one
untimed pass per method and beam. On CUDA the latter is torch.cuda.max_memory_allocated() minus the allocation
at the start (and `cuda_max_allocated_mib` is the raw figure); on CPU it is the peak of the running sum of the
allocation and free events torch.profiler records (profile_memory=True): allocator-independent, unlike RSS.
The paper's column (LLaMA-2 7B on a GPU) is the whole process's peak; compare ratios, not MiB.
"""

from __future__ import annotations

import csv
import itertools
import os
import time

from scripts.bench.common import (
    NEWS_INSTRUCTION,
    StepClock,
    batch_of,
    build_method,
    causal_lm,
    encode,
    gen_kwargs,
    generate_peak_bytes,
    header,
    inserted_tokens,
    instruction,
    load,
    nbytes,
    own_tensors,
    progress,
    rotated,
    summary,
    timed_generate,
)
from scripts.bench.options import ROOT, Options, device_and_dtype

PAPER_ROWS = {"lora": "LoRA", "ia3_proj": "(IA) ³", "iapt": "IAPT", "parade": "PARADE", "para": "PARA"}


def paper_table4(paper_dir: str = os.path.join(ROOT, "results", "paper")) -> dict[tuple[str, int], dict]:
    """{(harness method, beam): {"tps": ..., "mib": ..., "paper": ...}} from results/paper/*_table4.csv
    (first paper that has the row: IAPT, then PARADE, then PARA; LoRA's and (IA)³'s rows are the same in all)."""
    names = {}
    with open(os.path.join(paper_dir, "names.csv"), newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["kind"] == "method" and row["harness_name"]:
                names[(row["paper"], row["paper_name"])] = row["harness_name"]
    out: dict[tuple[str, int], dict] = {}
    for paper in ("iapt", "parade", "para"):
        path = os.path.join(paper_dir, f"{paper}_table4.csv")
        if not os.path.exists(path):
            continue
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                method, _, beam = row["row"].rpartition(" / ")
                harness = names.get((paper, method))
                if harness is None or not beam.isdigit():
                    continue
                cell = out.setdefault((harness, int(beam)), {"paper": paper})
                if cell["paper"] != paper:
                    continue
                cell["tps" if row["column"].startswith("Speed") else "mib"] = float(row["value"])
    return out


def run_table4(o: Options) -> dict:
    dev, dtype = device_and_dtype(o)
    backbone, tok, _ = load(o)
    prompt = instruction(tok, o)
    ids, mask = batch_of([prompt], tok.pad_token_id, dev)
    models = {m: build_method(m, backbone, o) for m in o.methods}
    clocks = {m: StepClock(causal_lm(model), dev == "cuda", o.clock) for m, model in models.items()}
    backbone_bytes = nbytes(itertools.chain(backbone.parameters(), backbone.buffers()))
    res = header(o, dev, dtype, prompt)
    res["prompt"]["tokens_seen"] = {m: len(prompt) + inserted_tokens(model) for m, model in models.items()}
    res["prompt"]["full_length"] = {t: len(encode(tok, NEWS_INSTRUCTION, t)) for t in ("plain", "chat")
                                    if t == "plain" or getattr(tok, "chat_template", None)}
    res["methods"] = {m: {"own_bytes": nbytes(own_tensors(model, backbone)) if m != "bare" else 0}
                      for m, model in models.items()}
    res["results"] = {}
    for beams in o.beams:
        kw = gen_kwargs(tok, o.new_tokens, beams)
        raw = {m: [] for m in o.methods}
        for r in range(o.warmup + o.rounds):
            for m in rotated(o.methods, r):
                _, t = timed_generate(models[m], clocks[m], ids, mask, kw)
                if r >= o.warmup:
                    raw[m].append(t)
            progress(f"table4 beam {beams}: round {r + 1}/{o.warmup + o.rounds}")
        res["results"][f"beam{beams}"] = _table4_cells(o, raw, models, kw, ids, mask, backbone_bytes, res)
    for c in clocks.values():
        c.remove()
    res["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    return res


def _table4_cells(o, raw, models, kw, ids, mask, backbone_bytes, res) -> dict:
    cells = {}
    bare = raw["bare"]
    lora = raw.get("lora")
    for m, ts in raw.items():
        c = {
            "tps": summary([t.tps for t in ts]),
            "ttft_s": summary([t.ttft_s for t in ts]),
            "decode_s_per_token": summary([t.decode_s for t in ts]),
            "total_s": summary([t.total_s for t in ts]),
            "ratio_to_bare": {
                "tps": summary([t.tps / b.tps for t, b in zip(ts, bare)]),
                "ttft": summary([t.ttft_s / b.ttft_s for t, b in zip(ts, bare)]),
                "decode": summary([t.decode_s / b.decode_s for t, b in zip(ts, bare)]),
            },
            "raw": {"total_s": [t.total_s for t in ts], "ttft_s": [t.ttft_s for t in ts],
                    "decode_s": [t.decode_s for t in ts]},
        }
        if lora is not None:
            c["tps_ratio_to_lora"] = summary([t.tps / b.tps for t, b in zip(ts, lora)])
        if o.memory:
            gen_peak, cuda_peak = generate_peak_bytes(models[m], ids, mask, kw)
            model_b = backbone_bytes + res["methods"][m]["own_bytes"]
            c["memory"] = {"model_mib": model_b / 2**20, "generate_peak_mib": gen_peak / 2**20,
                           "peak_mib": (model_b + gen_peak) / 2**20,
                           "cuda_max_allocated_mib": None if cuda_peak is None else cuda_peak / 2**20}
        cells[m] = c
    return cells
