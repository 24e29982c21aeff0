"""The runner's side of the method contract (pefts/registry.py `MethodBuild`): the optimizer from a
method's parameter groups, and IAPT's bi-level optimization (iapt.txt Appendix B, F), first-order DARTS.

Ω (all trainable parameters except the architecture parameters Θ, e.g. the rational activations'
coefficients) is updated by the Trainer's AdamW on training batches (lr 1e-4); after every Ω step, Θ takes
one AdamW step on a dev batch with its own learning rate (1e-6). Θ is excluded from the Trainer's
optimizer, so it moves only on dev steps. A method opts in by returning `MethodBuild(bilevel=Bilevel(Θ,
lr, until))` (IAPT, SPT and Learned-Adapter with `bilevel: true`; SSP during its search, `until =
search_frac`); without it Θ trains jointly with Ω.

Θ is frozen (`requires_grad=False`) from the start of every training step to its end, so the Trainer's
backward never computes Θ's gradients and its gradient-norm clipping sees Ω's alone (with Θ trainable,
|g_Θ| of 1e3-1e4 against |g_Ω| of 8-98 on SmolLM2, as measured in issue #9, scaled Ω's update by 1e-4 at every step). The dev step
asks autograd for Θ's gradients only, so Ω's `.grad` is never touched there. Between steps (evaluation,
the best-state copy, saving) Θ is trainable again, so it is kept and saved with the other PEFT weights.

    optimizer, callbacks = training_setup(build, runner, dev_rows, collator, batch_size=16, seed=0, device="cpu")
"""

from __future__ import annotations

import math
import random

import torch
from transformers import TrainerCallback

from pefts.registry import MethodBuild, ParamGroup
from runners.trainer import labelled_positions


class BilevelCallback(TrainerCallback):
    def __init__(self, model, arch_params: list[torch.nn.Parameter], dev_rows: list[dict], collator,
                 lr: float, batch_size: int, seed: int, device: str, until: float = 1.0,
                 labelled_only: bool = False):
        assert arch_params, "bi-level optimization needs architecture parameters"
        assert dev_rows, "bi-level optimization needs dev rows"
        self.model, self.params, self.rows, self.collator = model, arch_params, dev_rows, collator
        self.batch_size, self.device = batch_size, device
        self.opt = torch.optim.AdamW(arch_params, lr=lr, weight_decay=0.0)
        self.rng = random.Random(seed)
        self.order: list[int] = []
        self.dev_steps = 0
        self.until, self.last_step = until, None  # dev steps while global_step <= ceil(until x max_steps)
        self.labelled_only = labelled_only  # the dev loss from the labelled columns only (runners/trainer.py)

    def _next_batch(self) -> dict:
        if len(self.order) < self.batch_size:
            more = list(range(len(self.rows)))
            self.rng.shuffle(more)
            self.order += more
        idx, self.order = self.order[: self.batch_size], self.order[self.batch_size :]
        batch = {k: v.to(self.device) for k, v in self.collator([self.rows[i] for i in idx]).items()}
        return {**batch, **labelled_positions(batch["labels"])} if self.labelled_only else batch

    def state_dict(self) -> dict:  # runners/checkpoint.py: Θ's optimizer and the dev-batch stream
        return {"opt": self.opt.state_dict(), "rng": self.rng.getstate(), "order": list(self.order),
                "dev_steps": self.dev_steps}

    def load_state_dict(self, state: dict) -> None:
        self.opt.load_state_dict(state["opt"])
        self.rng.setstate(state["rng"])
        self.order, self.dev_steps = list(state["order"]), state["dev_steps"]

    def _trainable(self, flag: bool) -> None:
        for p in self.params:
            p.requires_grad_(flag)

    def on_train_begin(self, args, state, control, **kw):
        self.last_step = math.ceil(self.until * state.max_steps)

    def on_step_begin(self, args, state, control, **kw):
        self._trainable(False)  # the training step's backward and clipping see Ω alone

    def on_step_end(self, args, state, control, **kw):
        self._trainable(True)
        if self.last_step is not None and state.global_step > self.last_step:
            return
        was_training = self.model.training
        self.model.train()
        for p in self.params:
            p.grad = None
        loss = self.model(**self._next_batch()).loss
        grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        for p, g in zip(self.params, grads):
            p.grad = g
        self.opt.step()
        for p in self.params:
            p.grad = None
        self.dev_steps += 1
        self.model.train(was_training)


def make_optimizer(model, runner, groups: list[ParamGroup] | None = None, exclude=(), extra=()):
    """AdamW (betas and epsilon from the runner) over the method's parameter groups (or every trainable
    parameter), minus `exclude` (the bi-level Θ), plus `extra` (an encoder's classification head) as a group
    of its own; a group's lr / weight decay default to runner.lr / runner.weight_decay."""
    skip = {id(p) for p in exclude}
    if groups is None:
        groups = [ParamGroup([p for p in model.parameters() if p.requires_grad])]
    else:
        covered = {id(p) for g in groups for p in g.params}
        extra = [p for p in extra if id(p) not in covered]
        groups = [*groups, ParamGroup(list(extra))] if extra else groups
    torch_groups = []
    for g in groups:
        params = [p for p in g.params if id(p) not in skip]
        if params:
            torch_groups.append({"params": params, "lr": runner.lr if g.lr is None else g.lr,
                                 "weight_decay": runner.weight_decay if g.weight_decay is None else g.weight_decay})
    return torch.optim.AdamW(torch_groups, lr=runner.lr, betas=(runner.adam_beta1, runner.adam_beta2),
                             eps=runner.adam_epsilon)


def training_setup(build: MethodBuild, runner, dev_rows, collator, batch_size: int, seed: int, device: str,
                   extra=(), labelled_only: bool = False):
    """(optimizer, callbacks) for a method: the bi-level dev steps first (so a method callback at the same
    step, such as SSP's pruning, sees the step's Θ update), then the method's own callbacks."""
    theta = [p for p in build.bilevel.params if p.requires_grad] if build.bilevel is not None else []
    callbacks = []
    if theta:
        callbacks.append(BilevelCallback(build.model, theta, dev_rows, collator, lr=build.bilevel.lr,
                                         batch_size=batch_size, seed=seed, device=device,
                                         until=build.bilevel.until, labelled_only=labelled_only))
    callbacks += list(build.callbacks)
    return make_optimizer(build.model, runner, build.param_groups, exclude=theta, extra=extra), callbacks
