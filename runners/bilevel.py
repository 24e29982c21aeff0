"""IAPT's bi-level optimization (iapt.txt Appendix B, F), first-order DARTS style.

Ω (all trainable parameters except the architecture parameters Θ, e.g. the rational activations'
coefficients) is updated by the Trainer's AdamW on training batches (lr 1e-4); after every Ω step, Θ takes
one AdamW step on a dev batch with its own learning rate (1e-6). Θ is excluded from the Trainer's
optimizer, so it moves only on dev steps. A method opts in by exposing `architecture_parameters()` and
setting `bilevel: true` in its config; `bilevel: false` trains Θ jointly with Ω.
"""

from __future__ import annotations

import random

import torch
from transformers import TrainerCallback


class BilevelCallback(TrainerCallback):
    def __init__(self, model, arch_params: list[torch.nn.Parameter], dev_rows: list[dict], collator,
                 lr: float, batch_size: int, seed: int, device: str):
        assert arch_params, "bi-level optimization needs architecture parameters"
        assert dev_rows, "bi-level optimization needs dev rows"
        self.model, self.params, self.rows, self.collator = model, arch_params, dev_rows, collator
        self.batch_size, self.device = batch_size, device
        self.opt = torch.optim.AdamW(arch_params, lr=lr, weight_decay=0.0)
        self.rng = random.Random(seed)
        self.order: list[int] = []
        self.dev_steps = 0

    def _next_batch(self) -> dict:
        if len(self.order) < self.batch_size:
            more = list(range(len(self.rows)))
            self.rng.shuffle(more)
            self.order += more
        idx, self.order = self.order[: self.batch_size], self.order[self.batch_size :]
        batch = self.collator([self.rows[i] for i in idx])
        return {k: v.to(self.device) for k, v in batch.items()}

    def on_step_end(self, args, state, control, **kw):
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


def make_optimizer(model, runner, exclude: list[torch.nn.Parameter]):
    """AdamW over the trainable parameters minus `exclude`, with a method's own param groups when it
    declares `optimizer_param_groups(base_lr)` (e.g. DePT's separate embedding learning rate)."""
    skip = {id(p) for p in exclude}
    groups_fn = getattr(model, "optimizer_param_groups", None)
    if callable(groups_fn):
        groups = [dict(g, params=[p for p in g["params"] if id(p) not in skip]) for g in groups_fn(runner.lr)]
    else:
        groups = [{"params": [p for p in model.parameters() if p.requires_grad and id(p) not in skip]}]
    for g in groups:
        g.setdefault("weight_decay", runner.weight_decay)
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=runner.lr)
