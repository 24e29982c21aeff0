"""PARADE (parade.txt): prompt-aware scaling vectors for Query, Value and FFN Up in every layer.

    eqs. 4-5  Q' = l_q * Q, V' = l_v * V, FFN (g(G) * U') W_D with U' = l_u * U
    eq. 6     l = g(Pooler(h W_down)) W_up + b_up, split into l_q, l_v, l_u (h: instruction states
              entering the layer); generated once at prefill and kept for decode steps
    eqs. 7-10 Pooler: attentional capsule network, K = 4 capsules, one routing step
    4.3       r = 12, g = GeLU, W_down / capsules ~ Uniform(std 0.02), W_up = 0, b_up = 1 (starts as the
              frozen model); ablation PARADE-3 adds l_k and l_gate (targets: [q, k, v, gate, up])

On LLaMA-2 7B: 9.57M tunable parameters with b_up (paper: 8.9M, which leaves b_up out;
docs/deviations-blocks.md). GQA: l_k, l_v have num_key_value_heads * head_dim entries.

    python run.py method=parade method.targets=[q,k,v,gate,up] method.bottleneck=8
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pefts.blocks.generators import bank_factory
from pefts.family import build_family
from pefts.registry import MethodConfig, register_method


@dataclass
class ParadeConfig(MethodConfig):
    name: str = "parade"
    bottleneck: int = 12
    num_capsules: int = 4
    routing_iters: int = 1
    activation: str = "gelu"
    targets: list[str] = field(default_factory=lambda: ["q", "v", "up"])
    layers: Any = "all"


@register_method("parade", ParadeConfig, size_knob="bottleneck")
def build(model, cfg: ParadeConfig):
    factory = bank_factory(
        share_every=1, bottleneck=cfg.bottleneck, pooler="capsule",
        pooler_kwargs=dict(num_capsules=cfg.num_capsules, routing_iters=cfg.routing_iters),
        activation=cfg.activation, down_bias=False, init="zero_up_ones_bias", init_dist="uniform")
    return build_family(model, injector="scaling", layers=cfg.layers, targets=tuple(cfg.targets),
                        generator_factory=factory)
