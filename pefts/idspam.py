"""ID-SPAM (id-spam.txt): one input-dependent soft prompt, generated from the input embeddings and
prepended at a single layer m.

    eq. 1   A = mean_tokens softmax((E W_Q)(E W_K)^T / sqrt(d)) (E W_V)   E: input embeddings of the
            instruction tokens (read at layer 0 whatever m is)
    eq. 2   S = resize(ReLU(W_up ReLU(W_down A))) -> t soft tokens, prepended to layer m's input
    3.1     t = 10; Figure 2 / Appendix A: middle layers work best (m searched; default here L // 2)

c = 34 reproduces the paper's parameter counts with t = 10 (docs/deviations.md). Below m the
inserted positions are invisible; at m they are replaced by S (docs/deviations.md).
Ablation (3.2 "Ablation Analysis", Table 3) is an override: Mean-pooling pooler=mean, A = the masked mean
of E over the instruction tokens, no W_Q, W_K, W_V (conf/ablation/idspam-mean-pooling.yaml).

    python run.py method=idspam method.layer=6
    python run.py method=idspam method.pooler=mean
"""

from __future__ import annotations

from dataclasses import dataclass

from core.errors import UserError
from pefts.blocks.arch import layer_list
from pefts.blocks.generators import bank_factory
from pefts.family import build_family
from pefts.registry import Budget, MethodConfig, register_method


@dataclass
class IdSpamConfig(MethodConfig):
    name: str = "idspam"
    n_tokens: int = 10  # t: soft tokens (3.1)
    # c: width between W_down and W_up; 34 matches the paper's parameter counts for t = 10
    bottleneck: int = 34
    # m: layer whose input gets the prompt; null = middle layer (L // 2), 0 = the embeddings
    layer: int | None = None
    # null: prepend before the instruction (decoders) / behind <s> (encoders); or prepend|append|after_first
    position: str | None = None
    # eq. 1's learned self-attention over E, then the mean of its outputs; mean = Table 3's Mean-pooling
    # ablation (the masked mean of E over the instruction tokens: no W_Q, W_K, W_V)
    pooler: str = "self_attention"


POOLERS = ("self_attention", "mean")


@register_method("idspam", IdSpamConfig, size_knob="bottleneck",
                 budget=Budget(pinned=2_064_384, paper=2_064_384, backbone="roberta-base"))
def build(model, cfg: IdSpamConfig):
    if cfg.pooler not in POOLERS:
        raise UserError(f"method.pooler={cfg.pooler!r} is not an ID-SPAM pooler; valid options: {', '.join(POOLERS)}")
    m = len(layer_list(model)) // 2 if cfg.layer is None else cfg.layer
    factory = bank_factory(share_every=1, bottleneck=cfg.bottleneck, pooler=cfg.pooler, pool_first=True,
                           activation="relu", out_activation="relu", down_bias=False)
    return build_family(model, injector="soft_prompt", layers=[m], n_tokens=cfg.n_tokens, position=cfg.position,
                        read_layer=0, generator_factory=factory)
