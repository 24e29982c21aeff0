"""IDPG, instance-dependent prompt generation (Wu et al., 2022; a baseline of iapt.txt Table 1).

    sentence encoder   the frozen backbone itself: a separate pass over the input (no soft tokens), its last
                       hidden states mean-pooled over the instruction tokens (found by mask, any padding side)
    generator          W_up(ReLU(W_down(pooled))) -> l_sp soft tokens (Wu et al. eq. 2, a two-layer bottleneck MLP)
    injection          the soft tokens are prepended to the input, at the embedding layer (single-layer IDPG)
    iapt.txt Appendix F: bottleneck 1024, 4 soft tokens.

Appendix F's settings give 4096*1024 + 1024 + 1024*4*4096 + 4*4096 = 20,988,928 tunable parameters on LLaMA-2
7B, not Table 1's 8.4M; IDPG's PHM layers (which IAPT does not mention) are not used.
`python -m scripts.params backbone=llama2-7b method=idpg target=8.4e6` gives the bottleneck for 8.4M
(docs/deviations.md).

    python run.py method=idpg method.bottleneck=410
"""

from __future__ import annotations

from dataclasses import dataclass

from pefts.blocks.generators import bank_factory
from pefts.blocks.injectors import FINAL
from pefts.family import build_family
from pefts.registry import Budget, MethodConfig, register_method


@dataclass
class IdpgConfig(MethodConfig):
    name: str = "idpg"
    n_tokens: int = 4  # soft tokens prepended to the input
    # generator width; tunable params grow linearly with it (410 gives ~8.4M on LLaMA-2 7B)
    bottleneck: int = 1024
    pooler: str = "mean"  # pooling of the encoder pass's last hidden states over the instruction tokens
    activation: str = "relu"  # nonlinearity between W_down and W_up
    # nn.Linear's init. Not zero_up: exact-zero soft tokens injected at one layer give NaN gradients on
    # SmolLM2 (RMSNorm's 1/sqrt(eps) slope at 0, compounded over the layers above; docs/deviations.md)
    init: str = "default"
    position: str = "prepend"  # soft tokens before the instruction (IDPG prepends)


@register_method("idpg", IdpgConfig, size_knob="bottleneck",
                 budget=Budget(pinned=20_988_928, paper=8.4e6, reachable=False))
def build(model, cfg: IdpgConfig):
    factory = bank_factory(share_every=1, bottleneck=cfg.bottleneck, pooler=cfg.pooler, pool_first=True,
                           activation=cfg.activation, init=cfg.init)
    return build_family(model, injector="soft_prompt", layers=[0], n_tokens=cfg.n_tokens, position=cfg.position,
                        generator_factory=factory, read_layer=FINAL)
