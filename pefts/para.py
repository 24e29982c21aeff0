"""PARA (para.txt): prompt-aware scaling vectors from the last instruction token, every layer.

    eqs. 4-5  Q' = l_q * Q, V' = l_v * V, FFN (g(G) * U') W_D with U' = l_u * U
    eq. 6     l = g(Pooler(h) W_down) W_up + b_up, Pooler = the last instruction token's state
              (found by mask, any padding side); split into l_q, l_v, l_u; generated once at prefill
    4.3       r = 12, g = GeLU, W_down ~ N(0, 0.02), W_up = 0, b_up = 1 (starts as the frozen model)

On LLaMA-2 7B: 9.56M tunable parameters with b_up (paper: 8.9M without it; docs/deviations.md);
`method.up_bias_trainable=false` keeps b_up = 1 constant and reproduces the paper's count.

    python run.py method=para method.bottleneck=24
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pefts.blocks.generators import bank_factory
from pefts.family import build_family
from pefts.registry import Budget, MethodConfig, register_method


@dataclass
class ParaConfig(MethodConfig):
    name: str = "para"
    bottleneck: int = 12  # r: vector-generator width; tunable params grow linearly with it
    activation: str = "gelu"  # g^vg between W_down and W_up
    # scaled projections (the paper: Query, Value, Up)
    targets: list[str] = field(default_factory=lambda: ["q", "v", "up"])
    layers: Any = "all"  # layers with a vector generator: all, or a list of indices
    # false: b_up stays the constant 1 it starts at (8.9M on LLaMA-2 7B, the paper's count)
    up_bias_trainable: bool = True


@register_method("para", ParaConfig, size_knob="bottleneck",
                 budget=Budget(pinned=9_560_064, paper=8.9e6, reachable=False))
def build(model, cfg: ParaConfig):
    factory = bank_factory(share_every=1, bottleneck=cfg.bottleneck, pooler="last", pool_first=True,
                           activation=cfg.activation, down_bias=False, init="zero_up_ones_bias",
        up_bias_trainable=cfg.up_bias_trainable,
                           init_dist="normal")
    return build_family(model, injector="scaling", layers=cfg.layers, targets=tuple(cfg.targets),
                        generator_factory=factory)
