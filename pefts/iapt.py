"""IAPT (iapt.txt): instruction-aware soft prompts, regenerated before every Transformer layer.

    eq. 1   p = MLP_up(g(Pooler(MLP_down(h))))   h: the instruction's states entering the layer
    eq. 2   Pooler: self-attention pooling, one learnable query per soft token (l_sp of them)
    eq. 3   g: rational activation of order (6, 5), initialised to approximate GeLU (learned, bi-level)
    3.3     p is concatenated to the layer's input, replacing the previous layer's prompt (footnote 3);
            generated once at prefill, reused from the KV cache
    3.6     every L_s layers share MLP_down, MLP_up and g; each layer keeps its own pooler
    4.3     l_sp = 4, m = 256, L_s = 4; Appendix B/F: activation coefficients on dev batches, lr 1e-6

On LLaMA-2 7B these settings give 16.8M tunable parameters (paper: 8.4M). `method.tie_up_down=true`
(W_up = W_down^T) reproduces 8.4M and keeps IAPT-2/IAPT-3 "comparable" (docs/deviations.md).
Ablations (Table 7) are overrides: IAPT-1 pooler=mean; IAPT-2 share_every=16 bottleneck=1024; IAPT-3
share_every=1 bottleneck=64; IAPT-4/5 activation=gelu/relu; IAPT-6 activation=[relu,gelu];
IAPT-7 activation=[gelu,relu] (lower half, upper half of the layers).
Soft-token placement, positions and caching: docs/deviations.md. Defaults the paper leaves open, chosen on
real SST-2 (docs/deviations.md "IAPT on real SST-2"): nn.Linear's init, the block behind the first token,
the poolers reading the instruction without that first (attention-sink) token.

    python run.py method=iapt method.bottleneck=128
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pefts.blocks.generators import bank_factory
from pefts.family import build_family
from pefts.registry import Bilevel, Budget, MethodBuild, MethodConfig, register_method


@dataclass
class IaptConfig(MethodConfig):
    name: str = "iapt"
    n_tokens: int = 4  # l_sp: soft tokens in the sequence (one block, replaced at every layer)
    bottleneck: int = 256  # m: generator width after MLP_down; tunable params grow linearly with it
    # L_s: consecutive layers sharing MLP_down, MLP_up and the activation (poolers stay per layer)
    share_every: int = 4
    # self-attention pooler, one query per soft token (eq. 2); mean/max for the ablation IAPT-1
    pooler: str = "attention"
    # learnable (6, 5) rational, GeLU-initialised (eq. 3); gelu/relu for IAPT-4/5
    activation: Any = "rational"
    # generator init (the paper gives none): default = nn.Linear's; zero_up = W_up = 0, b_up = 0 (never
    # learned SST-2 in 3 seeds: docs/deviations.md "IAPT on real SST-2"); small_normal = W_up ~ N(0, init_std)
    init: str = "default"
    init_std: float = 1e-3  # std of W_up under init=small_normal (nn.Linear's default for m=256 is 0.036)
    layers: Any = "all"  # layers that get generated prompts: all, or a list of indices
    # the poolers skip each row's first instruction token (BOS / chat-template start: the attention sink,
    # whose massive activations otherwise dominate the pool; docs/deviations.md "IAPT on real SST-2")
    pool_skip_first: bool = True
    # soft block right behind the first token (BOS / template start, which keeps RoPE position 0);
    # prepend = before it, append = after the instruction (docs/deviations.md)
    position: str = "after_first"
    # true (with init=default): W_up = W_down^T, halving the generator (8.4M on LLaMA-2 7B, the paper's count)
    tie_up_down: bool = False
    # Appendix B: activation coefficients updated on dev batches, the rest on train batches
    bilevel: bool = True
    arch_lr: float = 1e-6  # Appendix F: learning rate of the activation coefficients in the bi-level updates


def _names(activation):
    return activation if isinstance(activation, str) else [str(a) for a in activation]


@register_method("iapt", IaptConfig, size_knob="bottleneck",
                 budget=Budget(pinned=16_844_896, paper=8.4e6, reachable=False))
def build(model, cfg: IaptConfig):
    if cfg.init == "zero_up" and cfg.layers != "all":
        raise ValueError(f"method.init=zero_up needs method.layers=all (got {cfg.layers}): zero soft tokens that "
                         "pass through later layers give NaN gradients; use method.init=default")
    factory = bank_factory(share_every=cfg.share_every, bottleneck=cfg.bottleneck, pooler=cfg.pooler,
                           activation=_names(cfg.activation), tie_up_down=cfg.tie_up_down, init=cfg.init,
                           init_std=cfg.init_std, pool_skip_first=cfg.pool_skip_first)
    fam = build_family(model, injector="soft_prompt", layers=cfg.layers, n_tokens=cfg.n_tokens,
                       position=cfg.position, generator_factory=factory)
    theta = fam.architecture_parameters()  # the rational activations' a_j, b_i (none for gelu/relu)
    return MethodBuild(fam, bilevel=Bilevel(theta, lr=cfg.arch_lr) if cfg.bilevel and theta else None)
