"""Key/value prefixes of the baseline methods (P-tuning v2, prefix tuning), injected at the attention call.

`install_prefix_attention`: learned keys and values are prepended inside the attention function
(registered with `transformers.AttentionInterface`), after the KV cache update, so the cache holds only
real tokens and positions are untouched (P-tuning v2 / prefix tuning semantics).

    prefix = PrefixKV(list(range(len(decoder_layers(model)))), 20, kv_dim(model.config), ref=weight)
    install_prefix_attention(model, prefix)
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from pefts.blocks.arch import decoder_layers, sublayer
from pefts.blocks.common import new_param
from pefts.blocks.layout import plain_positions


class PrefixKV(nn.Module):
    """Learned keys and values for `n` prefix positions in each of `layers` attention layers.

    `encoder=None`: direct parameters (L, 2, n, kv_dim) (P-tuning v2, Liu et al., 2022).
    `encoder=h`: prefix = MLP(embedding) with a tanh bottleneck of width h, shared by all layers
    (prefix tuning, Li & Liang, 2021, Sec. 4.3); its output is cached in no-grad mode.
    """

    def __init__(self, layers: list[int], n: int, kv_dim: int, ref: torch.Tensor, encoder: int | None = None,
                 hidden: int | None = None, init_std: float = 1.0):
        super().__init__()
        self.layers, self.n, self.kv_dim = list(layers), n, kv_dim
        self.index = {layer: i for i, layer in enumerate(self.layers)}
        L = len(self.layers)
        if encoder is None:
            self.kv = new_param(ref, L, 2, n, kv_dim, init="normal", std=init_std)
        else:
            h = encoder
            d = hidden or kv_dim
            self.embedding = new_param(ref, n, d, init="normal", std=init_std)
            self.mlp = nn.Sequential(nn.Linear(d, h, device=ref.device), nn.Tanh(),
                                     nn.Linear(h, L * 2 * kv_dim, device=ref.device))
        self._cache = None

    def _all(self) -> torch.Tensor:
        if not hasattr(self, "mlp"):
            return self.kv
        if torch.is_grad_enabled():
            self._cache = None
            return self.mlp(self.embedding).view(self.n, len(self.layers), 2, self.kv_dim).permute(1, 2, 0, 3)
        key = tuple((p.data_ptr(), p._version) for p in self.parameters())
        if self._cache is None or self._cache[0] != key:
            out = self.mlp(self.embedding).view(self.n, len(self.layers), 2, self.kv_dim).permute(1, 2, 0, 3)
            self._cache = (key, out)
        return self._cache[1]

    def layer_kv(self, layer: int, batch: int, heads: int, dtype: torch.dtype):
        """(key, value), each (batch, heads, n, head_dim), for decoder layer `layer`."""
        kv = self._all()[self.index[layer]]  # (2, n, kv_dim)
        kv = kv.view(2, self.n, heads, self.kv_dim // heads).permute(0, 2, 1, 3).to(dtype)
        return kv[0].unsqueeze(0).expand(batch, -1, -1, -1), kv[1].unsqueeze(0).expand(batch, -1, -1, -1)


def _prefix_attention(inner: str):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    def attention(module, query, key, value, attention_mask, **kwargs):
        if inner == "eager":
            fn = sys.modules[type(module).__module__].eager_attention_forward
        else:
            fn = ALL_ATTENTION_FUNCTIONS[inner]
        prefix = module.__dict__.get("_peft_prefix")
        if prefix is None or module.layer_idx not in prefix.index:
            return fn(module, query, key, value, attention_mask, **kwargs)
        B, _, Q, _ = query.shape
        K = key.shape[2]
        pk, pv = prefix.layer_kv(module.layer_idx, B, key.shape[1], key.dtype)
        n = pk.shape[2]
        if attention_mask is None:  # no padding: a causal mask aligned to the last key
            allowed = (torch.arange(Q, device=query.device)[:, None] + (K - Q)
                       >= torch.arange(K, device=query.device)[None, :])
            attention_mask = allowed.view(1, 1, Q, K)
            if inner == "eager":
                attention_mask = torch.zeros(1, 1, Q, K, dtype=query.dtype, device=query.device).masked_fill(
                    ~allowed, torch.finfo(query.dtype).min)
        attention_mask = attention_mask[..., :K]
        lead = attention_mask.shape[:-1] + (n,)
        if attention_mask.dtype == torch.bool:
            pre = torch.ones(lead, dtype=torch.bool, device=attention_mask.device)
        else:
            pre = torch.zeros(lead, dtype=attention_mask.dtype, device=attention_mask.device)
        attention_mask = torch.cat([pre, attention_mask], dim=-1)
        if attention_mask.shape[0] != B:
            attention_mask = attention_mask.expand(B, *attention_mask.shape[1:])
        kwargs.pop("is_causal", None)
        return fn(module, query, torch.cat([pk, key], 2), torch.cat([pv, value], 2), attention_mask,
                  is_causal=False, **kwargs)

    return attention


def install_prefix_attention(model: nn.Module, prefix: PrefixKV) -> nn.Module:
    """Add `prefix` as `model.peft_prefix` and switch the model to an attention function that prepends it."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    config = model.config
    inner = config._attn_implementation or "eager"
    if inner.startswith("peft_prefix_"):
        raise ValueError("the model already has a key/value prefix")
    if inner not in ("sdpa", "eager"):
        raise ValueError(f"key/value prefixes support attn_implementation 'sdpa' or 'eager', not '{inner}'")
    name = f"peft_prefix_{inner}"
    AttentionInterface.register(name, _prefix_attention(inner))
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[inner])
    model.add_module("peft_prefix", prefix)
    found = 0
    for layer in decoder_layers(model):
        attn = sublayer(model, layer, "attn")
        if getattr(attn, "layer_idx", None) is None:
            raise ValueError(f"{type(attn).__name__} has no layer_idx: key/value prefixes need Llama-style attention")
        attn.__dict__["_peft_prefix"] = prefix  # a plain reference: the parameters live in model.peft_prefix
        found += attn.layer_idx in prefix.index
    assert found == len(prefix.layers), f"prefix layers {prefix.layers} not all among the model's attention layers"
    config._attn_implementation = name
    model.register_forward_pre_hook(_positions_from_mask, with_kwargs=True)
    return model


def _positions_from_mask(module, args, kwargs):
    """Without a cache, count positions from each row's first attended token (as `generate` does).

    Prefix keys carry no rotary position, so a query's score against them depends on its absolute
    position: a left-padded row must get the positions it has when run alone."""
    mask = kwargs.get("attention_mask")
    past = kwargs.get("past_key_values")
    if kwargs.get("position_ids") is None and mask is not None and mask.dim() == 2 and (
            past is None or past.get_seq_length() == 0):
        kwargs["position_ids"] = plain_positions(mask)
        return args, kwargs
    return None
