"""Learned-Adapter (Zhang et al., 2023c, "Learned Adapters Are Better Than Manually Designed Adapters"),
smallest faithful version: the block-parallel adapter of iapt.txt Appendix F ("bottleneck dimension 36
... connected to the whole block") whose encoding operation is searched, DARTS-style, per layer.

Each layer's bottleneck activation is a softmax(alpha)-weighted mixture of candidate operations
(relu, gelu, swish, tanh, identity), alpha (one logit per candidate) starting equal. The alphas are
architecture parameters: with `bilevel: true` the builder declares them (`MethodBuild.bilevel`) and the
runner updates them on dev batches (first-order DARTS, runners/bilevel.py) at `arch_lr`, the adapters on
training batches. Unlike the
paper, the soft mixture is kept at inference (no discretization and re-training) and the placement is
fixed by Appendix F rather than searched (docs/deviations.md).
On LLaMA-2 7B: 32 x (2 x 4096 x 36 + 36 + 4096 + 5) = 9,569,568 (Table 1: 9.5M).

    python run.py method=learned_adapter method.bottleneck=32
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from pefts.blocks.activations import ACTIVATIONS, ADAPTER_ACTIVATIONS
from pefts.blocks.arch import decoder_layers
from pefts.blocks.bottleneck import Bottleneck, ParallelAdapter, attach_block_hook
from pefts.blocks.common import any_weight, freeze, new_param
from pefts.registry import Bilevel, Budget, MethodBuild, MethodConfig, register_method


class MixedActivation(nn.Module):
    """sum_k softmax(alpha)_k op_k(x) over named candidate operations (DARTS mixed operation)."""

    def __init__(self, candidates: list[str], ref: torch.Tensor):
        super().__init__()
        unknown = sorted(set(candidates) - set(ADAPTER_ACTIVATIONS))
        assert candidates and not unknown, f"unknown candidate operations {unknown}; known: {sorted(ADAPTER_ACTIVATIONS)}"
        self.candidates = list(candidates)
        self.alpha = new_param(ref, len(candidates))
        self.ops = nn.ModuleList(ACTIVATIONS[c]() for c in self.candidates)  # parameter-free

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.softmax(self.alpha, 0).to(x.dtype)
        return sum(w[i] * op(x) for i, op in enumerate(self.ops))


@dataclass
class LearnedAdapterConfig(MethodConfig):
    name: str = "learned_adapter"
    bottleneck: int = 36  # adapter width (iapt.txt Appendix F)
    # operations mixed by softmax(alpha) inside the bottleneck
    candidates: list[str] = field(default_factory=lambda: ["relu", "gelu", "swish", "tanh", "identity"])
    scaling: float = 4.0  # s multiplying the adapter output (as parallel_adapter)
    # architecture logits (alpha) updated on dev batches, adapters on train batches (runners/bilevel.py)
    bilevel: bool = True
    # learning rate of alpha in the bi-level updates (DARTS's default; the papers give none)
    arch_lr: float = 3e-4


@register_method("learned_adapter", LearnedAdapterConfig, size_knob="bottleneck",
                 budget=Budget(pinned=9_569_568, paper=9.5e6))
def build(model, cfg: LearnedAdapterConfig):
    freeze(model)
    d = model.config.hidden_size
    alphas = []
    for layer in decoder_layers(model):
        ref = any_weight(layer)
        act = MixedActivation(list(cfg.candidates), ref)
        alphas.append(act.alpha)
        adapter = Bottleneck(d, cfg.bottleneck, ref, activation=act, scaling=cfg.scaling)
        attach_block_hook(layer, "peft_adapter", ParallelAdapter(adapter))
    return MethodBuild(model, bilevel=Bilevel(alphas, lr=cfg.arch_lr) if cfg.bilevel else None)
