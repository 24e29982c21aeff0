"""The benchmarks' shared machinery: the backbone and every method on a weight-sharing copy of it, per-tenant
modules and their routing, the step clock and timed generate(), generate()'s peak memory, summaries, the
prompt, the record's header and writing. Used by table4.py, tenants.py and stream.py; run one of those:

    python -m scripts.bench table4|tenants|stream key=value ...
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass

import torch

from core.errors import UserError
from scripts.bench.options import Options, device_and_dtype, stem

# iapt.txt Appendix G (parade.txt Appendix F): the instruction of the efficiency analysis, verbatim.
NEWS_INSTRUCTION = (
    "Generate a blog post of 500 words or less that discusses the following news article:\n\n"
    "The Department of Child Protection (DCP) must pay compensation and medical expenses to a youth worker who "
    "developed pericarditis after getting a Covid booster under a workplace vaccination directive, the South "
    "Australian Employment Tribunal has ruled.\n\n"
    "In a decision handed down on 15 January 2024, the Tribunal determined that Daniel Shepherd\u2019s employment "
    "was \u201ca significant contributing cause\u201d to his injury, which has since rendered him incapable of "
    "performing his role at work.\n\n"
    "Shepherd got a Covid booster in February 2022 as a requirement for his ongoing employment with the DCP. The "
    "DCP admitted that Shepherd\u2019s pericarditis had been caused by the booster, but denied responsibility for "
    "the injury, arguing that it did not arise from Shepherd\u2019s employment, but from a lawful State Government "
    "Public Health Order (PHO), issued under the Emergency Management Act 2004 (EMA)."
)


# ----------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------
def load(o: Options):
    """(backbone model on the device, tokenizer, backbone config); seeded, so `tiny` is reproducible."""
    from core.config import compose
    from runners.backbones import load_backbone

    dev, dtype = device_and_dtype(o)
    b = compose([f"backbone={o.backbone}", "logger=none"]).backbone
    torch.manual_seed(o.seed)
    model, tok = load_backbone(b, cache_dir=o.cache_dir, dtype=dtype)
    model.to(dev).eval()
    return model, tok, b


def shared_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of the module tree that shares every parameter and buffer with `model`."""
    memo = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    return copy.deepcopy(model, memo)


def own_tensors(model: torch.nn.Module, backbone: torch.nn.Module) -> list[torch.Tensor]:
    shared = {id(t) for t in itertools.chain(backbone.parameters(), backbone.buffers())}
    seen, out = set(), []
    for t in itertools.chain(model.parameters(), model.buffers()):
        if id(t) not in shared and id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _noise_like(t: torch.Tensor, scale: float, g: torch.Generator) -> torch.Tensor:
    return (torch.randn(t.shape, generator=g, dtype=torch.float32) * scale).to(t.device, t.dtype)


def perturb_(model: torch.nn.Module, scale: float, seed: int) -> None:
    """Add N(0, scale^2) to the method's trainable tensors, in place (architecture parameters such as IAPT's
    rational coefficients and frozen constants keep their values)."""
    if scale <= 0:
        return
    arch = {id(p) for p in model.architecture_parameters()} if is_family(model) else set()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if p.requires_grad and id(p) not in arch and p.is_floating_point():
                p.add_(_noise_like(p, scale, g))


def is_family(model) -> bool:
    from pefts.family import FamilyModel

    return isinstance(model, FamilyModel)


def is_peft_lora(model) -> bool:
    try:
        import peft
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, peft.PeftModel) and all(
        getattr(c, "peft_type", None) == peft.PeftType.LORA for c in model.peft_config.values())


def build_method(name: str, backbone: torch.nn.Module, o: Options, *, share: bool = True) -> torch.nn.Module:
    """The method `name` on (a weight-sharing copy of) `backbone`, built from the composed config, eval mode,
    on the backbone's device, perturbed (seeded: the same call gives the same weights)."""
    from core.config import compose
    from pefts.registry import build_peft

    if name == "bare":
        return backbone
    cfg = compose([f"backbone={o.backbone}", f"method={name}", "logger=none"]).method
    torch.manual_seed(o.seed)
    model = build_peft(shared_copy(backbone) if share else backbone, cfg).model
    model.to(next(backbone.parameters()).device).eval()
    perturb_(model, o.perturb, o.seed + 1)
    return model


def is_bgmv(model) -> bool:
    from scripts.bench.bgmv import BgmvLora

    return isinstance(model, BgmvLora)


def causal_lm(model) -> torch.nn.Module:
    """The HF causal LM module every step of `generate` runs once (where the step clock hooks)."""
    if is_family(model) or is_bgmv(model):
        return model.backbone
    if hasattr(model, "get_base_model"):
        return model.get_base_model()
    return model


def inserted_tokens(model) -> int:
    """Positions a method adds to every prompt (soft prompts): the backbone sees prompt + this many."""
    if is_family(model) and model.kind == "soft_prompt":
        return model.n_tokens
    return 0


# -- tenants ---------------------------------------------------------------------------------------------
def tenant_names(n: int) -> list[str]:
    return ["default", *(f"t{k}" for k in range(1, n))]


def add_tenants(model, n: int, o: Options) -> list[str]:
    """Give `model` n tenants in all ("default" plus n - 1 more, each distinct): family methods through
    `add_tenant` (the default generator's state, perturbed with seed k), peft LoRA through `add_adapter`
    (the default adapter's config, A and B perturbed with seed k). Returns the tenant names."""
    names = tenant_names(n)
    if is_family(model):
        gen = model.generators["default"]
        arch = {id(p) for p in model.architecture_parameters()}
        for k, name in enumerate(names[1:], start=1):
            g = torch.Generator().manual_seed(o.seed * 100_003 + k)
            state = {}
            for pname, p in gen.named_parameters():
                v = p.detach()
                if p.requires_grad and id(p) not in arch and p.is_floating_point():
                    v = v + _noise_like(v, max(o.perturb, 1e-3), g)
                state[f"generators.default.{pname}"] = v  # peft_state_dict form (a bank's own keys
                # start with 'generators.' too, which add_tenant would read as tenant names)
            model.add_tenant(name, state)
    elif is_peft_lora(model):
        cfg = model.peft_config["default"]
        for k, name in enumerate(names[1:], start=1):
            model.add_adapter(name, copy.deepcopy(cfg))
            g = torch.Generator().manual_seed(o.seed * 100_003 + k)
            with torch.no_grad():
                for pname, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
                    if f".{name}." in pname and ("lora_A" in pname or "lora_B" in pname):
                        p.add_(_noise_like(p, max(o.perturb, 1e-3), g))
                        p.requires_grad_(False)
        model.eval()
    else:
        raise UserError(f"{type(model).__name__} has no per-tenant modules (tenants/stream need LoRA or the family)")
    return names


BGMV = "lora_bgmv"  # LoRA's tenants by gather + batched matmuls (scripts/bench/bgmv.py)


def tenant_models(methods: list[str], backbone, n: int, o: Options, routed: bool = True) -> tuple[dict, dict]:
    """({method: model}, {method: tenant names, or None}) of a tenant benchmark: every method with n tenants
    (`add_tenants`; the bare backbone none; with routed=False and n = 1 no routing at all). `lora_bgmv` serves
    the lora row's own tenant adapters (the same weights; built privately when lora is not benchmarked)."""
    from scripts.bench.bgmv import BgmvLora

    models, names = {}, {}
    for m in methods:
        if m != BGMV:
            models[m] = build_method(m, backbone, o)
            names[m] = add_tenants(models[m], n, o) if m != "bare" and (routed or n > 1) else None
    if BGMV in methods:
        lora, lora_names = models.get("lora"), names.get("lora")
        if lora is None or lora_names is None:
            lora = build_method("lora", backbone, o)
            lora_names = add_tenants(lora, n, o)
        models[BGMV] = BgmvLora(lora, lora_names, shared_copy(lora.get_base_model())).eval()
        names[BGMV] = lora_names
    return {m: models[m] for m in methods}, {m: names[m] for m in methods}


def tenant_bytes(model, name: str = "default") -> int:
    """Bytes of one tenant's module tensors (its generator; its LoRA adapter's A and B)."""
    if is_bgmv(model):
        return model.tenant_bytes
    if is_family(model):
        gen = model.generators[name]
        return nbytes({id(t): t for t in itertools.chain(gen.parameters(), gen.buffers())}.values())
    if is_peft_lora(model):
        return nbytes([p for n, p in model.named_parameters() if f".{name}." in n and "lora_" in n])
    return 0


def routing(model, names: list[str] | None) -> dict:
    """generate() kwargs that route row k to tenant names[k] (nothing for the bare backbone or names=None)."""
    if names is None:
        return {}
    if is_family(model) or is_bgmv(model):
        return {"tenant_ids": list(names)}
    if is_peft_lora(model):
        return {"adapter_names": list(names)}
    return {}


# ----------------------------------------------------------------------------------------------------------
# Timing and memory
# ----------------------------------------------------------------------------------------------------------
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


class StepClock:
    """Forward hook on a causal LM: the time at the end of every forward (synchronised on CUDA). `clock`:
    "wall" (time.perf_counter, what a user waits) or "cpu" (time.process_time: the CPU seconds of this
    process's threads, which a background load on other cores does not inflate; CPU only)."""

    def __init__(self, lm: torch.nn.Module, cuda: bool, clock: str = "wall"):
        self.cuda, self.times, self.now = cuda, [], CLOCKS[clock]
        self.handle = lm.register_forward_hook(self._hook)

    def _hook(self, module, args, out):
        if self.cuda:
            torch.cuda.synchronize()
        self.times.append(self.now())

    def remove(self) -> None:
        self.handle.remove()


@dataclass
class Timing:
    total_s: float
    ttft_s: float
    decode_s: float  # per new token after the first (nan when only one is generated)
    tokens: int  # rows x new tokens

    @property
    def tps(self) -> float:
        return self.tokens / self.total_s


def gen_kwargs(tok, new_tokens: int, beams: int) -> dict:
    """Appendix G: exactly `new_tokens` new tokens (min = max, EOS cannot stop early), greedy or beam search."""
    return dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, num_beams=beams,
                num_return_sequences=1, pad_token_id=tok.pad_token_id, use_cache=True, temperature=None,
                top_p=None, top_k=None)


def timed_generate(model, clock: StepClock, ids, mask, kw: dict, route: dict | None = None):
    """(new tokens [B, new_tokens], Timing) of one generate() call."""
    cuda = ids.device.type == "cuda"
    clock.times.clear()
    if cuda:
        torch.cuda.synchronize()
    t0 = clock.now()
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, **kw, **(route or {}))
    if cuda:
        torch.cuda.synchronize()
    t1 = clock.now()
    steps = list(clock.times)
    n = kw["max_new_tokens"]
    assert len(steps) == n, f"expected {n} forwards (one per new token), the clock saw {len(steps)}"
    decode = (steps[-1] - steps[0]) / (n - 1) if n > 1 else math.nan
    return out[:, ids.shape[1]:], Timing(t1 - t0, steps[0] - t0, decode, ids.shape[0] * n)


def generate_peak_bytes(model, ids, mask, kw: dict, route: dict | None = None) -> tuple[int, int | None]:
    """(peak bytes generate() holds above its start, CUDA max allocated or None); see table4.py (Peak memory)."""
    if ids.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=mask, **kw, **(route or {}))
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        return peak - start, peak
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof, torch.no_grad():
        model.generate(input_ids=ids, attention_mask=mask, **kw, **(route or {}))
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
    run = peak = 0
    for _, n in events:
        run += n
        peak = max(peak, run)
    return peak, None


def summary(xs: list[float]) -> dict:
    """median, quartiles (inclusive method), min, max, n of finite values."""
    xs = sorted(x for x in xs if x is not None and math.isfinite(x))
    if not xs:
        return {"median": None, "q1": None, "q3": None, "min": None, "max": None, "n": 0}
    q1, q3 = (statistics.quantiles(xs, n=4, method="inclusive")[i] for i in (0, 2)) if len(xs) > 1 else (xs[0], xs[0])
    return {"median": statistics.median(xs), "q1": q1, "q3": q3, "min": xs[0], "max": xs[-1], "n": len(xs)}


def rotated(names: list[str], r: int) -> list[str]:
    k = r % len(names)
    return names[k:] + names[:k]


# ----------------------------------------------------------------------------------------------------------
# Prompts
# ----------------------------------------------------------------------------------------------------------
def instruction(tok, o: Options) -> list[int]:
    """The benchmark's prompt: Appendix G's instruction in `o.template`, cut to `o.prompt_tokens` if given."""
    ids = encode(tok, NEWS_INSTRUCTION, o.template)
    return ids[: o.prompt_tokens] if o.prompt_tokens else ids


def encode(tok, text: str, template: str) -> list[int]:
    if template == "chat" and getattr(tok, "chat_template", None):
        out = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                      tokenize=True, return_dict=True)
        return list(out["input_ids"])
    ids = tok(text, add_special_tokens=True)["input_ids"]
    if tok.bos_token_id is not None and (not ids or ids[0] != tok.bos_token_id):
        ids = [tok.bos_token_id, *ids]  # LLaMA-2's tokenizer adds BOS; SmolLM2's does not: add it alike
    return ids


def batch_of(rows: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and mask of token lists."""
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, T - len(r):] = torch.tensor(r)
        mask[i, T - len(r):] = 1
    return ids.to(device), mask.to(device)


# ----------------------------------------------------------------------------------------------------------
# Provenance and writing
# ----------------------------------------------------------------------------------------------------------
def header(o: Options, dev: str, dtype: str, prompt: list[int]) -> dict:
    from runners.results import provenance

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "schema": 1, "mode": o.mode, "backbone": o.backbone, "device": dev, "dtype": dtype,
        "device_name": torch.cuda.get_device_name() if dev == "cuda" else cpu,
        "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "options": {k: v for k, v in dataclasses.asdict(o).items() if k not in ("out", "figures", "cache_dir")},
        "prompt": {"template": o.template, "tokens": len(prompt), "text": "iapt.txt Appendix G news instruction"},
        "provenance": provenance(dev, torch.get_num_threads()),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def write(o: Options, dev: str, result: dict, md: str) -> tuple[str, str]:
    from runners.results import atomic_write_text, write_json

    base = os.path.join(o.out, stem(o, dev))
    write_json(base + ".json", result)
    atomic_write_text(base + ".md", md)
    return base + ".json", base + ".md"


def same_run(record: dict) -> tuple:
    """What a partial record must share with this run to be continued: options (but resume), code, machine."""
    prov = record.get("provenance") or {}
    return ({k: v for k, v in record["options"].items() if k != "resume"}, prov.get("git_commit"),
            prov.get("git_dirty"), record.get("device_name"), record.get("threads"), record.get("dtype"))


def resumable(path: str, res: dict, resume: bool) -> dict | None:
    """The partial record at `path` (a stopped stream or tenant sweep) when this run may continue it (same options, commit and machine), else None
    with a progress line saying why it is not used."""
    if not os.path.exists(path):
        return None
    if not resume:
        progress(f"resume=false: {path} is set aside, starting again")
        return None
    try:
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
        ok = same_run(old) == same_run(res)
    except (OSError, ValueError, KeyError, TypeError):
        old, ok = None, False
    if not ok:
        progress(f"{path}: not this run's (unreadable, or another commit, machine or options): starting again")
        return None
    return old


class Sittings:
    """A record measured block by block (a stream's tenant counts, a tenant sweep's (beam, B) blocks) that may stop
    and continue: after each block the record so far goes to <out>/<stem>.partial.json; a later run with the same
    options, commit and machine takes it up (`resume=false`: starts again) and measures only the missing blocks.
    `res["sittings"]` lists each sitting's start and the blocks measured in it; `carry` names the other keys a
    continued run keeps from the first sitting (e.g. the stream's arrival rate)."""

    def __init__(self, o: Options, dev: str, res: dict, carry: tuple[str, ...] = ()):
        self.path, self.out, self.res = os.path.join(o.out, stem(o, dev) + ".partial.json"), o.out, res
        old = resumable(self.path, res, o.resume)
        self.resumed = old is not None
        if old:
            res.update({k: old[k] for k in ("started", "results", "sittings", *carry)})
            progress(f"resuming {self.path}: {', '.join(res['results'])} done")
        else:
            res["results"], res["sittings"] = {}, []
        res["sittings"].append({"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "load_average": res["load_average"],
                                "blocks": []})

    def done(self, key: str) -> bool:
        return key in self.res["results"]

    def add(self, key: str, cells: dict) -> None:
        """Block `key` measured: into the record and the partial file (a stopped run continues after it)."""
        from runners.results import write_json

        self.res["results"][key] = cells
        self.res["sittings"][-1]["blocks"].append(key)
        os.makedirs(self.out, exist_ok=True)
        write_json(self.path, self.res)

    def finish(self, keys: list[str]) -> dict:
        """The whole record, its blocks in the options' order; the partial file removed (the caller writes the
        record next)."""
        self.res["results"] = {k: self.res["results"][k] for k in keys}
        self.res["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        if os.path.exists(self.path):
            os.remove(self.path)
        return self.res


def progress(msg: str) -> None:
    """One line of progress on stderr (BENCH_PROGRESS=0: none)."""
    if os.environ.get("BENCH_PROGRESS", "1") != "0":
        print(msg, file=sys.stderr, flush=True)
