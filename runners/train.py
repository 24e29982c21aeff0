"""One run: (backbone, method, task, seed) -> results/runs/<backbone>/<task>/<cell>/seed<k>.json.

Protocol (iapt.txt Appendix F, as conf/runner/default.yaml): HF Trainer, AdamW, linear decay after 6%
warm-up, dev loss every `eval_steps`, early stopping after `patience` evaluations without a lower dev
loss, the best dev state (of the trainable parameters only: no backbone checkpoints) restored for
test predictions, generated through the LM head with beam search.

Encoder backbones (RoBERTa, the ID-SPAM setting) train a new classification head with every method: the
head is trainable beside the method's parameters (and saved with them), the rows are the raw sentence
(pairs) with class-id labels, and test answers are the head's argmax (`runner.scoring=head`); conf/runner/
idspam.yaml is ID-SPAM's own optimisation protocol.

A run is a sequence of named stages (`_run` reads top to bottom): start the process, prepare the data, load
the frozen backbone, score the untrained backbone once (zero-shot row), build the method, train, evaluate,
write the record. The backbone's kind (decoder or encoder, runners/kind.py) is decided once and handed to
the stages that differ by it.

    python run.py backbone=tiny method=lora task=rte runner=debug data_dir=../shared/data/glue/RTE
    python run.py backbone=tiny-roberta method=idspam task=rte runner=idspam data_dir=../shared/data/glue/RTE
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import PrinterCallback, TrainingArguments, set_seed

from core.errors import UserError
from core.tracking import wandb_mode
from pefts.io import load_peft, save_peft
from pefts.registry import MethodBuild, build_peft
from runners import checkpoint as C
from runners import results as R
from runners.backbones import load_backbone
from runners.bilevel import training_setup
from runners.data import prompt_batches
from runners.input_dependence import of_run
from runners.kind import Kind
from runners.scoring import SCORINGS, check_labels, predict_head, predict_likelihood
from runners.trainer import (
    LOSS_POSITIONS,
    BestStateAndEarlyStop,
    HarnessTrainer,
    Preempted,
    StopOnSignal,
    gathered,
    trainable_parameters,
)
from tasks.registry import build_task

log = logging.getLogger(__name__)


def run(cfg) -> dict:
    """Run one (backbone, method, task, seed) cell, or return its finished record. One process trains
    a run at a time (a lock file); a run that raises leaves a failed record beside its result path."""
    if cfg.runner.dtype == "auto":
        cfg.runner.dtype = resolve_dtype("auto", cfg.runner.device)
    kind = Kind.of(cfg.backbone)
    cfg.runner.scoring = kind.scoring(cfg.runner.scoring)
    config = R.to_container(cfg)
    path = R.result_path(cfg)
    done = R.load_finished(path, config, force=cfg.force)
    if done:
        log.info("skip: %s exists (force=true reruns it)", path)
        done["skipped"] = True
        return done
    validate_settings(cfg)
    R.check_cell(path, config)
    R.ensure_writable(path)
    with run_lock(path, cfg.break_lock):
        done = R.load_finished(path, config, force=cfg.force)  # finished by another process meanwhile?
        if done:
            done["skipped"] = True
            return done
        try:
            record = _run(cfg, config, path, kind)
        except (Preempted, R.WriteError):  # nothing to record: a checkpoint to resume from / a file system to fix
            raise
        except Exception as e:
            try:
                where = R.write_failed(path, R.new_record(cfg, config), e, stage="run")
            except R.WriteError:
                where = "no failed record: the results folder refused it"
            if isinstance(e, UserError):  # run.py prints its one line
                raise
            if isinstance(e, (torch.OutOfMemoryError, MemoryError)):
                raise UserError(out_of_memory_hint(e, cfg.runner, where)) from e
            log.error("run failed: %s (%s)", e, where)
            raise RunFailed(e, where) from e
        R.clear_failed(path)
        return record


def _run(cfg, config: dict, path: str, kind: Kind) -> dict:
    """The stages of one run, in order."""
    t0, watch = time.time(), Stopwatch()
    device = start_process(cfg.runner, cfg.seed)
    data = prepare_data(cfg, kind)
    model, tok = load_frozen_backbone(cfg.backbone, cfg.runner, kind, data.labels, device)
    watch.lap("startup")
    zs = zero_shot(cfg, config, kind, data, model, tok, device) if cfg.runner.zero_shot else None
    if zs and data.eval_only:
        return zs
    watch.lap("zero_shot")
    set_seed(cfg.seed)  # method initialization depends on the seed only
    method = build_method(cfg.method, cfg.runner.init_peft, kind, model, device)
    fit = train(cfg, config, path, kind, data, method, tok, device, watch)
    dev, test_preds, metrics = evaluate(cfg.runner, cfg.task, data, method.model, tok, device)
    dependence = input_dependence(cfg, data, method.model, tok, device)  # input-aware methods only, else None
    watch.lap("answers")
    record = R.new_record(cfg, config, status="ok", metrics=metrics, dev={**fit.dev, **dev}, params=method.params,
                          provenance=R.provenance(device, torch.get_num_threads()), wall_time_s=time.time() - t0,
                          timing_s=watch.seconds(), curve=fit.curve,
                          split_sizes=data.sizes, protocol=data.task.protocol, chance=data.task.chance,
                          steps=fit.steps, effective_batch_size=fit.batch,
                          **({"input_dependence": dependence} if dependence else {}))
    return write_run(cfg.runner, path, record, method.model, data.splits["test"], test_preds, fit)


class Stopwatch:
    """Wall seconds per named phase of a run, the record's `timing_s`: startup (data, backbone, method, rows,
    Trainer set-up), zero_shot, train (optimizer steps and bi-level dev steps), dev_loss (the Trainer's dev
    evaluations), answers (dev generation and test scoring). A phase may be lapped more than once."""

    def __init__(self):
        self.last, self.phases = time.perf_counter(), {}

    def lap(self, phase: str, minus: float = 0.0) -> None:
        """Add the time since the last lap to `phase`, less `minus` seconds (spent in another phase)."""
        now = time.perf_counter()
        self.phases[phase] = self.phases.get(phase, 0.0) + now - self.last - minus
        self.last = now

    def seconds(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in self.phases.items()}


# ---- the stages ----------------------------------------------------------------------------------------


@dataclass
class Data:
    """A run's task and its (capped) splits. n_train_full: the training rows before the cap (the batch-size
    rule looks at the task, not at a debug cap); eval_only: a zero-shot evaluation without training data."""

    task: object
    labels: list[str] | None
    splits: dict
    n_train_full: int
    eval_only: bool

    @property
    def sizes(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.splits.items()}


@dataclass
class Method:
    """The backbone with the method applied; `head`: an encoder's head parameters it unfroze; `params`: the
    record's parameter counts."""

    model: torch.nn.Module
    built: MethodBuild
    head: list
    params: dict


@dataclass
class Fit:
    """What training leaves for the record: the best dev loss and its step, the loss curves, the step count,
    the effective batch, whether this process writes (rank 0) and the W&B `report_to`."""

    dev: dict
    curve: dict
    steps: int
    batch: int
    is_main: bool
    report_to: str


def start_process(runner, seed: int) -> str:
    """Threads, device (each rank of a launch on its own GPU), the seed; `init_peft` checked before any loading."""
    if runner.num_threads:
        torch.set_num_threads(runner.num_threads)
    device = resolve_device(runner.device)
    if device == "cuda" and world()[1] > 1 and torch.cuda.device_count() > 1:  # torchrun/deepspeed: this rank's
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))  # GPU from the start, not every rank on GPU 0
    set_seed(seed)
    if runner.init_peft and not os.path.isfile(runner.init_peft):
        raise UserError(f"runner.init_peft='{runner.init_peft}' is not a file: it names another run's saved PEFT "
                        "weights (seed<k>.peft.safetensors beside its record; run that one first)")
    return device


def prepare_data(cfg, kind: Kind) -> Data:
    """The task's splits (local files or the hub), capped by the runner's row limits."""
    task = build_task(cfg.task)
    labels = kind.labels(task, cfg.task.name)  # before any data is read
    full = task.splits(task_data_dir(cfg))
    splits = capped(full, cfg.runner)
    eval_only = cfg.runner.zero_shot and not splits["train"]  # e.g. MMLU evaluated without training data
    if not splits["test"] or (not eval_only and (not splits["train"] or not splits["dev"])):
        raise UserError(f"task '{cfg.task.name}' gave empty splits: {({k: len(v) for k, v in splits.items()})}")
    return Data(task, labels, splits, len(full["train"]), eval_only)


def load_frozen_backbone(backbone_cfg, runner, kind: Kind, labels: list[str] | None, device: str):
    """(model, tokenizer): the backbone with every parameter frozen, on `device`."""
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()  # an earlier cell's ZeRO-3 config (a global) would partition the backbone as it is built
    model, tok = load_backbone(backbone_cfg, cache_dir=runner.cache_dir, dtype=runner.dtype,
                               num_labels=len(labels) if kind.encoder else None)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(device), tok


def zero_shot(cfg, config: dict, kind: Kind, data: Data, model, tok, device: str) -> dict | None:
    """Score the untrained backbone on test once per (backbone, task, runner): the reference row. None for an
    encoder (its new head is random), a selection run (no test rows) and every process but rank 0."""
    if kind.encoder:
        log.warning("runner.zero_shot: no zero-shot row for an encoder (its new classification head is random)")
        return None
    if not cfg.runner.eval_test or world()[0] != 0:
        return None
    path = R.result_path(cfg, R.ZERO_SHOT, seed=0)
    record = R.load_finished(path, config, drop_method=True, force=cfg.force)
    if not record:
        record = _score_untrained(cfg, config, data, model, tok, device, path)
    log.info("zero-shot %s: %s", cfg.task.name, record["metrics"])
    return record


def _score_untrained(cfg, config: dict, data: Data, model, tok, device: str, path: str) -> dict:
    t0, test = time.time(), data.splits["test"]
    preds = predictions(model, tok, data.task, test, cfg.task, cfg.runner, device)
    record = R.new_record(cfg, config, cell=R.ZERO_SHOT, status="ok", metrics=data.task.score(preds, test), dev={},
                          params={"trainable": 0, "total": sum(p.numel() for p in model.parameters())},
                          provenance=R.provenance(device, torch.get_num_threads()), wall_time_s=time.time() - t0,
                          curve={"train": [], "dev": []}, split_sizes=data.sizes, protocol=data.task.protocol,
                          chance=data.task.chance)
    R.write_jsonl(path.replace(".json", ".predictions.jsonl"), prediction_rows(test, preds))
    R.write_json(path, record)
    return record


def build_method(method_cfg, init_peft: str | None, kind: Kind, model, device: str) -> Method:
    """The method on the frozen backbone (and an encoder's head unfrozen), optionally started from another
    run's PEFT weights; its parameter counts."""
    built = build_peft(model, method_cfg)
    model = built.model.to(device)
    head = kind.train_head(model)
    if init_peft:  # another run's tuned weights (and head) as the starting point
        try:
            load_peft(model, init_peft)
        except ValueError as e:
            raise UserError(f"runner.init_peft: {e} (it must come from the same method on the same backbone)") from None
        log.info("started from the PEFT weights of %s", init_peft)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if trainable == 0:
        raise UserError(f"method '{method_cfg.name}' left no trainable parameters")
    params = {"trainable": trainable, "total": sum(p.numel() for p in model.parameters())}
    if kind.encoder:
        params["head"] = sum(p.numel() for p in kind.head_parameters(model) if p.requires_grad)
    return Method(model, built, head, params)


def train(cfg, config: dict, path: str, kind: Kind, data: Data, method: Method, tok, device: str,
          watch: Stopwatch) -> Fit:
    """HF Trainer on the training rows, dev loss every `eval_steps` with early stopping, resumable from the
    checkpoints beside the record; the best dev state restored into `method.model`."""
    runner = cfg.runner
    report_to = _wandb_start(cfg, config, R.cell_name(cfg))
    best = BestStateAndEarlyStop(method.model, runner.patience)
    # checkpoints beside the record when resuming is on (runners/checkpoint.py), else a scratch folder
    out = contextlib.nullcontext(C.ckpt_root(path)) if runner.resume else tempfile.TemporaryDirectory(prefix="trainer-")
    stop = StopOnSignal()  # SIGTERM/SIGINT from here to the end of training: a checkpoint, then Preempted
    with out as out_dir, stop.installed():
        trainer, batch = make_trainer(cfg, kind, data, method, tok, device, out_dir, callbacks=[best, stop],
                                      report_to=report_to, save_strategy="steps" if runner.resume else "no",
                                      # step-0 dev loss (the start of the curve) inside train(), after the model
                                      # is wrapped: a trainer.evaluate() before train() marks it prepared, so
                                      # Accelerate would skip DDP (no gradient sync)
                                      eval_on_start=True)
        resume_from = None
        if runner.resume:  # after make_trainer (which starts the process group): rank 0 first, so that force=true
            # clears the checkpoints once, before another rank of a torchrun launch looks at them
            with trainer.args.main_process_first(local=False, desc="checkpoints"):
                resume_from = C.prepare(out_dir, config, force=cfg.force and trainer.is_world_process_zero())
            trainer.args.eval_on_start = not resume_from
        if resume_from:  # Trainer restores weights, optimizer, scheduler, RNG and data order; we the callbacks
            C.load_callbacks(resume_from, trainer.callback_handler.callbacks)
            log.info("resuming from %s", resume_from)
        watch.lap("startup")
        trainer.train(resume_from_checkpoint=resume_from)
        if stop.signum is not None:
            raise Preempted(_stopped(stop.signum, trainer.state.global_step, out_dir if runner.resume else None))
        if not best.dev_curve or best.dev_curve[-1]["step"] != trainer.state.global_step:
            trainer.evaluate()
        watch.lap("train", minus=trainer.eval_seconds)
        watch.phases["dev_loss"] = trainer.eval_seconds
        if best.best_state is None or not math.isfinite(best.best_loss):
            raise FloatingPointError(f"no finite dev loss in {len(best.dev_curve)} evaluations: nothing to restore")
    best.restore()
    return Fit(dev={"loss": best.best_loss, "best_step": best.best_step},
               curve={"train": _log_curve(trainer.state.log_history), "dev": best.dev_curve},
               steps=trainer.state.global_step, batch=batch, is_main=trainer.is_world_process_zero(),
               report_to=report_to)


def _stopped(signum: int, step: int, ckpt_root: str | None) -> str:
    name = signal.Signals(signum).name
    if ckpt_root is None:
        return f"{name} after step {step}; runner.resume=false kept no checkpoint: a relaunch starts over"
    return f"{name} after step {step}, checkpoint {C.last_complete(ckpt_root)}; relaunch the same command to resume"


def make_trainer(cfg, kind: Kind, data: Data, method: Method, tok, device: str, out_dir: str, callbacks=(),
                 **overrides) -> tuple[HarnessTrainer, int]:
    """(the run's HarnessTrainer over its encoded training and dev rows, the effective batch): Appendix F's
    batch rule split into micro-batches and accumulation, the method's optimizer groups and callbacks after
    `callbacks`. `overrides` replace TrainingArguments (the `train` stage: resume and W&B; scripts/bench: no
    evaluation, a few steps)."""
    runner, what = cfg.runner, cfg.task.name
    train_rows, dev_rows = (kind.encode(data.splits[s], tok, cfg.task, data.labels, runner.max_seq_len,
                                        what=f"{what} {s}") for s in ("train", "dev"))
    batch = effective_batch(runner, data.n_train_full)
    micro, accumulation = split_batch(batch, runner.micro_batch_size, world()[1])
    steps_per_epoch = math.ceil(len(train_rows) / batch)
    total_steps = runner.max_steps if runner.max_steps > 0 else math.ceil(steps_per_epoch * runner.max_epochs)
    eval_steps = runner.eval_steps or steps_per_epoch  # null: once per epoch (ID-SPAM's epoch grid)
    args = TrainingArguments(**{
        "output_dir": out_dir, "per_device_train_batch_size": micro, "gradient_accumulation_steps": accumulation,
        "per_device_eval_batch_size": runner.eval_batch_size, "learning_rate": runner.lr,
        "num_train_epochs": runner.max_epochs, "max_steps": runner.max_steps,
        "lr_scheduler_type": runner.scheduler, "warmup_steps": math.ceil(runner.warmup_ratio * total_steps),
        "weight_decay": runner.weight_decay, "eval_strategy": "steps", "eval_steps": eval_steps,
        "save_strategy": "no", "save_steps": eval_steps, "save_total_limit": 2,
        "logging_steps": runner.logging_steps, "report_to": "none",
        "run_name": f"seed{cfg.seed}", "seed": cfg.seed, "data_seed": cfg.seed, "use_cpu": device == "cpu",
        "remove_unused_columns": False, "label_names": ["labels"], "dataloader_num_workers": 0,
        "train_sampling_strategy": "group_by_length" if runner.group_by_length else "random",
        "bf16": runner.dtype == "bfloat16", "fp16": runner.dtype == "float16",
        "deepspeed": runner.deepspeed, "activation_checkpointing": runner.gradient_checkpointing,
        "disable_tqdm": not show_progress(runner), **overrides})
    collator = kind.collator(tok.pad_token_id)
    labelled_only = runner.loss_positions == "labelled" and not kind.encoder  # encoders: class labels
    optimizer, method_callbacks = training_setup(method.built, runner, dev_rows, collator, batch_size=micro,
                                                 seed=cfg.seed, device=device, extra=method.head,
                                                 labelled_only=labelled_only)
    trainer = HarnessTrainer(model=method.model, args=args, train_dataset=train_rows, eval_dataset=dev_rows,
                             data_collator=collator, callbacks=[*callbacks, *method_callbacks],
                             optimizers=(optimizer, None), labelled_only=labelled_only)
    trainer.remove_callback(PrinterCallback)  # BestStateAndEarlyStop logs dev losses instead
    return trainer, batch


def evaluate(runner, task_cfg, data: Data, model, tok, device: str) -> tuple[dict, list[str] | None, dict]:
    """(dev metrics of generated dev answers if runner.dev_generation, test answers, test metrics); a selection
    run (runner.eval_test=false) reads no test row."""
    dev = {}
    if runner.dev_generation:
        dev_preds = predictions(model, tok, data.task, data.splits["dev"], task_cfg, runner, device, split="dev")
        dev = data.task.score(dev_preds, data.splits["dev"])
    if not runner.eval_test:
        return dev, None, {}
    test_preds = predictions(model, tok, data.task, data.splits["test"], task_cfg, runner, device)
    return dev, test_preds, data.task.score(test_preds, data.splits["test"])


def input_dependence(cfg, data: Data, model, tok, device: str) -> dict | None:
    """How much an input-aware method's generated prompts or vectors vary across the first test inputs
    (runners/input_dependence.py); None for other methods, encoders and selection runs."""
    if not cfg.runner.eval_test:
        return None
    max_prompt = max(8, cfg.runner.max_seq_len - cfg.task.max_new_tokens)  # as `predict` cuts the prompts
    return of_run(model, tok, data.splits["test"], cfg.task.template, max_prompt, cfg.runner.eval_batch_size, device)


def write_run(runner, path: str, record: dict, model, test_rows, test_preds, fit: Fit) -> dict:
    """The record, the test predictions and the best PEFT weights, atomically, by rank 0; W&B closed; the
    run's checkpoints removed."""
    R.validate_record(record)
    wandb_dir = _wandb_finish(record) if fit.report_to == "wandb" else None
    if wandb_dir:
        record["wandb_dir"] = wandb_dir
    files = [path.replace(".json", ".peft.safetensors"), path.replace(".json", ".predictions.jsonl")]
    try:
        with gathered(trainable_parameters(model)):  # every rank enters it; rank 0 writes
            if fit.is_main and runner.save_peft:  # the best dev state, loadable with pefts.io.load_peft
                try:
                    save_peft(model, files[0])
                except OSError as e:
                    raise R.write_error(e, files[0]) from None
                record["peft_weights"] = os.path.basename(files[0])
        if fit.is_main:
            if test_preds is not None:
                R.write_jsonl(files[1], prediction_rows(test_rows, test_preds))
            R.write_json(path, record)  # last: a record marks the run finished
    except R.WriteError:
        for f in files:  # no half-written run: the weights and answers go with the record they belong to
            with contextlib.suppress(OSError):
                os.remove(f)
        raise
    if runner.resume and fit.is_main:
        C.remove(C.ckpt_root(path))  # the record is written: its checkpoints are no longer needed
    log.info("wrote %s (%s, %.0f s)", path, record["metrics"], record["wall_time_s"])
    return record


# ---- settings, answers, logging -----------------------------------------------------------------------


def validate_settings(cfg) -> None:
    """Runner and generation settings checked before any data or model is loaded (one line each)."""
    r, t = cfg.runner, cfg.task
    positive = {"runner.num_beams": r.num_beams, "runner.eval_batch_size": r.eval_batch_size,
                "runner.micro_batch_size": r.micro_batch_size,
                "runner.patience": r.patience, "runner.max_seq_len": r.max_seq_len,
                "runner.logging_steps": r.logging_steps, "task.max_new_tokens": t.max_new_tokens}
    for key, value in positive.items():
        if value is None or value < 1:
            raise UserError(f"{key}={value} must be an integer >= 1")
    if not 0 <= cfg.seed < 2**32:
        raise UserError(f"seed={cfg.seed} must be an integer in [0, 2^32) (the seeds numpy and torch accept)")
    if r.max_steps == 0 or r.max_steps < -1:
        raise UserError(f"runner.max_steps={r.max_steps} must be >= 1, or -1 (no step cap: runner.max_epochs decides)")
    if not r.max_epochs > 0:
        raise UserError(f"runner.max_epochs={r.max_epochs} must be > 0")
    if not 0 <= r.warmup_ratio <= 1:
        raise UserError(f"runner.warmup_ratio={r.warmup_ratio} must lie in [0, 1] (the share of steps that warm up)")
    if r.weight_decay < 0:
        raise UserError(f"runner.weight_decay={r.weight_decay} must be >= 0")
    for key, value in (("small_batch_size", r.small_batch_size), ("large_batch_size", r.large_batch_size)):
        if value < 1:
            raise UserError(f"runner.{key}={value} must be an integer >= 1")
    if r.eval_steps is not None and r.eval_steps < 1:
        raise UserError(f"runner.eval_steps={r.eval_steps} must be an integer >= 1, or null (once per epoch)")
    if not r.lr > 0:
        raise UserError(f"runner.lr={r.lr} must be > 0")
    if r.batch_size is not None and r.batch_size < 1:
        raise UserError(f"runner.batch_size={r.batch_size} must be >= 1 or null (Appendix F's rule)")
    if r.max_seq_len <= t.max_new_tokens + 8:
        raise UserError(f"runner.max_seq_len={r.max_seq_len} leaves no room for a prompt before "
                        f"task.max_new_tokens={t.max_new_tokens} new tokens")
    if r.dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise UserError(f"runner.dtype='{r.dtype}' is not one of auto, float32, bfloat16, float16")
    for key, value in (("max_train_examples", r.max_train_examples), ("max_dev_examples", r.max_dev_examples),
                       ("max_test_examples", r.max_test_examples)):
        if value is not None and value < 1:
            raise UserError(f"runner.{key}={value} must be >= 1 or null (all rows)")
    if r.loss_positions not in LOSS_POSITIONS:
        raise UserError(f"runner.loss_positions='{r.loss_positions}' is not one of {', '.join(LOSS_POSITIONS)}")
    if r.scoring not in SCORINGS:
        raise UserError(f"runner.scoring='{r.scoring}' is not one of {', '.join(SCORINGS)}")
    if r.progress not in ("auto", "on", "off"):
        raise UserError(f"runner.progress='{r.progress}' is not one of auto, on, off")
    n_gpus = torch.cuda.device_count() if resolve_device(r.device) == "cuda" else 0
    if n_gpus > 1 and world()[1] == 1:
        raise UserError(f"{n_gpus} GPUs are visible to one process: HF Trainer would wrap the model in DataParallel "
                        f"and run {n_gpus}x the batch; launch `torchrun --nproc_per_node={n_gpus} run.py ...` "
                        "(docs/cluster.md), or set CUDA_VISIBLE_DEVICES=0 for one GPU")


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name not in ("cpu", "cuda"):
        raise UserError(f"runner.device='{name}' is not one of auto, cpu, cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("runner.device='cuda' but no CUDA device is available; use runner.device=cpu or auto")
    return name


def resolve_dtype(name: str, device_name: str) -> str:
    """runner.dtype=auto: bfloat16 on a CUDA device that supports it (Ampere and newer), float32 otherwise
    (CPUs, older GPUs). Resolved before the config is recorded, so a record names the dtype it ran with."""
    if name != "auto":
        return name
    cuda = resolve_device(device_name) == "cuda"
    return "bfloat16" if cuda and torch.cuda.is_bf16_supported() else "float32"


def show_progress(runner) -> bool:
    """Progress bars: runner.progress=on/off, or auto: on a terminal, off in CI and in logs."""
    if runner.progress != "auto":
        return runner.progress == "on"
    return sys.stderr.isatty() and not os.environ.get("CI")


def task_data_dir(cfg) -> str | None:
    """`data_dir`, or <data_root>/<task.local_dir> when only `data_root` is given (a grid over tasks)."""
    if cfg.data_dir or not cfg.get("data_root"):
        return cfg.data_dir
    local = cfg.task.get("local_dir")
    if not local:
        raise UserError(f"task {cfg.task.name} has no local files under data_root={cfg.data_root} "
                        "(task.local_dir is null); give data_dir=<folder>, or no data_root to use the hub")
    return os.path.join(cfg.data_root, local)


def world() -> tuple[int, int]:
    """(rank, world size) of this process: set by torchrun and the deepspeed launcher, else (0, 1)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def split_batch(batch: int, micro_batch_size: int, world_size: int = 1) -> tuple[int, int]:
    """(rows per device per step, gradient accumulation steps) with rows x accumulation x world_size == batch,
    so the Appendix F effective batch is the same on 1 process or N; micro_batch_size caps the rows per device."""
    if batch % world_size:
        raise UserError(f"runner.batch_size={batch} is not divisible by the {world_size} processes (WORLD_SIZE)")
    per_device = batch // world_size
    micro = min(micro_batch_size, per_device)
    if per_device % micro:
        raise UserError(f"runner.batch_size={batch} is not a multiple of runner.micro_batch_size={micro}"
                        + (f" x {world_size} processes" if world_size > 1 else ""))
    return micro, per_device // micro


@contextlib.contextmanager
def run_lock(path: str, break_lock: bool = False):
    """R.run_lock, taken by rank 0 alone for all the processes of a torchrun/deepspeed launch. There a lock
    held by another launch is an error (exit 2), not a skip: the launcher then stops the other ranks, which
    would otherwise wait for rank 0 forever."""
    rank, world_size = world()
    with contextlib.ExitStack() as stack:
        if rank == 0:
            try:
                stack.enter_context(R.run_lock(path, break_lock))
            except R.RunLocked as e:
                if world_size == 1:
                    raise
                raise UserError(f"{e}; a {world_size}-process launch stops here") from None
        yield


def effective_batch(runner, n_train: int) -> int:
    """Appendix F: 16 for tasks with fewer than 10k training rows, 128 otherwise (unless set)."""
    if runner.batch_size:
        return int(runner.batch_size)
    return runner.small_batch_size if n_train < runner.small_task_threshold else runner.large_batch_size


def capped(splits: dict, runner) -> dict:
    caps = {"train": runner.max_train_examples, "dev": runner.max_dev_examples, "test": runner.max_test_examples}
    return {k: v if caps[k] is None else v[: caps[k]] for k, v in splits.items()}


@torch.no_grad()
def predict(model, tok, examples, task_cfg, runner, device: str, split: str = "test") -> list[str]:
    """Generated responses (beam search through the LM head), in the order of `examples`."""
    model.eval()
    out = [""] * len(examples)
    max_prompt = max(8, runner.max_seq_len - task_cfg.max_new_tokens)
    batches = prompt_batches(examples, tok, task_cfg.template, max_prompt, runner.eval_batch_size,
                             what=f"{task_cfg.name} {split} generation")
    for ids, mask, idx in tqdm(batches, total=math.ceil(len(examples) / runner.eval_batch_size), desc="generate",
                               unit="batch", disable=not show_progress(runner), leave=False):
        gen = model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=task_cfg.max_new_tokens,
            num_beams=runner.num_beams, do_sample=False, pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
        texts = tok.batch_decode(gen[:, ids.shape[1]:], skip_special_tokens=True)
        for i, t in zip(idx, texts):
            out[i] = t.strip()
    return out


def predictions(model, tok, task, examples, task_cfg, runner, device: str, split: str = "test") -> list[str]:
    """Test (or dev) answers by `runner.scoring`: generated (the papers' protocol), the most likely label, or
    an encoder's classification head."""
    if runner.scoring == "head":
        return predict_head(model, tok, examples, list(task.labels), runner.max_seq_len, runner.eval_batch_size,
                            device, progress=show_progress(runner), what=f"{task_cfg.name} {split}", task=task_cfg.name)
    if runner.scoring == "likelihood":
        labels = check_labels(task, examples, task_cfg.name)
        return predict_likelihood(model, tok, examples, labels, task_cfg.template, runner.max_seq_len,
                                  runner.eval_batch_size, device, progress=show_progress(runner),
                                  what=f"{task_cfg.name} {split} likelihood")
    return predict(model, tok, examples, task_cfg, runner, device, split=split)


def prediction_rows(examples, predictions) -> list[dict]:
    return [{"id": e.id, "prompt": e.query, "prediction": p, "reference": e.references}
            for e, p in zip(examples, predictions)]


def _log_curve(log_history: list[dict]) -> list[dict]:
    return [{"step": h["step"], "train_loss": h["loss"]} for h in log_history if "loss" in h and "step" in h]


def _wandb_start(cfg, config: dict, cell: str) -> str:
    """Start a W&B run (offline without an API key); returns the Trainer `report_to` value."""
    mode = wandb_mode(cfg.logger)
    if mode is None or world()[0] != 0:  # one W&B run per launch
        return "none"
    import wandb

    wandb.init(project=cfg.logger.project, group=f"{cfg.backbone.name}/{cfg.task.name}/{cell}",
               name=f"seed{cfg.seed}", config=config, mode=mode, dir=os.path.abspath(cfg.logger.dir),
               reinit="finish_previous")
    return "wandb"


def _wandb_finish(record: dict) -> str | None:
    try:
        import wandb
    except ImportError:
        return None
    if wandb.run is None:
        return None
    flat = {f"test/{k}": v for k, v in record["metrics"].items()}
    flat.update({f"dev/{k}": v for k, v in record["dev"].items() if isinstance(v, int | float)})
    flat.update({"params/trainable": record["params"]["trainable"], "wall_time_s": record["wall_time_s"]})
    wandb.run.summary.update(flat)
    where = wandb.run.dir
    wandb.finish()
    return os.path.dirname(where)


class RunFailed(Exception):
    """A run raised after it started; its failed record (error and traceback) is at `path`."""

    def __init__(self, error: BaseException, path: str):
        super().__init__(f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''} "
                         f"(failed record with the traceback: {path})")
        self.error, self.path = error, path


def out_of_memory_hint(error: BaseException, runner, where: str) -> str:
    """One line for an out-of-memory failure, naming the runner options that lower memory."""
    first = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
    hints = [f"runner.micro_batch_size={max(1, runner.micro_batch_size // 2)} (now {runner.micro_batch_size}; "
             "gradient accumulation keeps the effective batch)",
             f"runner.eval_batch_size={max(1, runner.eval_batch_size // 2)} (now {runner.eval_batch_size})",
             f"runner.max_seq_len (now {runner.max_seq_len})"]
    if not runner.gradient_checkpointing:
        hints.append("runner.gradient_checkpointing=true")
    if runner.dtype == "float32":
        hints.append("runner.dtype=bfloat16")
    return f"out of memory ({first}); lower memory with {', '.join(hints)} (failed record: {where})"


