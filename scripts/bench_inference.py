"""Inference-efficiency benchmark: the papers' Table 4 (iapt.txt Appendix G, parade.txt Appendix F, para.txt
section 4.5), multi-tenant batches, and a request stream served with dynamic batching.

    python -m scripts.bench_inference table4                  # SmolLM2-135M, beams 1 and 3, 100 rounds -> results/bench/table4.{json,md}
    python -m scripts.bench_inference tenants                 # B = 1, 4, 16, 64 rows, one tenant each -> tenants.{json,md}, figures/bench_tenants.png
    python -m scripts.bench_inference stream                  # Poisson stream of requests from N = 1, 16, 256 tenants -> stream.{json,md}
    python -m scripts.bench_inference table4 backbone=tiny quick=true out=/tmp/bench   # seconds (the tests)
    python -m scripts.bench_inference table4 device=cuda      # bf16 on a GPU (dtype=auto); CUDA peak memory
    make table4 | make bench-tenants | make bench-stream

Options (key=value; lists comma-separated): backbone= (conf/backbone), methods= (bare = the backbone alone,
the limit; default bare,lora,ia3_proj,iapt,parade,para,idspam, tenants/stream: bare,lora,iapt,parade,para,idspam),
rounds= (table4: 100 as the paper, tenants: 20), warmup= (3 rounds, not counted), new_tokens= (32),
beams= (1,3; tenants/stream: 1), batches= (1,4,16,64), tenants= (stream: 1,16,256), requests= (stream
requests per tenant count, 64), max_batch= (stream scheduler, 16), load= (stream arrival rate in units of the
bare backbone's single-request rate, 2.0), repeats= (stream, 3), device= (auto|cpu|cuda), dtype=
(auto|float32|bfloat16|float16: auto = bf16 on a bf16 GPU, float32 on CPU), threads= (torch CPU threads),
clock= (wall: time.perf_counter; cpu: time.process_time, the process's CPU seconds, which a background job on
other cores does not inflate: with threads=1 on a shared machine it measures the work itself),
template= (plain|chat: the instruction as text with the tokenizer's special tokens, or in its chat template),
prompt_tokens= (keep the instruction's first N tokens; default all),
perturb= (0.02), seed=, memory= (true), quick= (true: 2 rounds, 1 warm-up, 4 new tokens, small sweeps),
out= (results/bench), figures= (results/figures), cache_dir=.

Setting (Appendix G): the news-article instruction below, min_new_tokens = max_new_tokens = new_tokens (EOS
cannot stop early), greedy (beam 1) and beam search (beam 3), LoRA not merged (peft). Every method is built by
`pefts.registry.build_peft` from the composed config on a copy of one backbone whose weight tensors are shared
(one resident backbone; each copy has its own module tree, so one method's hooks or LoRA layers never touch
another), its own tensors moved off their initial state by N(0, perturb^2) (rational coefficients and frozen
constants kept): speed does not depend on the values, and outputs then differ from the bare backbone's.

Noise robustness: one process, methods interleaved: round r runs every method once, in an order rotated by r,
after `warmup` rounds that are not counted. Every figure is reported as the median over rounds and as the median
over rounds of the per-round ratio to the bare backbone (with IQR and min-max), so a background load that drifts
slower than one round cancels. Timings come from a forward hook on the causal LM each method runs (the same
module type for all): time to first token = generate() call to the end of the first (prefill) forward; decode
time per token = the remaining forwards' span / (new_tokens - 1); tokens/s = rows x new_tokens / the whole
generate() call.

Peak memory: `model_mib` (the backbone's tensors plus the method's own) + `generate_peak_mib` (the most memory
generate() holds at once above what was allocated when it started: activations, KV cache, soft prompts), in one
untimed pass per method and beam. On CUDA the latter is torch.cuda.max_memory_allocated() minus the allocation
at the start (and `cuda_max_allocated_mib` is the raw figure); on CPU it is the peak of the running sum of the
allocation and free events torch.profiler records (profile_memory=True): allocator-independent, unlike RSS.
The paper's column (LLaMA-2 7B on a GPU) is the whole process's peak; compare ratios, not MiB.

Multi-tenant (`tenants`): B rows, row k from tenant k with its own module: the input-aware methods through
`FamilyModel.add_tenant` + `generate(tenant_ids=...)` (tenant k = the perturbed default, perturbed again with
seed k), LoRA through peft's mixed-adapter batches (one adapter per tenant by `add_adapter`, `generate(...,
adapter_names=...)`), against the bare backbone at the same B. Stream (`stream`): `requests` requests from N
tenants (uniform) with prompts of varied length (prefixes of the instruction, 16 tokens to its full length),
arriving as a fixed-seed Poisson process; a scheduler takes up to max_batch arrived requests (FIFO) into one
mixed-tenant, left-padded batch. Service times are measured; the clock is virtual (it jumps to the next arrival
when idle, so no time is spent sleeping). Reported: throughput (new tokens / (last completion - first arrival)),
p50/p95 latency (completion - arrival) and the bytes of one tenant's module tensors. With N = 1 every method
serves one module by its plain path (no tenant routing).
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import gc
import itertools
import math
import os
import platform
import random
import statistics
import sys
import time
from dataclasses import dataclass, field

import torch

from core.errors import UserError, exit_on_user_error

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ("table4", "tenants", "stream")
FAMILY = ("iapt", "parade", "para", "idspam", "lpt", "idpg")  # the input-aware family (pefts/family.py)
PEFT_LORA = ("lora", "lora_default")  # peft LoRA: mixed-adapter batches (adapter_names)
DEFAULT_METHODS = {"table4": ["bare", "lora", "ia3_proj", "iapt", "parade", "para", "idspam"],
                   "tenants": ["bare", "lora", "iapt", "parade", "para", "idspam"],
                   "stream": ["bare", "lora", "iapt", "parade", "para", "idspam"]}

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
# Options
# ----------------------------------------------------------------------------------------------------------
@dataclass
class Options:
    mode: str = "table4"
    backbone: str = "smollm2-135m"
    methods: list[str] | None = None  # None: DEFAULT_METHODS[mode]
    rounds: int | None = None  # None: 100 (table4, the paper's repetitions), 20 (tenants)
    warmup: int = 3
    new_tokens: int = 32
    beams: list[int] | None = None  # None: [1, 3] (table4), [1] (tenants, stream)
    batches: list[int] = field(default_factory=lambda: [1, 4, 16, 64])
    tenants: list[int] = field(default_factory=lambda: [1, 16, 256])
    requests: int = 64
    max_batch: int = 16
    load: float = 2.0
    repeats: int = 3
    device: str = "auto"
    dtype: str = "auto"
    threads: int | None = None
    clock: str = "wall"  # wall | cpu (process CPU time: robust to a background load; CPU runs only)
    template: str = "plain"
    prompt_tokens: int | None = None  # keep the instruction's first N tokens only (None: all; tests use a few)
    perturb: float = 0.02
    seed: int = 0
    memory: bool = True
    quick: bool = False
    out: str = os.path.join(ROOT, "results", "bench")
    figures: str = os.path.join(ROOT, "results", "figures")
    cache_dir: str = os.environ.get("HARNESS_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "peft-harness"))

    def resolve(self) -> Options:
        """Mode defaults and `quick` shrinking filled in (explicit values win)."""
        o = dataclasses.replace(self)
        o.methods = list(o.methods or DEFAULT_METHODS[o.mode])
        o.beams = list(o.beams or ([1, 3] if o.mode == "table4" else [1]))
        if o.rounds is None:
            o.rounds = 2 if o.quick else (100 if o.mode == "table4" else 20)
        return o


_LISTS = {"methods": str, "beams": int, "batches": int, "tenants": int}
_CHOICES = {"device": ("auto", "cpu", "cuda"), "dtype": ("auto", "float32", "bfloat16", "float16"),
            "template": ("plain", "chat"), "clock": ("wall", "cpu"), "memory": ("true", "false"), "quick": ("true", "false")}
_QUICK = {"warmup": 1, "new_tokens": 4, "batches": [1, 4], "tenants": [1, 4], "requests": 8, "max_batch": 4,
          "repeats": 1}


def parse(argv: list[str]) -> Options:
    """Options from `<mode> key=value ...`; bad input raises UserError (one line, exit 2)."""
    if not argv or argv[0] not in MODES:
        got = argv[0] if argv else "nothing"
        raise UserError(f"first argument must be the mode, one of {', '.join(MODES)} (got '{got}'); "
                        "usage: python -m scripts.bench_inference table4|tenants|stream key=value ...")
    fields = {f.name: f for f in dataclasses.fields(Options) if f.name != "mode"}
    given: dict[str, object] = {}
    for a in argv[1:]:
        k, sep, v = a.partition("=")
        if not sep or k not in fields:
            raise UserError(f"unknown argument '{a}'; valid keys: {', '.join(sorted(fields))} (as key=value)")
        if k in _CHOICES and v not in _CHOICES[k]:
            raise UserError(f"{k}={v!r} is not valid; valid options: {', '.join(_CHOICES[k])}")
        try:
            if k in _LISTS:
                items = [x.strip() for x in v.split(",") if x.strip()]
                if not items:
                    raise ValueError
                given[k] = [_LISTS[k](x) for x in items]
            elif k in ("memory", "quick"):
                given[k] = v == "true"
            elif k in ("rounds", "warmup", "new_tokens", "requests", "max_batch", "repeats", "seed", "threads",
                       "prompt_tokens"):
                given[k] = int(v)
            elif k in ("load", "perturb"):
                given[k] = float(v)
            else:
                given[k] = v
        except ValueError:
            kind = "a comma-separated list of integers" if _LISTS.get(k) is int else (
                "a comma-separated list" if k in _LISTS else ("a number" if k in ("load", "perturb") else "an integer"))
            raise UserError(f"{k}={v!r} is not {kind}") from None
    quick = bool(given.get("quick", False))
    base = {**(_QUICK if quick else {}), **given}
    opts = Options(mode=argv[0], **base).resolve()
    _validate(opts)
    return opts


def _validate(o: Options) -> None:
    from core.config import load_registries
    from pefts.registry import METHODS

    positive = {"rounds": o.rounds, "new_tokens": o.new_tokens, "requests": o.requests, "max_batch": o.max_batch,
                "repeats": o.repeats}
    for k in ("threads", "prompt_tokens"):
        if getattr(o, k) is not None:
            positive[k] = getattr(o, k)
    for k, v in positive.items():
        if v < 1:
            raise UserError(f"{k}={v} must be a positive integer")
    if o.warmup < 0:
        raise UserError(f"warmup={o.warmup} must be >= 0")
    if not (o.load > 0 and math.isfinite(o.load)):
        raise UserError(f"load={o.load} must be a positive number")
    if o.perturb < 0:
        raise UserError(f"perturb={o.perturb} must be >= 0")
    for k, vals in (("beams", o.beams), ("batches", o.batches), ("tenants", o.tenants)):
        bad = [v for v in vals if v < 1]
        if bad:
            raise UserError(f"{k}={','.join(map(str, vals))}: {bad[0]} is not a positive integer")
    backbones = sorted(f[:-5] for f in os.listdir(os.path.join(ROOT, "conf", "backbone")) if f.endswith(".yaml"))
    if o.backbone not in backbones:
        raise UserError(f"backbone={o.backbone!r} is not a backbone; valid options: {', '.join(backbones)}")
    load_registries(("pefts",))
    allowed = ["bare", *METHODS.names()] if o.mode == "table4" else ["bare", *PEFT_LORA, *FAMILY]
    bad = [m for m in o.methods if m not in allowed]
    if bad:
        what = "method" if o.mode == "table4" else f"method with per-tenant modules ({o.mode} mode)"
        raise UserError(f"methods: {bad[0]!r} is not a {what}; valid options: {', '.join(allowed)}")
    if len(set(o.methods)) != len(o.methods):
        raise UserError(f"methods={','.join(o.methods)} names a method twice")
    if "bare" not in o.methods:
        raise UserError("methods must include 'bare' (every ratio is to the bare backbone)")
    if o.device == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda but no CUDA device is visible; valid options here: auto, cpu")
    if o.clock == "cpu" and device_and_dtype(o)[0] == "cuda":
        raise UserError("clock=cpu measures CPU time and would miss GPU work; valid options with a GPU: wall")
    if o.mode == "stream" and o.requests < 2:
        raise UserError(f"requests={o.requests} must be at least 2 for a stream")


def device_and_dtype(o: Options) -> tuple[str, str]:
    dev = ("cuda" if torch.cuda.is_available() else "cpu") if o.device == "auto" else o.device
    if o.dtype != "auto":
        return dev, o.dtype
    return dev, "bfloat16" if dev == "cuda" and torch.cuda.is_bf16_supported() else "float32"


def stem(o: Options, dev: str) -> str:
    """Output file stem: the mode for SmolLM2-135M on CPU (results/bench/table4.md), else with the
    backbone / device / quick added, so a smoke or GPU run never overwrites the CPU measurement."""
    parts = [o.mode]
    if o.backbone != "smollm2-135m":
        parts.append(o.backbone)
    if dev != "cpu":
        parts.append(dev)
    if o.quick:
        parts.append("quick")
    return "_".join(parts)


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


def causal_lm(model) -> torch.nn.Module:
    """The HF causal LM module every step of `generate` runs once (where the step clock hooks)."""
    if is_family(model):
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


def tenant_bytes(model, name: str = "default") -> int:
    """Bytes of one tenant's module tensors (its generator; its LoRA adapter's A and B)."""
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
    if is_family(model):
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
    """(peak bytes generate() holds above its start, CUDA max allocated or None); see the module docstring."""
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
        "provenance": provenance(dev),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def write(o: Options, dev: str, result: dict, md: str) -> tuple[str, str]:
    from runners.results import atomic_write_text, write_json

    base = os.path.join(o.out, stem(o, dev))
    write_json(base + ".json", result)
    atomic_write_text(base + ".md", md)
    return base + ".json", base + ".md"


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


# ----------------------------------------------------------------------------------------------------------
# Mode table4: single request, beams 1 and 3
# ----------------------------------------------------------------------------------------------------------
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
            _progress(f"table4 beam {beams}: round {r + 1}/{o.warmup + o.rounds}")
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


# ----------------------------------------------------------------------------------------------------------
# Mode tenants: mixed-tenant batches of B rows
# ----------------------------------------------------------------------------------------------------------
def run_tenants(o: Options) -> dict:
    dev, dtype = device_and_dtype(o)
    backbone, tok, _ = load(o)
    prompt = instruction(tok, o)
    n_tenants = max(o.batches)
    models, names = {}, {}
    for m in o.methods:
        models[m] = build_method(m, backbone, o)
        names[m] = add_tenants(models[m], n_tenants, o) if m != "bare" else None
    clocks = {m: StepClock(causal_lm(model), dev == "cuda", o.clock) for m, model in models.items()}
    res = header(o, dev, dtype, prompt)
    res["methods"] = {m: {"tenant_bytes": tenant_bytes(models[m]), "tenants": n_tenants if m != "bare" else 0}
                      for m in o.methods}
    res["results"] = {}
    for beams in o.beams:
        kw = gen_kwargs(tok, o.new_tokens, beams)
        for B in o.batches:
            ids, mask = batch_of([prompt] * B, tok.pad_token_id, dev)
            raw = {m: [] for m in o.methods}
            for r in range(o.warmup + o.rounds):
                for m in rotated(o.methods, r):
                    route = routing(models[m], None if names[m] is None else names[m][:B])
                    _, t = timed_generate(models[m], clocks[m], ids, mask, kw, route)
                    if r >= o.warmup:
                        raw[m].append(t)
                _progress(f"tenants beam {beams} B={B}: round {r + 1}/{o.warmup + o.rounds}")
            cells = {}
            for m, ts in raw.items():
                cells[m] = {"tps": summary([t.tps for t in ts]),
                            "ttft_s": summary([t.ttft_s for t in ts]),
                            "decode_s_per_token": summary([t.decode_s for t in ts]),
                            "ratio_to_bare": summary([t.tps / b.tps for t, b in zip(ts, raw["bare"])]),
                            "raw_total_s": [t.total_s for t in ts]}
                if "lora" in raw:
                    cells[m]["ratio_to_lora"] = summary([t.tps / b.tps for t, b in zip(ts, raw["lora"])])
            res["results"][f"beam{beams}/B{B}"] = cells
    for c in clocks.values():
        c.remove()
    res["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    return res


def render_tenants(res: dict) -> str:
    o = res["options"]
    lines = [_title(res, "Mixed-tenant batches"),
             "", f"B rows of Appendix G's instruction ({res['prompt']['tokens']} tokens), row k from tenant k (its own "
             f"module), {o['new_tokens']} new tokens forced; input-aware methods via `tenant_ids`, LoRA via peft "
             f"`adapter_names`; {o['rounds']} interleaved rounds ({o['warmup']} warm-up). `× bare`: median per-round "
             "ratio of tokens/s to the bare backbone at the same B [IQR] (min–max).", "",
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


# ----------------------------------------------------------------------------------------------------------
# Mode stream: Poisson arrivals from N tenants, dynamic batching
# ----------------------------------------------------------------------------------------------------------
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
    res["results"], res["methods"] = {}, {}
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
    for N in o.tenants:
        models, names = {}, {}
        for m in o.methods:
            models[m] = build_method(m, backbone, o)
            names[m] = add_tenants(models[m], N, o) if m != "bare" and N > 1 else None
            res["methods"].setdefault(m, {"tenant_bytes": tenant_bytes(models[m])})
        clocks = {m: StepClock(causal_lm(model), dev == "cuda", o.clock) for m, model in models.items()}
        stream = make_stream(prompt, o.requests, N, rate, o.seed)
        raw = {m: [] for m in o.methods}
        for r in range(o.repeats + (1 if o.warmup else 0)):
            for m in rotated(o.methods, r):
                out = serve(models[m], clocks[m], stream, names[m], tok, kw, o.max_batch, dev)
                if r >= (1 if o.warmup else 0):
                    raw[m].append(out)
            _progress(f"stream N={N}: repeat {r + 1}/{o.repeats + (1 if o.warmup else 0)}")
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
        res["results"][f"N{N}"] = cells
        for c in clocks.values():
            c.remove()
        del models, clocks
        gc.collect()
    res["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    return res


def render_stream(res: dict) -> str:
    o, s = res["options"], res["stream"]
    lines = [_title(res, "Request stream"), "",
             f"{s['requests']} requests per run, Poisson arrivals at {s['rate_per_s']:.3g}/s ({o['load']} × the bare "
             f"backbone's single-request rate), prompts of 16–{res['prompt']['tokens']} tokens, {o['new_tokens']} new "
             f"tokens forced, FIFO dynamic batching up to {s['max_batch']} mixed-tenant rows (virtual clock, measured "
             f"service times); median of {o['repeats']} interleaved repeats. N = 1: one module, plain path.", "",
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


# ----------------------------------------------------------------------------------------------------------
def _progress(msg: str) -> None:
    if os.environ.get("BENCH_PROGRESS", "1") != "0":
        print(msg, file=sys.stderr, flush=True)


def run(o: Options) -> tuple[dict, list[str]]:
    """Run one mode; returns (result, paths written)."""
    import transformers

    transformers.logging.set_verbosity_error()  # generation-config notes would repeat every call
    if o.threads is not None:
        torch.set_num_threads(o.threads)
    dev, _ = device_and_dtype(o)
    if o.mode == "table4":
        res = run_table4(o)
        md = render_table4(res)
    elif o.mode == "tenants":
        res = run_tenants(o)
        md = render_tenants(res)
    else:
        res = run_stream(o)
        md = render_stream(res)
    paths = list(write(o, dev, res, md))
    if o.mode == "tenants":
        name = "bench_tenants" + stem(o, dev)[len("tenants"):] + ".png"
        paths.append(plot_tenants(res, os.path.join(o.figures, name)))
    print(md)
    return res, paths


def main(argv: list[str]) -> None:
    _, paths = run(parse(argv))
    print("\n".join(f"wrote {p}" for p in paths))


if __name__ == "__main__":
    exit_on_user_error(main, sys.argv[1:])
