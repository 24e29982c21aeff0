"""The benchmarks' command line: `<mode> key=value ...` parsed into Options, validated (bad input: one line,
exit 2), and the output file stem.

    python -m scripts.bench table4|tenants|stream|train|prefill key=value ...

Options (key=value; lists comma-separated): backbone= (conf/backbone), methods= (bare = the backbone alone,
the limit; default bare,lora,ia3_proj,iapt,parade,para,idspam, tenants/stream:
bare,lora,lora_bgmv,iapt,parade,para,idspam; lora_bgmv: LoRA's tenants by gather + batched matmuls), rounds= (table4: 100 as the paper, tenants: 20), warmup= (3 rounds, not
counted), new_tokens= (32), beams= (1,3; tenants/stream: 1), batches= (1,4,16,64), tenants= (stream:
1,16,256), requests= (stream requests per tenant count, 64), max_batch= (stream scheduler, 16), load= (stream
arrival rate in units of the bare backbone's single-request rate, 2.0), repeats= (stream, 3), device=
(auto|cpu|cuda), dtype= (auto|float32|bfloat16|float16: auto = bf16 on a bf16 GPU, float32 on CPU), threads=
(torch CPU threads), clock= (wall: time.perf_counter; cpu: time.process_time, the process's CPU seconds, which
a background job on other cores does not inflate: with threads=1 on a shared machine it measures the work
itself), template= (plain|chat: the instruction as text with the tokenizer's special tokens, or in its chat
template), prompt_tokens= (keep the instruction's first N tokens; default all), perturb= (0.02), seed=,
memory= (true), quick= (true: 2 rounds, 1 warm-up, 4 new tokens, small sweeps), out= (results/bench), figures=
(results/figures), cache_dir=, resume= (stream and tenants: true, continue a stopped run at its next tenant count / (beam, B) block).

Train mode (scripts/bench/train.py): methods= (default lora,iapt,parade,para,idspam,lpt,p_tuning_v2; any
registered method), tasks= (sst2,rte; also mrpc, cb), dtypes= (float32,bfloat16: runner.dtype of each cell),
loss_positions= (labelled; also all: runner.loss_positions of each cell),
steps= (optimizer steps per cell and round, 4), rounds= (5), warmup= (3), loop= (true: the independent minimal
LoRA loop), max_seq_len= (256), train_rows= (2000: runner.max_train_examples, the rows the
batches are drawn from), data_root= (../shared/data or $HARNESS_DATA).

Prefill mode (scripts/bench/prefill.py): time to first token split into inserted positions, hooks and
generators; methods= (default bare,iapt,parade,para,idspam), batches= (1 unless given), rounds=, warmup=.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field

import torch

from core.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODES = ("table4", "tenants", "stream", "train", "prefill")  # one benchmark module each; scripts/bench/__main__.py BENCHMARKS
FAMILY = ("iapt", "parade", "para", "idspam", "lpt", "idpg")  # the input-aware family (pefts/family.py)
PEFT_LORA = ("lora", "lora_default")  # peft LoRA: mixed-adapter batches (adapter_names)
DEFAULT_METHODS = {"table4": ["bare", "lora", "ia3_proj", "iapt", "parade", "para", "idspam"],
                   "tenants": ["bare", "lora", "lora_bgmv", "iapt", "parade", "para", "idspam"],
                   "stream": ["bare", "lora", "lora_bgmv", "iapt", "parade", "para", "idspam"],
                   "train": ["lora", "iapt", "parade", "para", "idspam", "lpt", "p_tuning_v2"],
                   "prefill": ["bare", "iapt", "parade", "para", "idspam"]}
DEFAULT_BATCHES = (1, 4, 16, 64)  # tenants: rows per batch (prefill: 1 unless given)
TRAIN_TASKS = ("sst2", "rte", "mrpc", "cb")  # tasks the train mode reads from data_root (scripts/bench/train.py)


@dataclass
class Options:
    mode: str = "table4"
    backbone: str = "smollm2-135m"
    methods: list[str] | None = None  # None: DEFAULT_METHODS[mode]
    rounds: int | None = None  # None: 100 (table4, the paper's repetitions), 20 (tenants)
    warmup: int = 3
    new_tokens: int = 32
    beams: list[int] | None = None  # None: [1, 3] (table4), [1] (tenants, stream)
    batches: list[int] = field(default_factory=lambda: list(DEFAULT_BATCHES))
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
    tasks: list[str] = field(default_factory=lambda: ["sst2", "rte"])  # train mode
    steps: int = 4  # train mode: optimizer steps per cell and round
    dtypes: list[str] = field(default_factory=lambda: ["float32", "bfloat16"])  # train mode: runner.dtype values
    # train mode: runner.loss_positions values (labelled: the vocabulary projection of the answer columns only)
    loss_positions: list[str] = field(default_factory=lambda: ["labelled"])
    loop: bool = True  # train mode: the independent minimal LoRA loop as the reference
    # stream mode: continue from <out>/<stem>.partial.json (the tenant counts a stopped run finished, its arrival
    # rate) when its options and commit match; false: start again
    resume: bool = True
    max_seq_len: int = 256  # train mode: runner.max_seq_len
    train_rows: int = 2000  # train mode: runner.max_train_examples (the rows batches are drawn from)
    data_root: str = os.environ.get("HARNESS_DATA", os.path.join(os.path.dirname(ROOT), "shared", "data"))
    cache_dir: str = os.environ.get("HARNESS_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "peft-harness"))

    def resolve(self) -> Options:
        """Mode defaults and `quick` shrinking filled in (explicit values win)."""
        o = dataclasses.replace(self)
        o.methods = list(o.methods or DEFAULT_METHODS[o.mode])
        o.beams = list(o.beams or ([1, 3] if o.mode == "table4" else [1]))
        if o.mode == "prefill" and tuple(self.batches) == DEFAULT_BATCHES:
            o.batches = [1]  # one row unless asked: the prefill's own cost, not the tenants' batches
        if o.rounds is None:
            o.rounds = 2 if o.quick else {"table4": 100, "train": 5}.get(o.mode, 20)
        return o


_LISTS = {"methods": str, "beams": int, "batches": int, "tenants": int, "tasks": str, "dtypes": str,
          "loss_positions": str}
_CHOICES = {"device": ("auto", "cpu", "cuda"), "dtype": ("auto", "float32", "bfloat16", "float16"),
            "template": ("plain", "chat"), "clock": ("wall", "cpu"), "memory": ("true", "false"), "quick": ("true", "false"),
            "loop": ("true", "false"), "resume": ("true", "false")}
_QUICK = {"warmup": 1, "new_tokens": 4, "batches": [1, 4], "tenants": [1, 4], "requests": 8, "max_batch": 4,
          "repeats": 1, "steps": 2, "max_seq_len": 128, "train_rows": 64}


def parse(argv: list[str]) -> Options:
    """Options from `<mode> key=value ...`; bad input raises UserError (one line, exit 2)."""
    if not argv or argv[0] not in MODES:
        got = argv[0] if argv else "nothing"
        raise UserError(f"first argument must be the mode, one of {', '.join(MODES)} (got '{got}'); "
                        f"usage: python -m scripts.bench {'|'.join(MODES)} key=value ...")
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
            elif k in ("memory", "quick", "loop", "resume"):
                given[k] = v == "true"
            elif k in ("rounds", "warmup", "new_tokens", "requests", "max_batch", "repeats", "seed", "threads",
                       "prompt_tokens", "steps", "max_seq_len", "train_rows"):
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
                "repeats": o.repeats, "steps": o.steps, "max_seq_len": o.max_seq_len, "train_rows": o.train_rows}
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
    if o.mode == "train":
        _validate_train(o, METHODS.names())
        return
    allowed = (["bare", *METHODS.names()] if o.mode in ("table4", "prefill")
               else ["bare", *PEFT_LORA, "lora_bgmv", *FAMILY])
    bad = [m for m in o.methods if m not in allowed]
    if bad:
        what = "method" if o.mode in ("table4", "prefill") else f"method with per-tenant modules ({o.mode} mode)"
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


def _validate_train(o: Options, methods) -> None:
    """The train mode's own checks: registered methods, tasks with local data, training dtypes."""
    from runners.trainer import LOSS_POSITIONS

    for key, vals, allowed in (("methods", o.methods, list(methods)), ("tasks", o.tasks, list(TRAIN_TASKS)),
                               ("dtypes", o.dtypes, ["float32", "bfloat16"]),
                               ("loss_positions", o.loss_positions, list(LOSS_POSITIONS))):
        bad = [v for v in vals if v not in allowed]
        if bad:
            raise UserError(f"{key}: {bad[0]!r} is not valid in train mode; valid options: {', '.join(allowed)}")
        if len(set(vals)) != len(vals):
            raise UserError(f"{key}={','.join(vals)} names a value twice")
    if not os.path.isdir(o.data_root):
        raise UserError(f"data_root={o.data_root!r} is not a folder; the train mode reads the tasks' real rows "
                        "from it (../shared/data, or $HARNESS_DATA)")
    if o.device == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda but no CUDA device is visible; valid options here: auto, cpu")


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
