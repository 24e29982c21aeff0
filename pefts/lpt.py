"""LPT, late prompt tuning (Liu et al., 2022; iapt.txt baseline): an instance-dependent soft prompt
generated from the hidden states entering one intermediate layer m and prepended there.

    generator   pool the instruction states entering layer m -> W_down -> ReLU -> W_up -> l_sp tokens
    iapt.txt Appendix F: bottleneck 1024, 4 soft tokens (the setting of IAPT's Table 1)
    layer       the middle layer by default (LPT and id-spam.txt Appendix A: middle layers work best)

Pooling over instruction tokens found by mask, not LPT's last-token indexing that assumes right padding
(docs/deviations.md). The pooler (LPT offers average or max pooling) is configurable.

    python run.py method=lpt method.layer=12 method.pooler=max
"""

from __future__ import annotations

from dataclasses import dataclass

from pefts.blocks.arch import layer_list
from pefts.blocks.generators import bank_factory
from pefts.family import build_family
from pefts.registry import Budget, MethodConfig, register_method


@dataclass
class LptConfig(MethodConfig):
    name: str = "lpt"
    n_tokens: int = 4  # soft tokens (iapt.txt Appendix F)
    bottleneck: int = 1024  # generator width (iapt.txt Appendix F); tunable params grow linearly with it
    pooler: str = "mean"  # pooling of the instruction states entering layer m: mean or max
    activation: str = "relu"  # nonlinearity between W_down and W_up
    # nn.Linear's init. Not zero_up: exact-zero soft tokens injected at one layer give NaN gradients on
    # SmolLM2 (RMSNorm's 1/sqrt(eps) slope at 0, compounded over the layers above; docs/deviations.md)
    init: str = "default"
    layer: int | None = None  # m: layer whose input gets the prompt; null = middle layer (L // 2)
    position: str | None = None  # null: prepend before the instruction (decoders) / behind <s> (encoders)


@register_method("lpt", LptConfig, size_knob="bottleneck",
                 budget=Budget(pinned=20_988_928, paper=8.4e6, reachable=False))
def build(model, cfg: LptConfig):
    m = len(layer_list(model)) // 2 if cfg.layer is None else cfg.layer
    factory = bank_factory(share_every=1, bottleneck=cfg.bottleneck, pooler=cfg.pooler, pool_first=True,
                           activation=cfg.activation, init=cfg.init)
    return build_family(model, injector="soft_prompt", layers=[m], n_tokens=cfg.n_tokens, position=cfg.position,
                        generator_factory=factory)
