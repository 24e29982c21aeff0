"""Inference-efficiency benchmarks: the papers' Table 4 (iapt.txt Appendix G, parade.txt Appendix F, para.txt
section 4.5), multi-tenant batches, and a request stream served with dynamic batching.

    python -m scripts.bench table4                  # SmolLM2-135M, beams 1 and 3, 100 rounds -> results/bench/table4.{json,md}
    python -m scripts.bench tenants                 # B = 1, 4, 16, 64 rows, one tenant each -> tenants.{json,md}, figures/bench_tenants.png
    python -m scripts.bench stream                  # Poisson stream of requests from N = 1, 16, 256 tenants -> stream.{json,md}
    python -m scripts.bench table4 backbone=tiny quick=true out=/tmp/bench   # seconds (the tests)
    python -m scripts.bench table4 device=cuda      # bf16 on a GPU (dtype=auto); CUDA peak memory
    make table4 | make bench-tenants | make bench-stream

The package: options.py (the command line; every option is listed there), common.py (the shared machinery:
models, tenants, clocks, memory, prompts, writing), one module per benchmark (table4.py, tenants.py,
stream.py: each says what it measures), render.py (the markdown records and the figure), __main__.py (the
entry point: mode -> (run, render, plot)).

Setting (Appendix G): the news-article instruction (common.NEWS_INSTRUCTION), min_new_tokens = max_new_tokens
= new_tokens (EOS cannot stop early), greedy (beam 1) and beam search (beam 3), LoRA not merged (peft). Every
method is built by `pefts.registry.build_peft` from the composed config on a copy of one backbone whose weight
tensors are shared (one resident backbone; each copy has its own module tree, so one method's hooks or LoRA
layers never touch another), its own tensors moved off their initial state by N(0, perturb^2) (rational
coefficients and frozen constants kept): speed does not depend on the values, and outputs then differ from the
bare backbone's.

Noise robustness: one process, methods interleaved: round r runs every method once, in an order rotated by r,
after `warmup` rounds that are not counted. Every figure is reported as the median over rounds and as the median
over rounds of the per-round ratio to the bare backbone (with IQR and min-max), so a background load that drifts
slower than one round cancels. Timings come from a forward hook on the causal LM each method runs (the same
module type for all): time to first token = generate() call to the end of the first (prefill) forward; decode
time per token = the remaining forwards' span / (new_tokens - 1); tokens/s = rows x new_tokens / the whole
generate() call.
"""
