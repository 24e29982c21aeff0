"""Training throughput (`train` mode): the harness's own training step per method, task and precision,
against an independent minimal loop and the machine's matmul peak, measured in the same rounds.

    python -m scripts.bench train                                   # SmolLM2-135M, SST-2 + RTE, fp32 + bf16
    python -m scripts.bench train methods=lora,iapt dtypes=float32 rounds=6 steps=3 threads=2
    python -m scripts.bench train loss_positions=all,labelled       # the labelled-columns loss against all
    python -m scripts.bench train backbone=tiny quick=true out=/tmp/bench      # seconds (the tests)
    make bench-train [BENCH_ARGS="rounds=8 threads=2"]

Cells: every (method, task, dtype, loss positions). A cell is built the way a run builds it, by runners/train.py's own stages
(`prepare_data`, `load_frozen_backbone`, `build_method`, `make_trainer`) from the composed config of
`experiment=iapt_sst2_cpu` (150 steps x 8 rows on SmolLM2, chat template, max_seq_len 256; `dtype` sets
`runner.dtype`, `loss_positions` sets `runner.loss_positions`), with the task's real rows from ../shared/data. Each round runs `trainer.train()` of every
cell for `steps` optimizer steps (no evaluation, no checkpoint; the same seeded data order every round), in
an order rotated by the round, after `warmup` rounds that are not counted; a callback times every optimizer
step (forward and backward of every micro-batch, clipping, optimizer, scheduler and method callbacks such as
bi-level dev steps), and a counting collator counts the real (attention-mask) and padded tokens.

Anchors in the same rounds:
- `loop`: an independent minimal loop, plain PyTorch + peft LoRA (`peft.get_peft_model` with method=lora's
  rank, alpha, dropout and targets on its own copy of the backbone), the same batches as the harness's
  LoRA cell (taken from its Trainer's dataloader), AdamW at the same rate, gradient clipping at 1.0 (what
  Trainer does), no Trainer; with loss_positions=labelled it asks transformers for the labelled columns'
  logits alone (`logits_to_keep` + `shift_labels`), as the harness then does. Every cell's tokens/s is also given as the median over rounds of its ratio to
  the loop's tokens/s in the same round and task.
- `peak`: the FLOP/s of a plain n x n matmul (n = 2048, the best of 3 per round) in each dtype measured,
  at the same threads.

MFU = 6 * (N_backbone + N_trainable) * real tokens / step time / peak (the usual dense-model convention,
padding not counted; a frozen backbone needs no weight gradients, so about 4N of it is the work a PEFT step
can do). `flops/step` is what torch.utils.flop_counter counts in one step of the cell (forward and backward
matmuls and attention, padding and the method's own modules included); `exec%` is that over the step time
and the peak.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import statistics
import tempfile
import time

import torch
from transformers import TrainerCallback

from scripts.bench.common import header, progress, rotated, summary
from scripts.bench.options import Options, device_and_dtype

LOOP = "loop"  # the independent minimal loop's cell name
PEAK_N = 2048  # the peak matmul's size (n x n @ n x n)
DATA = {"sst2": "glue/SST-2", "rte": "glue/RTE", "mrpc": "glue/MRPC", "cb": "superglue/CB"}  # under data_root


class StepTimer(TrainerCallback):
    """Wall seconds of every optimizer step (on_step_begin -> on_step_end, synchronised on CUDA)."""

    def __init__(self, cuda: bool):
        self.cuda, self.times, self.t0 = cuda, [], None

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_step_begin(self, args, state, control, **kw):
        self.t0 = self._now()

    def on_step_end(self, args, state, control, **kw):
        self.times.append(self._now() - self.t0)


@dataclasses.dataclass
class Counting:
    """A collator wrapper that keeps (real, padded) tokens of every micro-batch it makes, in order (the
    dataloader fetches one batch ahead of the steps, so a round counts its first steps x accumulation)."""

    collator: object
    tokens: list = dataclasses.field(default_factory=list)

    def __call__(self, rows):
        batch = self.collator(rows)
        self.tokens.append((int(batch["attention_mask"].sum()), batch["attention_mask"].numel()))
        return batch


@dataclasses.dataclass
class Cell:
    name: str  # method, or LOOP
    task: str
    dtype: str
    positions: str  # runner.loss_positions
    step: object  # () -> (seconds per step list, real tokens, padded tokens) of one round
    n_backbone: int
    n_trainable: int
    flops: float | None = None  # counted FLOPs of one step
    trainer: object = None  # a harness cell's Trainer (results/bench/train_compile times its evaluate)
    rounds: list = dataclasses.field(default_factory=list)


def _config(o: Options, method: str, task: str, dtype: str, positions: str = "labelled"):
    from core.config import compose

    return compose(["experiment=iapt_sst2_cpu", f"backbone={o.backbone}", f"method={method}", f"task={task}",
                    f"runner.dtype={dtype}", f"runner.loss_positions={positions}", "runner.progress=off", "runner.resume=false", "logger=none",
                    # the first rows only: speed depends on the rows' lengths, not on how many there are
                    f"runner.max_train_examples={o.train_rows}", "runner.max_dev_examples=8",
                    f"data_dir={os.path.join(o.data_root, DATA[task])}", f"runner.max_seq_len={o.max_seq_len}"])


def harness_cell(o: Options, method: str, task: str, dtype: str, positions: str, dev: str,
                 scratch: str, compile: bool = False) -> tuple[Cell, list]:
    """A cell through runners/train.py's stages; also the first batches its Trainer's dataloader gives.
    `compile`: the Trainer's own torch.compile of the model (TrainingArguments.torch_compile;
    results/bench/train_compile measures it)."""
    from runners import train as T
    from runners.kind import Kind

    cfg = _config(o, method, task, dtype, positions)
    kind = Kind.of(cfg.backbone)
    cfg.runner.scoring = kind.scoring(cfg.runner.scoring)
    torch.manual_seed(o.seed)
    data = T.prepare_data(cfg, kind)
    model, tok = T.load_frozen_backbone(cfg.backbone, cfg.runner, kind, data.labels, dev)
    n_backbone = sum(p.numel() for p in model.parameters())
    method_ = T.build_method(cfg.method, None, kind, model, dev)
    timer = StepTimer(dev == "cuda")
    trainer, _ = T.make_trainer(cfg, kind, data, method_, tok, dev, scratch, callbacks=[], max_steps=o.steps,
                                eval_strategy="no", eval_on_start=False, logging_steps=10**6,
                                torch_compile=compile)
    trainer.add_callback(timer)  # last: its on_step_end comes after the method's own callbacks
    counter = Counting(trainer.data_collator)
    trainer.data_collator = counter
    batches = _first_batches(trainer, o.steps * trainer.args.gradient_accumulation_steps)

    used = o.steps * trainer.args.gradient_accumulation_steps

    def step():
        timer.times, counter.tokens = [], []
        trainer.train()
        return timer.times, sum(t[0] for t in counter.tokens[:used]), sum(t[1] for t in counter.tokens[:used])

    cell = Cell(method, task, dtype, positions, step, n_backbone, method_.params["trainable"], trainer=trainer)
    cell.flops = _count_flops(lambda: trainer.compute_loss(method_.model, batches[0]).backward())
    method_.model.zero_grad(set_to_none=True)
    return cell, batches


def _first_batches(trainer, n: int) -> list[dict]:
    """The first `n` batches of the Trainer's own dataloader (its sampler, collator and seed), as plain dicts."""
    return [dict(batch) for batch in itertools.islice(trainer.get_train_dataloader(), n)]


def loop_cell(o: Options, task: str, dtype: str, positions: str, dev: str, batches: list) -> Cell:
    """The independent minimal loop over `batches` (the harness LoRA cell's)."""
    import peft

    from runners.backbones import load_backbone

    cfg = _config(o, "lora", task, dtype)
    torch.manual_seed(o.seed)
    model, _ = load_backbone(cfg.backbone, cache_dir=cfg.runner.cache_dir, dtype=dtype)
    for p in model.parameters():
        p.requires_grad_(False)
    n_backbone = sum(p.numel() for p in model.parameters())
    m = cfg.method
    model = peft.get_peft_model(model.to(dev), peft.LoraConfig(
        r=m.r, lora_alpha=m.alpha, lora_dropout=m.dropout, task_type="CAUSAL_LM",
        target_modules="all-linear" if list(m.target_modules) == ["all-linear"] else list(m.target_modules)))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.runner.lr)
    amp = (lambda: torch.autocast(dev, dtype=torch.bfloat16)) if dtype == "bfloat16" else contextlib.nullcontext
    cuda = dev == "cuda"

    def inputs(batch):
        batch = {k: v.to(dev) for k, v in batch.items()}
        if positions == "all":
            return batch
        shift = torch.nn.functional.pad(batch["labels"], (0, 1), value=-100)[:, 1:]  # transformers' own kwargs
        cols = (shift != -100).any(0).nonzero().flatten()
        return {**batch, "logits_to_keep": cols, "shift_labels": shift[:, cols]}

    def one(batch):
        batch = inputs(batch)
        with amp():
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def step():
        times, real, padded = [], 0, 0
        for b in batches:
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            one(b)
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            real += int(b["attention_mask"].sum())
            padded += b["attention_mask"].numel()
        return times, real, padded

    cell = Cell(LOOP, task, dtype, positions, step, n_backbone, sum(p.numel() for p in params))
    cell.flops = _count_flops(lambda: model(**inputs(batches[0])).loss.backward())
    opt.zero_grad(set_to_none=True)
    return cell


def _count_flops(fn) -> float | None:
    """FLOPs of one call of `fn` (a forward and backward of one micro-batch) as torch.utils.flop_counter counts
    them (matmuls and attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with FlopCounterMode(display=False) as counter:
            fn()
        return float(counter.get_total_flops())
    except Exception:  # noqa: BLE001 - a counter failure (an op it cannot trace) leaves the column empty
        return None


def peak_flops(dtype: str, dev: str) -> float:
    """The best of 3 n x n matmuls in `dtype`, in FLOP/s."""
    dt = getattr(torch, dtype)
    a = torch.randn(PEAK_N, PEAK_N, device=dev).to(dt)
    b = torch.randn(PEAK_N, PEAK_N, device=dev).to(dt)
    best = float("inf")
    for _ in range(3):
        if dev == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        torch.mm(a, b)
        if dev == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * PEAK_N**3 / best


def run_train(o: Options) -> dict:
    dev, _ = device_and_dtype(o)
    cells: list[Cell] = []
    with tempfile.TemporaryDirectory(prefix="bench-train-") as scratch:
        for dtype, task, positions in itertools.product(o.dtypes, o.tasks, o.loss_positions):
            lora_batches = None
            for method in o.methods:
                progress(f"building {method} on {task} ({dtype}, loss at {positions} positions)")
                cell, batches = harness_cell(o, method, task, dtype, positions, dev, os.path.join(scratch, "t"))
                cells.append(cell)
                if method == "lora":
                    lora_batches = batches
            if o.loop:
                if lora_batches is None:  # the loop replays the harness LoRA cell's batches
                    _, lora_batches = harness_cell(o, "lora", task, dtype, positions, dev, os.path.join(scratch, "t"))
                cells.append(loop_cell(o, task, dtype, positions, dev, lora_batches))
        peaks = {d: [] for d in o.dtypes}
        for r in range(o.warmup + o.rounds):
            for d in o.dtypes:
                peaks[d].append(peak_flops(d, dev))
            for c in rotated(cells, r):
                times, real, padded = c.step()
                if r >= o.warmup:
                    c.rounds.append({"s_per_step": statistics.median(times), "seconds": sum(times),
                                     "steps": len(times), "real_tokens": real, "padded_tokens": padded})
            progress(f"round {r + 1}/{o.warmup + o.rounds}" + (" (warm-up)" if r < o.warmup else ""))
    peak = {d: statistics.median(v[o.warmup:] or v) for d, v in peaks.items()}
    res = header(o, dev, ",".join(o.dtypes), [])
    res.pop("prompt")
    res["peak_flops"] = peak
    res["cells"] = [_summarise(c, cells, peak[c.dtype], o.warmup) for c in cells]
    return res


def _summarise(c: Cell, cells: list[Cell], peak: float, warmup: int) -> dict:
    loop = next((x for x in cells if x.name == LOOP and (x.task, x.dtype, x.positions) == (c.task, c.dtype,
                                                                                          c.positions)), None)
    tps = [x["real_tokens"] / x["seconds"] for x in c.rounds]
    n = c.n_backbone + c.n_trainable
    mfu = [6 * n * x["real_tokens"] / x["seconds"] / peak for x in c.rounds]
    out = {"method": c.name, "task": c.task, "dtype": c.dtype, "loss_positions": c.positions, "n_backbone": c.n_backbone,
           "n_trainable": c.n_trainable, "tokens_per_s": summary(tps),
           "s_per_step": summary([x["seconds"] / x["steps"] for x in c.rounds]),
           "real_tokens_per_step": statistics.mean(x["real_tokens"] / x["steps"] for x in c.rounds),
           "padding_share": 1 - sum(x["real_tokens"] for x in c.rounds) / max(1, sum(x["padded_tokens"] for x in c.rounds)),
           "mfu": summary(mfu), "flops_per_step": c.flops,
           "exec_util": summary([c.flops / (x["seconds"] / x["steps"]) / peak for x in c.rounds]) if c.flops else None,
           "rounds": c.rounds}
    if loop is not None and loop is not c:
        ratio = [(x["real_tokens"] / x["seconds"]) / (y["real_tokens"] / y["seconds"])
                 for x, y in zip(c.rounds, loop.rounds)]
        out["vs_loop"] = summary(ratio)
    return out
