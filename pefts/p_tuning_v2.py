"""P-tuning v2 (Liu et al., 2022): `n` learned key/value vectors prepended in every attention layer.

Own implementation (pefts/blocks/prefix.py `PrefixKV` + `install_prefix_attention`), not
`peft.PrefixTuningConfig`: with peft 0.21.2 + transformers 5.23 prefix tuning's `generate` fails
("size of tensor a (46) must match ... b (26)") and a left-padded forward differs from the row alone
(docs/deviations.md). Here the prefix is added inside the attention function, after the KV
cache update, so caches, beam reordering and padding need no special handling.

Parameters: L x 2 x n x kv_dim. iapt.txt Appendix F: 64 tokens per layer, which on LLaMA-2 7B is
32 x 2 x 64 x 4096 = 16,777,216 (Table 1 says 9.4M = the same formula with 36 tokens; see
docs/budgets.md).

    python run.py method=p_tuning_v2 method.num_virtual_tokens=36
"""

from __future__ import annotations

from dataclasses import dataclass

from pefts.blocks.arch import decoder_layers
from pefts.blocks.common import any_weight, freeze
from pefts.blocks.prefix import PrefixKV, install_prefix_attention
from pefts.registry import Budget, MethodConfig, register_method


@dataclass
class PTuningV2Config(MethodConfig):
    name: str = "p_tuning_v2"
    # prefix positions per layer (iapt.txt Appendix F); params = L x 2 x tokens x kv_dim
    num_virtual_tokens: int = 64
    init_std: float = 1.0  # std of the initial keys/values (N(0,1) as nn.Embedding in the P-tuning v2 code)


def kv_dim(config) -> int:
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return (getattr(config, "num_key_value_heads", None) or heads) * head_dim


@register_method("p_tuning_v2", PTuningV2Config, size_knob="num_virtual_tokens",
                 budget=Budget(pinned=16_777_216, paper=9.4e6, reachable=False))
def build(model, cfg: PTuningV2Config):
    freeze(model)
    layers = list(range(len(decoder_layers(model))))
    prefix = PrefixKV(layers, cfg.num_virtual_tokens, kv_dim(model.config), any_weight(model),
                      init_std=cfg.init_std)
    return install_prefix_attention(model, prefix)
