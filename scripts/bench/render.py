"""The benchmarks' records rendered: a markdown table per mode (beside the papers' numbers for Table 4) and the
mixed-tenant figure. Called by __main__.py after each run:

    python -m scripts.bench table4|tenants|stream key=value ...   # results/bench/<mode>.md, results/figures/bench_tenants.png
"""

from __future__ import annotations

import math
import os

from scripts.bench.table4 import paper_table4


def _title(res: dict, what: str) -> str:
    """A rendered record's heading: backbone, device, dtype, threads, clock, processor and the commit measured
    (records of different machines or commits then say so in their first line)."""
    cpu = f"; {res['device_name']}" if res.get("device_name") else ""
    prov = res.get("provenance") or {}
    at = (f"; commit {prov['git_commit'][:7]}{' + local changes' if prov.get('git_dirty') else ''}"
          if prov.get("git_commit") else "")
    return (f"# {what}: {res['backbone']} on {res['device']} ({res['dtype']}, {res['threads']} threads, "
            f"{res['options']['clock']} clock{cpu}{at})")


def _f(x, fmt="{:.3g}") -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else fmt.format(x)


def _ratio(s: dict) -> str:
    if not s or s.get("median") is None:
        return "–"
    return f"{s['median']:.3f} [{s['q1']:.3f}–{s['q3']:.3f}] ({s['min']:.2f}–{s['max']:.2f})"


def render_table4(res: dict) -> str:
    paper = paper_table4()
    methods = list(res["methods"])
    seen = res["prompt"]["tokens_seen"]
    lens = ", ".join(f"{m} {n}" for m, n in seen.items() if n != res["prompt"]["tokens"])
    o = res["options"]
    mem_note = ("CUDA max allocated above the start" if res["device"] == "cuda"
                else "peak of torch.profiler's allocation events")
    lines = [
        _title(res, "Table 4: inference efficiency"),
        "",
        f"Appendix G's news instruction: {res['prompt']['tokens']} tokens ({o['template']}"
        f"{', cut to prompt_tokens' if o['prompt_tokens'] else ''}; in full under this tokenizer: "
        f"{', '.join(f'{k} {v}' for k, v in res['prompt']['full_length'].items())}; paper: 274 LLaMA-2 tokens; "
        "as the backbone sees "
        f"it: {lens or 'the same for all'}); {o['new_tokens']} new tokens forced (min = max); LoRA not merged; "
        f"{o['rounds']} rounds, methods interleaved in rotated order, {o['warmup']} warm-up rounds excluded. "
        "Values: median over rounds; `× bare`: median of the per-round ratio to the bare backbone "
        "[IQR] (min–max). Load average at start: "
        f"{', '.join(f'{x:.2f}' for x in res['load_average'] or [])}.",
        "",
        "| method | beam | tok/s | tok/s × bare | TTFT ms | TTFT × bare | decode ms/tok | decode × bare | "
        "peak MiB (model + generate) | tok/s × LoRA | paper tok/s | paper × LoRA | paper MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    daggers = False
    for key, cells in res["results"].items():
        beam = int(key[4:])
        p_lora = paper.get(("lora", beam), {}).get("tps")
        for m in methods:
            c = cells[m]
            pm = m
            if m == "ia3" and ("ia3", beam) not in paper:
                pm, daggers = "ia3_proj", True
            pc = paper.get((pm, beam), {})
            mem = c.get("memory")
            mem_s = (f"{mem['peak_mib']:.0f} ({mem['model_mib']:.0f} + {mem['generate_peak_mib']:.1f})"
                     if mem else "–")
            ptps = pc.get("tps")
            lines.append("| " + " | ".join([
                m + ("†" if pm != m else ""), str(beam), _f(c["tps"]["median"], "{:.2f}"),
                _ratio(c["ratio_to_bare"]["tps"]),
                _f(None if c["ttft_s"]["median"] is None else c["ttft_s"]["median"] * 1e3, "{:.1f}"),
                _ratio(c["ratio_to_bare"]["ttft"]),
                _f(None if c["decode_s_per_token"]["median"] is None else c["decode_s_per_token"]["median"] * 1e3,
                   "{:.2f}"),
                _ratio(c["ratio_to_bare"]["decode"]), mem_s,
                _f((c.get("tps_ratio_to_lora") or {}).get("median"), "{:.3f}"),
                _f(ptps, "{:.1f}"), _f(ptps / p_lora if ptps and p_lora else None, "{:.3f}"),
                _f(pc.get("mib"), "{:.0f}"),
            ]) + " |")
    lines += ["", f"Peak memory: the backbone's and the method's tensors + the most generate() holds at once above "
              f"its start ({mem_note}). Paper columns: LLaMA-2 7B on a GPU (iapt.txt, parade.txt, para.txt Table 4; "
              "results/paper/*_table4.csv); the papers report no bare backbone, so compare `× LoRA` columns."]
    if daggers:
        lines.append("† the papers' (IA)³ row is their projected variant (method=ia3_proj, results/paper/names.csv); "
                     "this row is peft's (IA)³ (method=ia3).")
    return "\n".join(lines) + "\n"


def render_tenants(res: dict) -> str:
    o = res["options"]
    lines = [_title(res, "Mixed-tenant batches"),
             "", f"B rows of Appendix G's instruction ({res['prompt']['tokens']} tokens), row k from tenant k (its own "
             f"module), {o['new_tokens']} new tokens forced; input-aware methods via `tenant_ids`, LoRA via peft "
             f"`adapter_names`; {o['rounds']} interleaved rounds ({o['warmup']} warm-up). `× bare`: median per-round "
             "ratio of tokens/s to the bare backbone at the same B [IQR] (min–max)." + _sittings(res), "",
             "| beam | B | method | tok/s | × bare | × LoRA (mixed) | TTFT ms | tenant module |",
             "|---|---|---|---|---|---|---|---|"]
    for key, cells in res["results"].items():
        beam, B = key.split("/")
        for m, c in cells.items():
            lines.append(f"| {beam[4:]} | {B[1:]} | {m} | {_f(c['tps']['median'], '{:.2f}')} | "
                         f"{_ratio(c['ratio_to_bare'])} | {_f((c.get('ratio_to_lora') or {}).get('median'), '{:.3f}')} | "
                         f"{_f(c['ttft_s']['median'] * 1e3 if c['ttft_s']['median'] else None, '{:.1f}')} | "
                         f"{_bytes(res['methods'][m]['tenant_bytes'])} |")
    return "\n".join(lines) + "\n"


def plot_tenants(res: dict, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6))
    for beam in res["options"]["beams"] or [1]:
        keys = [k for k in res["results"] if k.startswith(f"beam{beam}/")]
        Bs = [int(k.split("/B")[1]) for k in keys]
        for m in res["methods"]:
            tps = [res["results"][k][m]["tps"]["median"] for k in keys]
            ratio = [res["results"][k][m]["ratio_to_bare"]["median"] for k in keys]
            label = m + (f" (beam {beam})" if len(res["options"]["beams"]) > 1 else "")
            ax1.plot(Bs, tps, "o-", label=label, lw=1.2, ms=3)
            ax2.plot(Bs, ratio, "o-", label=label, lw=1.2, ms=3)
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch B (one tenant per row)")
    ax1.set_ylabel("tokens/s (median)")
    ax2.set_ylabel("tokens/s ÷ bare backbone (median per round)")
    ax2.axhline(1.0, color="0.6", lw=0.8)
    ax1.legend(fontsize=7)
    fig.suptitle(f"Mixed-tenant throughput, {res['backbone']} on {res['device']} ({res['dtype']})", fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, path)
    plt.close(fig)
    return path


def _bytes(n: int) -> str:
    if not n:
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _sittings(res: dict) -> str:
    """' Measured in 2 sittings: ...' for a stream or tenant sweep continued after a stop (each tenant count, or
    each (beam, B) block, within one sitting)."""
    what = "the same stream, each tenant count" if res["mode"] == "stream" else "each beam and B"
    # records before the shared Sittings helper (results/bench/stream.json) list a stream's tenant counts as "tenants"
    sit = [(x["started"], x.get("blocks") or [f"N{n}" for n in x.get("tenants", [])]) for x in res.get("sittings") or []]
    sit = [(started, "N = " + ", ".join(b[1:] for b in blocks) if res["mode"] == "stream" else ", ".join(blocks))
           for started, blocks in sit if blocks]
    if len(sit) < 2:
        return ""
    return f" Measured in {len(sit)} sittings ({what} within one): " + "; ".join(
        f"{parts} from {started}" for started, parts in sit) + "."


def render_stream(res: dict) -> str:
    o, s = res["options"], res["stream"]
    lines = [_title(res, "Request stream"), "",
             f"{s['requests']} requests per run, Poisson arrivals at {s['rate_per_s']:.3g}/s ({o['load']} × the bare "
             f"backbone's single-request rate), prompts of 16–{res['prompt']['tokens']} tokens, {o['new_tokens']} new "
             f"tokens forced, FIFO dynamic batching up to {s['max_batch']} mixed-tenant rows (virtual clock, measured "
             f"service times); median of {o['repeats']} interleaved repeats. N = 1: one module, plain path."
             + _sittings(res), "",
             "| N tenants | method | throughput tok/s | × bare | × LoRA | p50 latency s | p95 latency s | mean batch | "
             "memory per tenant | all tenants |", "|---|---|---|---|---|---|---|---|---|---|"]
    for key, cells in res["results"].items():
        for m, c in cells.items():
            lines.append(f"| {key[1:]} | {m} | {_f(c['throughput_tps']['median'], '{:.2f}')} | "
                         f"{_ratio(c['ratio_to_bare'])} | {_f((c.get('ratio_to_lora') or {}).get('median'), '{:.3f}')} | "
                         f"{_f(c['p50_s']['median'], '{:.2f}')} | {_f(c['p95_s']['median'], '{:.2f}')} | "
                         f"{_f(c['mean_batch']['median'], '{:.1f}')} | {_bytes(c['tenant_bytes'])} | "
                         f"{_bytes(c['tenants_bytes_total'])} |")
    return "\n".join(lines) + "\n"


def render_train(res: dict) -> str:
    """The train mode's record: one row per (task, dtype, loss positions, method), the independent loop last in
    each block. `loss at`: runner.loss_positions (records made before it existed computed all columns)."""
    o = res["options"]
    peak = ", ".join(f"{d} {v / 1e9:.0f} GFLOP/s" for d, v in res["peak_flops"].items())
    lines = [_title(res, "Training throughput"), "",
             f"{o['rounds']} rounds after {o['warmup']} warm-up, {o['steps']} optimizer steps per cell and round, "
             f"cells interleaved (order rotated per round); medians over rounds [IQR] (min–max). Matmul peak "
             f"({2048}^3, same threads): {peak}. MFU = 6 (N_backbone + N_trainable) x real tokens / time / peak; "
             "exec = counted FLOPs of a step (flop_counter: padding and the method's modules included) / time / "
             "peak. `vs loop`: tokens/s over the independent minimal LoRA loop's in the same round.", "",
             "| task | dtype | loss at | method | real tokens/s | s/step | real tokens/step | padding | MFU | exec | "
             "GFLOP/step | vs loop |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in res["cells"]:
        t, s = c["tokens_per_s"], c["s_per_step"]
        util = c.get("exec_util") or {}
        lines.append(
            f"| {c['task']} | {c['dtype']} | {c.get('loss_positions', 'all')} | {c['method']} | {_f(t['median'], '{:.0f}')} [{_f(t['q1'], '{:.0f}')}–"
            f"{_f(t['q3'], '{:.0f}')}] | {_f(s['median'], '{:.3f}')} | {c['real_tokens_per_step']:.0f} | "
            f"{100 * c['padding_share']:.0f}% | {_f(100 * c['mfu']['median'] if c['mfu']['median'] else None, '{:.1f}%')} | "
            f"{_f(100 * util['median'] if util.get('median') else None, '{:.1f}%')} | "
            f"{_f(c['flops_per_step'] / 1e9 if c['flops_per_step'] else None, '{:.0f}')} | "
            f"{_ratio(c.get('vs_loop')) if c['method'] != 'loop' else 'reference'} |")
    return "\n".join(lines) + "\n"


def render_prefill(res: dict) -> str:
    o = res["options"]
    lines = [_title(res, "Where the time to first token goes"),
             "", f"Appendix G's instruction ({res['prompt']['tokens']} tokens), B rows of it, one new token; "
             f"{o['rounds']} interleaved rounds ({o['warmup']} warm-up). Variants: bare; bare + n positions (the prompt "
             "lengthened by the method's n inserted positions, as ordinary tokens); the method with its generator "
             "calls answered from a cache of their own outputs (hooks, masks, injection, positions: no generator); "
             "the method. Ratios: median of per-round ratios [IQR] (min–max): positions = (bare + n) / bare, hooks = "
             "cached / (bare + n), generators = method / cached, total = method / bare.", "",
             "| B | method | TTFT ms | total × bare | positions | hooks | generators |",
             "|---|---|---|---|---|---|---|"]
    for key, cells in res["results"].items():
        for m, c in cells.items():
            ms = c["ttft_s"]["median"]
            lines.append(f"| {key[1:]} | {m} | {_f(ms * 1e3 if ms else None, '{:.1f}')} | "
                         f"{_ratio(c.get('total')) if m != 'bare' else '1'} | {_ratio(c.get('positions'))} | "
                         f"{_ratio(c.get('hooks'))} | {_ratio(c.get('generators'))} |")
    return "\n".join(lines) + "\n"
