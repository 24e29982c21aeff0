"""PARADE (parade.txt): prompt-aware scaling vectors for Query, Value and FFN Up in every layer.

    eqs. 4-5  Q' = l_q * Q, V' = l_v * V, FFN (g(G) * U') W_D with U' = l_u * U
    eq. 6     l = g(Pooler(h W_down)) W_up + b_up, split into l_q, l_v, l_u (h: instruction states
              entering the layer); generated once at prefill and kept for decode steps
    eqs. 7-10 Pooler: attentional capsule network, K = 4 capsules, one routing step
    4.3       r = 12, g = GeLU, W_down / capsules ~ Uniform(std 0.02), W_up = 0, b_up = 1 (starts as the
              frozen model); ablation PARADE-3 adds l_k and l_gate (targets: [q, k, v, gate, up])

On LLaMA-2 7B: 9.57M tunable parameters with b_up (paper: 8.9M, which leaves b_up out;
docs/deviations.md; `method.up_bias_trainable=false` keeps b_up = 1
constant and reproduces the paper's count). GQA: l_k, l_v have num_key_value_heads * head_dim entries.

Ablations (Table 6) are overrides: PARADE-1 pooler=last; PARADE-2 routing_init=uniform (Zhang et al.
2018's capsules, one iteration); PARADE-3 targets=[q,k,v,gate,up] bottleneck=8; PARADE-4 targets=[q,v]
bottleneck=24 (with up_bias_trainable=false they give the paper's 9.8M and 9.4M).

    python run.py method=parade method.targets=[q,k,v,gate,up] method.bottleneck=8
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pefts.blocks.generators import bank_factory
from pefts.family import build_family
from pefts.registry import Budget, MethodConfig, register_method


@dataclass
class ParadeConfig(MethodConfig):
    name: str = "parade"
    bottleneck: int = 12  # r: vector-generator width; tunable params grow linearly with it
    # attentional capsule pooler (eqs. 7-10); last = PARADE-1 (the last instruction token)
    pooler: str = "capsule"
    # eq. 9's attention-initialised routing; uniform = PARADE-2 (Zhang et al. 2018)
    routing_init: str = "attention"
    num_capsules: int = 4  # K: output capsules of the attentional capsule pooler (eqs. 7-10)
    routing_iters: int = 1  # refinement steps of the capsule routing (eq. 10); 0 = attention-only pooling
    activation: str = "gelu"  # g^vg between the pooler and W_up
    # scaled projections; [q, k, v, gate, up] = PARADE-3, [q, v] = PARADE-4
    targets: list[str] = field(default_factory=lambda: ["q", "v", "up"])
    layers: Any = "all"  # layers with a vector generator: all, or a list of indices
    # false: b_up stays the constant 1 it starts at (8.9M on LLaMA-2 7B, the paper's count)
    up_bias_trainable: bool = True


@register_method("parade", ParadeConfig, size_knob="bottleneck",
                 budget=Budget(pinned=9_566_208, paper=8.9e6, reachable=False))
def build(model, cfg: ParadeConfig):
    factory = bank_factory(
        share_every=1, bottleneck=cfg.bottleneck, pooler=cfg.pooler,
        pooler_kwargs=dict(num_capsules=cfg.num_capsules, routing_iters=cfg.routing_iters,
                           routing_init=cfg.routing_init) if cfg.pooler == "capsule" else None,
        activation=cfg.activation, down_bias=False, init="zero_up_ones_bias",
        up_bias_trainable=cfg.up_bias_trainable, init_dist="uniform")
    return build_family(model, injector="scaling", layers=cfg.layers, targets=tuple(cfg.targets),
                        generator_factory=factory)
