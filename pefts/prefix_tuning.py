"""Prefix tuning (Li & Liang, 2021): key/value prefixes in every layer, produced by an MLP
reparameterization P = MLP(E) of a (n x d) embedding E (Sec. 4.3: "P_theta[i,:] = MLP(P'_theta[i,:])").

Same injection as P-tuning v2 (pefts/blocks/prefix.py `PrefixKV(encoder=h)`); the MLP is
d -> h (tanh) -> L x 2 x kv_dim and is trained; its output is cached when no gradient is needed.
Not a baseline of iapt.txt Table 1. Parameters on LLaMA-2 7B with n=64, h=512:
64x4096 + (4096x512 + 512) + (512x262144 + 262144) = 136,839,680 (the MLP dominates; Li & Liang
drop it after training, which this harness does not do).

    python run.py method=prefix_tuning method.encoder_hidden_size=128
"""

from __future__ import annotations

from dataclasses import dataclass

from pefts.blocks.arch import decoder_layers
from pefts.blocks.common import any_weight, freeze
from pefts.blocks.prefix import PrefixKV, install_prefix_attention
from pefts.p_tuning_v2 import kv_dim
from pefts.registry import Budget, MethodConfig, register_method


@dataclass
class PrefixTuningConfig(MethodConfig):
    name: str = "prefix_tuning"
    num_virtual_tokens: int = 64  # prefix positions per layer (as P-tuning v2 in iapt.txt Appendix F)
    # width of the reparameterization MLP (Li & Liang's code default); dominates the params
    encoder_hidden_size: int = 512


@register_method("prefix_tuning", PrefixTuningConfig, size_knob="encoder_hidden_size",
                 budget=Budget(pinned=136_839_680))
def build(model, cfg: PrefixTuningConfig):
    freeze(model)
    layers = list(range(len(decoder_layers(model))))
    prefix = PrefixKV(layers, cfg.num_virtual_tokens, kv_dim(model.config), any_weight(model),
                      encoder=cfg.encoder_hidden_size, hidden=model.config.hidden_size)
    return install_prefix_attention(model, prefix)
