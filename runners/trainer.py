"""The Trainer pieces of a run: HF Trainer with the harness's checkpoints and non-finite-loss stop, the
callback that keeps the best dev state and stops early, and ZeRO-3 parameter gathering.

Used by runners/train.py (its `train` stage); nothing here reads a config.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import threading
import time

import torch
from transformers import Trainer, TrainerCallback

from pefts.io import load_peft, save_peft
from runners import checkpoint as C
from runners import results as R

log = logging.getLogger(__name__)


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


class Preempted(Exception):
    """SIGTERM or SIGINT stopped training after a finished optimizer step (`StopOnSignal`); the message says
    where the checkpoint is. Not a failure: no record and no failed record are written."""


class StopOnSignal(TrainerCallback):
    """Preemption: inside `installed()`, SIGTERM (Slurm's warning before the kill, a requeue) or SIGINT sets a
    flag; at the end of the optimizer step under way the callback asks Trainer for a checkpoint and a stop,
    and the `train` stage raises Preempted (run.py: exit code 75). A second signal aborts at once. In a
    multi-process launch the flag is reduced over the ranks at every step end, so all stop at the same step."""

    def __init__(self):
        self.signum: int | None = None

    def _handler(self, signum, frame):
        if self.signum is not None:  # the second signal: do not wait for the step
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}")
        self.signum = signum
        log.warning("%s: stopping after this optimizer step, with a checkpoint", signal.Signals(signum).name)

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread
            yield self
            return
        old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
        for s in old:
            signal.signal(s, self._handler)
        try:
            yield self
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def on_step_end(self, args, state, control, **kw):
        stop = self.signum is not None
        if torch.distributed.is_available() and torch.distributed.is_initialized() and args.world_size > 1:
            flag = torch.tensor([float(stop)], device=args.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            stop = bool(flag.item())
            if stop and self.signum is None:
                self.signum = int(signal.SIGTERM)  # another rank was signalled
        if stop:
            control.should_save = True
            control.should_training_stop = True


LOSS_POSITIONS = ("labelled", "all")  # runner.loss_positions


def labelled_positions(labels: torch.Tensor) -> dict:
    """Keyword arguments that make a causal LM project only the columns whose next token is labelled (in any
    row of the batch) onto the vocabulary, with those columns' targets: transformers' own `logits_to_keep`
    (a 1-D tensor of columns) and `shift_labels` ([B, K], -100 where a row has no label there), which its
    causal-LM loss uses instead of shifting `labels`. Rows answer in 1-3 tokens of 40-100, so the vocabulary
    projection (SmolLM2: 576 x 49152, a fifth of the model's FLOPs) and the log-softmax run on a few columns
    instead of all. Every method's forward honours both (peft passes them through; FamilyModel and
    PromptInserter move the columns past their soft positions; tests/test_methods.py checks all)."""
    shift = torch.nn.functional.pad(labels, (0, 1), value=-100)[:, 1:]
    keep = (shift != -100).any(0).nonzero().flatten()
    return {"logits_to_keep": keep, "shift_labels": shift[:, keep].contiguous()}


class HarnessTrainer(Trainer):
    """HF Trainer that stops at the first non-finite training loss (Trainer's own `logging_nan_inf_filter`
    would replace it by the running mean in the logs and keep training on NaN weights), and whose
    checkpoints hold the PEFT tensors alone plus the callbacks' state (runners/checkpoint.py): Trainer's
    `_save` would write the whole backbone (540 MB for SmolLM2) at every evaluation."""

    def __init__(self, *args, labelled_only: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_seconds = 0.0  # wall time inside evaluate() (dev loss), for the record's timing_s
        self.labelled_only = labelled_only  # runner.loss_positions=labelled on a decoder: `labelled_positions`

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # Trainer's own loss path (num_items_in_batch, accumulation, device scaling), with the model asked for
        # the labelled columns' logits only. Dev loss (prediction_step) comes through here too; its outputs are
        # not kept (prediction_loss_only).
        if self.labelled_only and "labels" in inputs:
            inputs = {**inputs, **labelled_positions(inputs["labels"])}
        return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                    num_items_in_batch=num_items_in_batch)

    def evaluate(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return super().evaluate(*args, **kwargs)
        finally:
            self.eval_seconds += time.perf_counter() - t0

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        with gathered(trainable_parameters(self.model)):  # under DeepSpeed every rank calls _save
            if self.args.should_save:
                save_peft(self.model, os.path.join(output_dir or self.args.output_dir, "peft.safetensors"))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        load_peft(model if model is not None else self.model, os.path.join(resume_from_checkpoint, "peft.safetensors"))

    def _save_checkpoint(self, model, trial) -> None:
        try:
            super()._save_checkpoint(model, trial)
        except OSError as e:
            raise R.write_error(e, "a checkpoint") from None
        except RuntimeError as e:  # torch.save reports a failed write (disk full) as a RuntimeError
            if "write" not in str(e).lower():
                raise
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise R.WriteError(f"cannot write a checkpoint in {self.args.output_dir} ({reason}); free space or "
                               "choose a writable results_dir= (or $HARNESS_RESULTS)") from None
        folder = os.path.join(self.args.output_dir, f"checkpoint-{self.state.global_step}")
        if self.args.should_save and os.path.isdir(folder):
            C.save_callbacks(folder, self.callback_handler.callbacks)

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not bool(torch.isfinite(loss).all()):
            raise FloatingPointError(f"training loss is {loss.item()} at step {self.state.global_step + 1}; "
                                     "lower runner.lr, or use runner.dtype=float32")
        return loss
