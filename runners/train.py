"""One run: (backbone, method, task, seed) -> results/runs/<backbone>/<task>/<cell>/seed<k>.json.

Protocol (iapt.txt Appendix F, as conf/runner/default.yaml): HF Trainer, AdamW, linear decay after 6%
warm-up, dev loss every `eval_steps`, early stopping after `patience` evaluations without a lower dev
loss, the best dev state (of the trainable parameters only: no backbone checkpoints) restored for
test predictions, generated through the LM head with beam search.

Encoder backbones (RoBERTa, the ID-SPAM setting) train a new classification head with every method: the
head is trainable beside the method's parameters (and saved with them), the rows are the raw sentence
(pairs) with class-id labels, and test answers are the head's argmax (`runner.scoring=head`); conf/runner/
idspam.yaml is ID-SPAM's own optimisation protocol.

    python run.py backbone=tiny method=lora task=rte runner=debug data_dir=../shared/data/glue/RTE
    python run.py backbone=tiny-roberta method=idspam task=rte runner=idspam data_dir=../shared/data/glue/RTE
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import tempfile
import time

import torch
from tqdm.auto import tqdm
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments, set_seed

from core.errors import UserError
from pefts.blocks.arch import arch_for, is_encoder
from pefts.io import load_peft, save_peft
from pefts.registry import build_peft
from runners import checkpoint as C
from runners import results as R
from runners.backbones import load_backbone
from runners.bilevel import training_setup
from runners.data import ClassCollator, TrainCollator, encode_classification, encode_train, prompt_batches
from runners.scoring import SCORINGS, check_labels, predict_head, predict_likelihood
from tasks.registry import build_task

log = logging.getLogger(__name__)
ZERO_SHOT = R.ZERO_SHOT


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


def gathered(params, modify: bool = False):
    """DeepSpeed ZeRO-3 leaves each rank a slice of every parameter (p.data is empty outside forward): the full
    tensors, to read them, or to write them (modify=True: rank 0's values are kept). A no-op otherwise. Collective
    under ZeRO-3: every rank must enter it."""
    params = [p for p in params if hasattr(p, "ds_id")]
    if not params:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=0 if modify else None)


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


@contextlib.contextmanager
def run_lock(path: str):
    """R.run_lock, taken by rank 0 alone for all the processes of a torchrun/deepspeed launch. There a lock
    held by another launch is an error (exit 2), not a skip: the launcher then stops the other ranks, which
    would otherwise wait for rank 0 forever."""
    rank, world_size = world()
    with contextlib.ExitStack() as stack:
        if rank == 0:
            try:
                stack.enter_context(R.run_lock(path))
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


class BestStateAndEarlyStop(TrainerCallback):
    """Keeps an in-memory copy of the trainable parameters at the lowest dev loss, stops after
    `patience` evaluations without improvement, and records the dev-loss curve."""

    def __init__(self, model: torch.nn.Module, patience: int):
        self.model, self.patience = model, patience
        self.best_loss, self.best_step, self.bad = math.inf, None, 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.dev_curve: list[dict] = []

    def on_evaluate(self, args, state, control, metrics=None, **kw):
        loss = (metrics or {}).get("eval_loss")
        if loss is None:
            return
        self.dev_curve.append({"step": state.global_step, "dev_loss": float(loss)})
        log.info("step %d: dev loss %.4f", state.global_step, loss)
        if loss < self.best_loss:
            self.best_loss, self.best_step, self.bad = float(loss), state.global_step, 0
            with gathered(trainable_parameters(self.model)):
                self.best_state = {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}
        else:
            self.bad += 1
            if self.bad >= self.patience:
                control.should_training_stop = True

    def state_dict(self) -> dict:  # runners/checkpoint.py: what a resumed run needs to continue exactly
        return {"best_loss": self.best_loss, "best_step": self.best_step, "bad": self.bad,
                "best_state": self.best_state, "dev_curve": self.dev_curve}

    def load_state_dict(self, state: dict) -> None:
        self.best_loss, self.best_step, self.bad = state["best_loss"], state["best_step"], state["bad"]
        self.best_state, self.dev_curve = state["best_state"], list(state["dev_curve"])

    def restore(self) -> None:
        if self.best_state is None:
            return
        params = dict(self.model.named_parameters())
        with torch.no_grad(), gathered(trainable_parameters(self.model), modify=True):
            for n, v in self.best_state.items():
                params[n].copy_(v)


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


def resolve_scoring(cfg) -> str:
    """runner.scoring for this backbone: an encoder answers with its head (`generate` resolves to `head`);
    a decoder has no head. Resolved before the config is recorded."""
    scoring, encoder = cfg.runner.scoring, is_encoder(cfg.backbone.architecture)
    if encoder and scoring == "generate":
        return "head"
    if encoder and scoring != "head":
        raise UserError(f"runner.scoring={scoring}: backbone '{cfg.backbone.name}' is an encoder and answers with "
                        "its classification head (runner.scoring=head)")
    if not encoder and scoring == "head":
        raise UserError(f"runner.scoring=head needs an encoder backbone (roberta-base, roberta-large, tiny-roberta); "
                        f"'{cfg.backbone.name}' is a decoder: use generate or likelihood")
    return scoring


def head_labels(task, cfg) -> list[str]:
    """An encoder's classes: the task's label words in hub class-id order; one line for tasks without them."""
    labels = list(getattr(task, "labels", None) or [])
    if not labels:
        raise UserError(f"backbone '{cfg.backbone.name}' is an encoder and trains a classification head; task "
                        f"'{cfg.task.name}' has no label set (encoders train on the GLUE tasks, IMDB, BoolQ, CB, MultiRC)")
    return labels


def head_parameters(model, architecture: str) -> list[torch.nn.Parameter]:
    """The parameters of an encoder's classification head (`Arch.head`), wherever a method wrapped it."""
    head = arch_for(architecture).head
    params = [p for n, p in model.named_parameters() if f".{head}." in f".{n}"]
    assert params, f"no '{head}' head parameters in {type(model).__name__}"
    return params


def train_head(model, architecture: str) -> list[torch.nn.Parameter]:
    """An encoder's new classification head, made trainable with every method unless the method already
    trains its own copy (peft's SEQ_CLS `modules_to_save`); returns the head parameters it unfroze."""
    params = head_parameters(model, architecture)
    if any(p.requires_grad for p in params):
        return []
    for p in params:
        p.requires_grad_(True)
    return params


def _log_curve(log_history: list[dict]) -> list[dict]:
    return [{"step": h["step"], "train_loss": h["loss"]} for h in log_history if "loss" in h and "step" in h]


def _wandb_start(cfg, config: dict, cell: str) -> str:
    """Start a W&B run (offline without an API key); returns the Trainer `report_to` value."""
    if cfg.logger.name == "none" or cfg.logger.mode == "disabled" or world()[0] != 0:  # one W&B run per launch
        return "none"
    import wandb

    mode = cfg.logger.mode
    if mode not in ("auto", "online", "offline"):
        raise UserError(f"logger.mode='{mode}' is not one of auto, online, offline, disabled")
    if mode == "auto":
        mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
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


def zero_shot(cfg, model, tok, splits, device, config: dict, protocol: str) -> dict:
    """Score the untrained backbone on test once per (backbone, task, runner): the reference row."""
    path = R.result_path(cfg, ZERO_SHOT).replace(f"seed{cfg.seed}.json", "seed0.json")
    done = R.load_finished(path, config, drop_method=True, force=cfg.force)
    if done:
        return done
    t0 = time.time()
    task = build_task(cfg.task)
    preds = predictions(model, tok, task, splits["test"], cfg.task, cfg.runner, device)
    metrics = task.score(preds, splits["test"])
    total = sum(p.numel() for p in model.parameters())
    record = {"schema": R.SCHEMA_VERSION, "backbone": cfg.backbone.name, "task": cfg.task.name,
              "method": ZERO_SHOT, "variant": None, "cell": ZERO_SHOT, "seed": 0, "status": "ok",
              "metrics": metrics, "dev": {}, "params": {"trainable": 0, "total": total},
              "config": config, "provenance": R.provenance(device), "wall_time_s": time.time() - t0,
              "curve": {"train": [], "dev": []}, "split_sizes": {k: len(v) for k, v in splits.items()},
              "protocol": protocol, "chance": task.chance}
    R.write_jsonl(path.replace(".json", ".predictions.jsonl"), prediction_rows(splits["test"], preds))
    R.write_json(path, record)
    return record


class RunFailed(Exception):
    """A run raised after it started; its failed record (error and traceback) is at `path`."""

    def __init__(self, error: BaseException, path: str):
        super().__init__(f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''} "
                         f"(failed record with the traceback: {path})")
        self.error, self.path = error, path


class HarnessTrainer(Trainer):
    """HF Trainer that stops at the first non-finite training loss (Trainer's own `logging_nan_inf_filter`
    would replace it by the running mean in the logs and keep training on NaN weights), and whose
    checkpoints hold the PEFT tensors alone plus the callbacks' state (runners/checkpoint.py): Trainer's
    `_save` would write the whole backbone (540 MB for SmolLM2) at every evaluation."""

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        with gathered(trainable_parameters(self.model)):  # under DeepSpeed every rank calls _save
            if self.args.should_save:
                save_peft(self.model, os.path.join(output_dir or self.args.output_dir, "peft.safetensors"))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        load_peft(model if model is not None else self.model, os.path.join(resume_from_checkpoint, "peft.safetensors"))

    def _save_checkpoint(self, model, trial) -> None:
        super()._save_checkpoint(model, trial)
        folder = os.path.join(self.args.output_dir, f"checkpoint-{self.state.global_step}")
        if self.args.should_save and os.path.isdir(folder):
            C.save_callbacks(folder, self.callback_handler.callbacks)

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not bool(torch.isfinite(loss).all()):
            raise FloatingPointError(f"training loss is {loss.item()} at step {self.state.global_step + 1}; "
                                     "lower runner.lr, or use runner.dtype=float32")
        return loss


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
    if r.scoring not in SCORINGS:
        raise UserError(f"runner.scoring='{r.scoring}' is not one of {', '.join(SCORINGS)}")
    if r.progress not in ("auto", "on", "off"):
        raise UserError(f"runner.progress='{r.progress}' is not one of auto, on, off")
    resolve_device(r.device)


def run(cfg) -> dict:
    """Run one (backbone, method, task, seed) cell, or return its finished record. One process trains
    a run at a time (a lock file); a run that raises leaves a failed record beside its result path."""
    if cfg.runner.dtype == "auto":
        cfg.runner.dtype = resolve_dtype("auto", cfg.runner.device)
    cfg.runner.scoring = resolve_scoring(cfg)
    config = R.to_container(cfg)
    path = R.result_path(cfg)
    done = R.load_finished(path, config, force=cfg.force)
    if done:
        log.info("skip: %s exists (force=true reruns it)", path)
        done["skipped"] = True
        return done
    validate_settings(cfg)
    R.check_cell(path, config)
    with run_lock(path):
        done = R.load_finished(path, config, force=cfg.force)  # finished by another process meanwhile?
        if done:
            done["skipped"] = True
            return done
        try:
            record = _run(cfg, config, path)
        except Exception as e:
            where = R.write_failed(path, _stub_record(cfg, config), e, stage="run")
            if isinstance(e, UserError):  # run.py prints its one line
                raise
            if isinstance(e, (torch.OutOfMemoryError, MemoryError)):
                raise UserError(out_of_memory_hint(e, cfg.runner, where)) from e
            log.error("run failed: %s (%s)", e, where)
            raise RunFailed(e, where) from e
        R.clear_failed(path)
        return record


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


def _stub_record(cfg, config: dict) -> dict:
    return {"schema": R.SCHEMA_VERSION, "backbone": cfg.backbone.name, "task": cfg.task.name,
            "method": cfg.method.name, "variant": cfg.variant, "cell": R.cell_name(cfg), "seed": cfg.seed,
            "config": config}


def _run(cfg, config: dict, path: str) -> dict:
    cell = R.cell_name(cfg)
    runner = cfg.runner
    t0 = time.time()
    if runner.num_threads:
        torch.set_num_threads(runner.num_threads)
    device = resolve_device(runner.device)
    if device == "cuda" and world()[1] > 1 and torch.cuda.device_count() > 1:  # torchrun/deepspeed: this rank's
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))  # GPU from the start, not every rank on GPU 0
    set_seed(cfg.seed)
    if runner.init_peft and not os.path.isfile(runner.init_peft):
        raise UserError(f"runner.init_peft='{runner.init_peft}' is not a file: it names another run's saved PEFT "
                        "weights (seed<k>.peft.safetensors beside its record; run that one first)")

    task = build_task(cfg.task)
    encoder = is_encoder(cfg.backbone.architecture)
    labels = head_labels(task, cfg) if encoder else None  # before any data is read
    full = task.splits(task_data_dir(cfg))
    n_train_full = len(full["train"])  # the batch-size rule looks at the task, not at a debug cap
    splits = capped(full, runner)
    sizes = {k: len(v) for k, v in splits.items()}
    eval_only = runner.zero_shot and not splits["train"]  # e.g. MMLU evaluated without training data
    if not splits["test"] or (not eval_only and (not splits["train"] or not splits["dev"])):
        raise UserError(f"task '{cfg.task.name}' gave empty splits: {sizes}")
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()  # an earlier cell's ZeRO-3 config (a global) would partition the backbone as it is built
    model, tok = load_backbone(cfg.backbone, cache_dir=runner.cache_dir, dtype=runner.dtype,
                               num_labels=len(labels) if encoder else None)
    for p in model.parameters():
        p.requires_grad_(False)
    model.to(device)
    if runner.zero_shot and encoder:
        log.warning("runner.zero_shot: no zero-shot row for an encoder (its new classification head is random)")
    elif runner.zero_shot and runner.eval_test and int(os.environ.get("RANK", "0")) == 0:  # one process writes it
        zs = zero_shot(cfg, model, tok, splits, device, config, task.protocol)
        log.info("zero-shot %s: %s", cfg.task.name, zs["metrics"])
        if eval_only:
            return zs

    set_seed(cfg.seed)  # method initialization depends on the seed only
    built = build_peft(model, cfg.method)
    model = built.model.to(device)
    head = train_head(model, cfg.backbone.architecture) if encoder else []
    if runner.init_peft:  # another run's tuned weights (and head) as the starting point
        try:
            load_peft(model, runner.init_peft)
        except ValueError as e:
            raise UserError(f"runner.init_peft: {e} (it must come from the same method on the same backbone)") from None
        log.info("started from the PEFT weights of %s", runner.init_peft)
    n_head = sum(p.numel() for p in head_parameters(model, cfg.backbone.architecture) if p.requires_grad) if encoder else 0
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    if trainable == 0:
        raise UserError(f"method '{cfg.method.name}' left no trainable parameters")

    if encoder:
        train_rows, dev_rows = (encode_classification(splits[s], tok, labels, runner.max_seq_len, what=f"{cfg.task.name} {s}",
                                                      task=cfg.task.name) for s in ("train", "dev"))
    else:
        train_rows, dev_rows = (encode_train(splits[s], tok, cfg.task.template, runner.max_seq_len,
                                             what=f"{cfg.task.name} {s}") for s in ("train", "dev"))
    batch = effective_batch(runner, n_train_full)
    micro, accumulation = split_batch(batch, runner.micro_batch_size, world()[1])
    steps_per_epoch = math.ceil(len(train_rows) / batch)
    total_steps = runner.max_steps if runner.max_steps > 0 else math.ceil(steps_per_epoch * runner.max_epochs)
    eval_steps = runner.eval_steps or steps_per_epoch  # null: once per epoch (ID-SPAM's epoch grid)
    report_to = _wandb_start(cfg, config, cell)
    best = BestStateAndEarlyStop(model, runner.patience)
    # checkpoints beside the record when resuming is on (runners/checkpoint.py), else a scratch folder
    out = contextlib.nullcontext(C.ckpt_root(path)) if runner.resume else tempfile.TemporaryDirectory(prefix="trainer-")
    with out as out_dir:
        resume_from = C.prepare(out_dir, config, force=cfg.force) if runner.resume else None
        args = TrainingArguments(
            output_dir=out_dir, per_device_train_batch_size=micro, gradient_accumulation_steps=accumulation,
            per_device_eval_batch_size=runner.eval_batch_size, learning_rate=runner.lr,
            num_train_epochs=runner.max_epochs, max_steps=runner.max_steps,
            lr_scheduler_type=runner.scheduler, warmup_steps=math.ceil(runner.warmup_ratio * total_steps),
            weight_decay=runner.weight_decay, eval_strategy="steps", eval_steps=eval_steps,
            save_strategy="steps" if runner.resume else "no", save_steps=eval_steps, save_total_limit=2,
            logging_steps=runner.logging_steps, report_to=report_to,
            run_name=f"seed{cfg.seed}", seed=cfg.seed, data_seed=cfg.seed, use_cpu=device == "cpu",
            remove_unused_columns=False, label_names=["labels"], dataloader_num_workers=0,
            bf16=runner.dtype == "bfloat16", fp16=runner.dtype == "float16",
            deepspeed=runner.deepspeed, activation_checkpointing=runner.gradient_checkpointing,
            disable_tqdm=not show_progress(runner),
            # step-0 dev loss (the start of the curve) inside train(), after the model is wrapped: a
            # trainer.evaluate() before train() marks it prepared, so Accelerate would skip DDP (no gradient sync)
            eval_on_start=not resume_from,
        )
        collator = ClassCollator(tok.pad_token_id) if encoder else TrainCollator(tok.pad_token_id)
        optimizer, method_callbacks = training_setup(built, runner, dev_rows, collator, batch_size=micro,
                                                     seed=cfg.seed, device=device, extra=head)
        trainer = HarnessTrainer(model=model, args=args, train_dataset=train_rows, eval_dataset=dev_rows,
                          data_collator=collator, callbacks=[best, *method_callbacks], optimizers=(optimizer, None))
        trainer.remove_callback(PrinterCallback)  # BestStateAndEarlyStop logs dev losses instead
        if resume_from:  # Trainer restores weights, optimizer, scheduler, RNG and data order; we the callbacks
            C.load_callbacks(resume_from, trainer.callback_handler.callbacks)
            log.info("resuming from %s", resume_from)
        trainer.train(resume_from_checkpoint=resume_from)
        if not best.dev_curve or best.dev_curve[-1]["step"] != trainer.state.global_step:
            trainer.evaluate()
        if best.best_state is None or not math.isfinite(best.best_loss):
            raise FloatingPointError(f"no finite dev loss in {len(best.dev_curve)} evaluations: nothing to restore")
        history = list(trainer.state.log_history)
        is_main = trainer.is_world_process_zero()
    best.restore()

    dev = {"loss": best.best_loss, "best_step": best.best_step}
    dev_preds = None
    if runner.dev_generation:
        dev_preds = predictions(model, tok, task, splits["dev"], cfg.task, runner, device, split="dev")
        dev.update(task.score(dev_preds, splits["dev"]))
    test_preds = predictions(model, tok, task, splits["test"], cfg.task, runner, device) if runner.eval_test else None
    metrics = task.score(test_preds, splits["test"]) if runner.eval_test else {}  # a selection run: dev only
    record = {
        "schema": R.SCHEMA_VERSION, "backbone": cfg.backbone.name, "task": cfg.task.name,
        "method": cfg.method.name, "variant": cfg.variant, "cell": cell, "seed": cfg.seed, "status": "ok",
        "metrics": metrics, "dev": dev, "params": {"trainable": trainable, "total": total, **({"head": n_head} if encoder else {})},
        "config": config, "provenance": R.provenance(device), "wall_time_s": time.time() - t0,
        "curve": {"train": _log_curve(history), "dev": best.dev_curve},
        "split_sizes": sizes, "protocol": task.protocol, "chance": task.chance,
        "steps": trainer.state.global_step, "effective_batch_size": batch,
    }
    R.validate_record(record)
    wandb_dir = _wandb_finish(record) if report_to == "wandb" else None
    if wandb_dir:
        record["wandb_dir"] = wandb_dir
    with gathered(trainable_parameters(model)):  # every rank enters it; rank 0 writes
        if is_main and runner.save_peft:  # the best dev state, loadable onto a fresh backbone with pefts.io.load_peft
            save_peft(model, path.replace(".json", ".peft.safetensors"))
            record["peft_weights"] = os.path.basename(path.replace(".json", ".peft.safetensors"))
    if is_main:
        if test_preds is not None:
            R.write_jsonl(path.replace(".json", ".predictions.jsonl"), prediction_rows(splits["test"], test_preds))
        R.write_json(path, record)
    if runner.resume and is_main:
        C.remove(C.ckpt_root(path))  # the record is written: its checkpoints are no longer needed
    log.info("wrote %s (%s, %.0f s)", path, metrics, record["wall_time_s"])
    return record
