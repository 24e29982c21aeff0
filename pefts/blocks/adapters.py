"""Shared pieces of the baseline methods: bottleneck adapters, bias/scale vectors on linear outputs,
soft prompts inserted as placeholder tokens, and key/value prefixes injected at the attention call.

Every piece is a small module with plain arguments, attached to an unmodified `transformers` model with
forward hooks (the backbone's module names and weights stay as they are). New parameters are created
on the device of the weight they sit next to (so a `meta`-device backbone gives a `meta`-device method,
see scripts/params.py) in float32, and the hooks cast back to the activation dtype.

    from pefts.blocks.adapters import Bottleneck, attach_output_hook, decoder_layers
    for layer in decoder_layers(model):
        attach_output_hook(layer.mlp, "peft_adapter", Bottleneck(d, 18, ref=layer.mlp.down_proj.weight))

Soft prompts (`PromptInserter`): `n` learned vectors go in front of each row's first attended token
(after any left padding, so a padded row equals the row run alone under RoPE). They travel through
the model as placeholder ids `>= num_embeddings` in `input_ids`; an embedding hook swaps in the vectors.
Because the placeholders are ordinary tokens of the sequence, HF `generate` handles KV caches, beam
reordering and uncached decoding itself. Forward calls insert the placeholders and strip their logits.

Key/value prefixes (`install_prefix_attention`): learned keys and values are prepended inside the
attention function (registered with `transformers.AttentionInterface`), after the KV cache update, so
the cache holds only real tokens and positions are untouched (P-tuning v2 / prefix tuning semantics).
"""

from __future__ import annotations

import math
import sys
import types

import torch
from torch import nn

# ----------------------------------------------------------------------------------------------------
# helpers


def new_param(ref: torch.Tensor, *shape: int, init: str = "zeros", std: float = 0.02) -> nn.Parameter:
    """A float32 parameter on `ref`'s device: init 'zeros', 'ones', 'normal' (std) or 'kaiming' (fan-in uniform)."""
    t = torch.empty(*shape, device=ref.device, dtype=torch.float32)
    if init == "zeros":
        nn.init.zeros_(t)
    elif init == "ones":
        nn.init.ones_(t)
    elif init == "normal":
        nn.init.normal_(t, std=std)
    elif init == "kaiming":
        nn.init.kaiming_uniform_(t, a=math.sqrt(5))
    else:
        raise ValueError(f"unknown init '{init}'")
    return nn.Parameter(t)


def freeze(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The Transformer blocks of a decoder-only HF model (Llama-family, GPT-2, GPT-NeoX)."""
    for path in ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers"):
        obj = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList):
            return list(obj)
    raise ValueError(f"cannot find the decoder layers of {type(model).__name__} (looked for model.layers, "
                     "transformer.h, gpt_neox.layers, model.decoder.layers)")


def sublayer(layer: nn.Module, kind: str) -> nn.Module:
    """The attention ('attn') or feed-forward ('mlp') sublayer of a decoder block."""
    names = {"attn": ("self_attn", "attn", "attention"), "mlp": ("mlp",)}[kind]
    for n in names:
        if isinstance(getattr(layer, n, None), nn.Module):
            return getattr(layer, n)
    raise ValueError(f"{type(layer).__name__} has no {kind} sublayer named one of {names}")


def any_weight(module: nn.Module) -> torch.Tensor:
    """A weight of `module` (to take the device from)."""
    for p in module.parameters():
        return p
    raise ValueError(f"{type(module).__name__} has no parameters")


def named_linears(model: nn.Module, targets: list[str]) -> list[tuple[str, nn.Linear]]:
    """`nn.Linear` modules inside the decoder layers whose last name part is in `targets` (LM head excluded)."""
    found = []
    for i, layer in enumerate(decoder_layers(model)):
        for name, mod in layer.named_modules():
            if isinstance(mod, nn.Linear) and name.rsplit(".", 1)[-1] in targets:
                found.append((f"layer{i}.{name}", mod))
    seen = {n.rsplit(".", 1)[-1] for n, _ in found}
    missing = sorted(set(targets) - seen)
    assert not missing, f"target modules {missing} are not nn.Linear modules of {type(model).__name__}"
    return found


def _first(output):
    return output[0] if isinstance(output, tuple) else output


def _replace_first(output, value):
    return (value, *output[1:]) if isinstance(output, tuple) else value


# ----------------------------------------------------------------------------------------------------
# adapters


class Bottleneck(nn.Module):
    """x -> up(act(down(x))) with biases; `up` is zero-initialized so a fresh adapter adds nothing.

    Houlsby et al. (2019) Fig. 2 (with the skip connection added by the caller); He et al. (2021) Eq. 5.
    """

    ACTS = {"relu": nn.functional.relu, "gelu": nn.functional.gelu, "silu": nn.functional.silu,
            "swish": nn.functional.silu, "tanh": torch.tanh, "identity": lambda x: x}

    def __init__(self, dim: int, bottleneck: int, ref: torch.Tensor, activation: str | nn.Module = "relu",
                 scaling: float = 1.0, init_std: float = 0.02):
        super().__init__()
        if isinstance(activation, nn.Module):
            self.act = activation  # a learnable activation (Learned-Adapter's mixed operation)
            activation = None
        else:
            assert activation in self.ACTS, f"activation '{activation}' not in {sorted(self.ACTS)}"
        self.activation, self.scaling = activation, scaling
        self.down_weight = new_param(ref, bottleneck, dim, init="normal", std=init_std)
        self.down_bias = new_param(ref, bottleneck)
        self.up_weight = new_param(ref, dim, bottleneck)
        self.up_bias = new_param(ref, dim)

    def down(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x.to(self.down_weight.dtype), self.down_weight, self.down_bias)

    def up(self, z: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(z, self.up_weight, self.up_bias) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.down(x)
        z = self.act(z) if self.activation is None else self.ACTS[self.activation](z)
        return self.up(z).to(x.dtype)


class OutputAdapter(nn.Module):
    """Sequential adapter on a sublayer's output: h <- h + f(h) (Houlsby et al., 2019)."""

    def __init__(self, adapter: nn.Module):
        super().__init__()
        self.adapter = adapter

    def hook(self, module, args, output):
        h = _first(output)
        return _replace_first(output, h + self.adapter(h))


class ParallelAdapter(nn.Module):
    """Adapter parallel to a whole block: out <- block(h) + f(h) (He et al., 2021, parallel form)."""

    def __init__(self, adapter: nn.Module):
        super().__init__()
        self.adapter = adapter

    def hook(self, module, args, kwargs, output):
        h = args[0] if args else kwargs["hidden_states"]
        out = _first(output)
        return _replace_first(output, out + self.adapter(h))


def attach_output_hook(module: nn.Module, name: str, child: OutputAdapter) -> None:
    """Register `child` as `module.<name>` and its `hook` as a forward hook of `module`."""
    assert not hasattr(module, name), f"{type(module).__name__} already has '{name}'"
    module.add_module(name, child)
    module.register_forward_hook(child.hook)


def attach_block_hook(layer: nn.Module, name: str, child: ParallelAdapter) -> None:
    assert not hasattr(layer, name), f"{type(layer).__name__} already has '{name}'"
    layer.add_module(name, child)
    layer.register_forward_hook(child.hook, with_kwargs=True)


# ----------------------------------------------------------------------------------------------------
# vectors on linear outputs (BitFit, (IA)^3)


class ProjectedVector(nn.Module):
    """A vector of size `out`: a free vector (`dim=None`), or `proj @ code` with a `dim`-sized code and a
    learnable (out x dim) projection (iapt.txt Appendix F). `proj` starts at zero, so the vector starts at 0."""

    def __init__(self, out: int, ref: torch.Tensor, dim: int | None = None, code_std: float = 1.0):
        super().__init__()
        self.dim = dim
        if dim is None:
            self.vector = new_param(ref, out)
        else:
            self.code = new_param(ref, dim, init="normal", std=code_std)
            self.proj = new_param(ref, out, dim)

    def value(self) -> torch.Tensor:
        return self.vector if self.dim is None else self.proj @ self.code


class LinearBias(nn.Module):
    """BitFit on a bias-less linear layer: y <- y + b (Ben Zaken et al., 2022), b zero at start."""

    def __init__(self, out: int, ref: torch.Tensor, dim: int | None = None):
        super().__init__()
        self.bias = ProjectedVector(out, ref, dim)

    def hook(self, module, args, output):
        return output + self.bias.value().to(output.dtype)


class LinearScale(nn.Module):
    """(IA)^3 on a linear output: y <- y * (1 + l) (Liu et al., 2022, Eq. in Sec. 3.3 with l = l' - 1),
    so l = 0 (the backbone) at start."""

    def __init__(self, out: int, ref: torch.Tensor, dim: int | None = None):
        super().__init__()
        self.scale = ProjectedVector(out, ref, dim)

    def hook(self, module, args, output):
        return output * (1 + self.scale.value()).to(output.dtype)


# ----------------------------------------------------------------------------------------------------
# soft prompts as placeholder tokens


def insert_placeholders(ids: torch.Tensor, mask: torch.Tensor, n: int, base: int,
                        labels: torch.Tensor | None = None):
    """Insert `n` placeholder ids (base, ..., base+n-1) before each row's first attended token.

    Returns (ids, mask, labels, placeholder, keep): the widened tensors, the (B, T+n) placeholder
    mask and the (B, T+n) mask of original columns (to strip logits back to (B, T)).
    """
    B, T = ids.shape
    first = (mask.long().cumsum(1) == 0).sum(1, keepdim=True)  # leading zeros = left padding
    col = torch.arange(T + n, device=ids.device).unsqueeze(0).expand(B, -1)
    ph = (col >= first) & (col < first + n)
    src = torch.where(col < first, col, col - n).clamp(0, max(T - 1, 0))
    ids2 = torch.where(ph, base + (col - first).clamp(0, n - 1), ids.gather(1, src))
    mask2 = torch.where(ph, torch.ones_like(src), mask.long().gather(1, src)).to(mask.dtype)
    labels2 = None if labels is None else torch.where(ph, torch.full_like(src, -100), labels.gather(1, src))
    return ids2, mask2, labels2, ph, ~ph


class _Ctx:
    """What the embedding hook needs to know about the current forward call."""

    def __init__(self, placeholder: torch.Tensor, instruction: torch.Tensor):
        self.placeholder, self.instruction = placeholder, instruction


class PromptInserter(nn.Module):
    """Soft prompt of `n` tokens given by `source`, inserted into every sequence (see module docstring).

    `source.prompts(embeds, instruction)` returns (B, n, d) prompt vectors, given the frozen token
    embeddings (B, T, d) and the instruction-token mask (B, T). An optional `source.edit(embeds,
    instruction)` may change the instruction tokens' embeddings (DePT). Instruction tokens are those
    with attention_mask == 1 and labels == -100 in a forward call (all attended tokens without labels),
    and the whole prompt given to `generate`.

    Install with `PromptInserter(n, source).install(model)`: adds `model.peft_prompt`, hooks on the
    model and its input embedding, and an instance-level `model.generate`.
    """

    def __init__(self, n: int, source: nn.Module):
        super().__init__()
        assert n >= 1, f"soft prompt length must be >= 1, got {n}"
        self.n = n
        self.source = source
        self.base = None  # first placeholder id (= num_embeddings), set by install
        self._ctx: _Ctx | None = None
        self._gen_width: int | None = None
        self._strip: torch.Tensor | None = None
        self._ids: torch.Tensor | None = None

    def install(self, model: nn.Module) -> nn.Module:
        assert not hasattr(model, "peft_prompt"), "the model already has a soft prompt (peft_prompt)"
        embed = model.get_input_embeddings()
        self.base = embed.num_embeddings
        model.add_module("peft_prompt", self)
        model.register_forward_pre_hook(self._model_pre, with_kwargs=True)
        model.register_forward_hook(self._model_post, with_kwargs=True)
        embed.register_forward_pre_hook(self._embed_pre)
        embed.register_forward_hook(self._embed_post)
        model.generate = types.MethodType(_prompt_generate, model)
        return model

    # model-level hooks ------------------------------------------------------------------------------
    def _model_pre(self, module, args, kwargs):
        if args:
            assert len(args) == 1, "pass model inputs as keywords (input_ids=..., attention_mask=...)"
            kwargs = {"input_ids": args[0], **kwargs}
        ids = kwargs.get("input_ids")
        if ids is None:
            raise ValueError("soft-prompt methods need input_ids; inputs_embeds are not supported")
        mask = kwargs.get("attention_mask")
        if mask is None:  # (generate drops an all-ones mask; it must stay None with a filled cache)
            mask = torch.ones_like(ids)
        ph = ids >= self.base
        past = kwargs.get("past_key_values")
        fresh = past is None or past.get_seq_length() == 0
        self._strip = None
        if bool(ph.any()):  # prepared by our generate: prefill, or every step of uncached decoding
            if self._gen_width is None:
                raise ValueError(f"input_ids >= {self.base} are soft-prompt placeholders, reserved for generate()")
            col = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)
            instr = mask.bool() & ~ph & (col < self._gen_width)
        elif not fresh:  # a cached decoding step: new tokens are never instruction tokens
            instr = torch.zeros_like(ph)
        else:  # an ordinary forward call: insert the prompt here and strip its logits afterwards
            if kwargs.get("position_ids") is not None or kwargs.get("inputs_embeds") is not None:
                raise ValueError("soft-prompt methods compute positions themselves: pass no position_ids/inputs_embeds")
            labels = kwargs.get("labels")
            ids, mask2, labels2, ph, keep = insert_placeholders(ids, mask, self.n, self.base, labels)
            instr_old = mask.bool() if labels is None else mask.bool() & (labels == -100)
            instr = torch.zeros_like(ph)
            instr[keep] = instr_old.reshape(-1)
            kwargs.update(input_ids=ids, attention_mask=mask2)
            if labels is not None:
                kwargs["labels"] = labels2
            self._strip = keep
        self._ctx = _Ctx(ph, instr)
        return (), kwargs

    def _model_post(self, module, args, kwargs, output):
        self._ctx = None
        keep, self._strip = self._strip, None
        logits = getattr(output, "logits", None)
        if keep is not None and logits is not None and logits.shape[1] == keep.shape[1]:
            output.logits = logits[keep].view(keep.shape[0], keep.shape[1] - self.n, logits.shape[-1])
        return output

    # embedding hooks --------------------------------------------------------------------------------
    def _embed_pre(self, module, args):
        ids = args[0]
        self._ids = ids
        ph = ids >= self.base
        if bool(ph.any()):
            return (ids.masked_fill(ph, 0), *args[1:])
        return None

    def _embed_post(self, module, args, output):
        ids, self._ids = self._ids, None
        ctx = self._ctx
        ph = ids >= self.base
        if ctx is None or ctx.placeholder.shape != ids.shape:
            if bool(ph.any()):
                raise RuntimeError("soft-prompt placeholders reached the embedding outside a model forward call")
            return output
        embeds = output
        if hasattr(self.source, "edit"):
            embeds = self.source.edit(embeds, ctx.instruction)
        if bool(ph.any()):
            prompts = self.source.prompts(output, ctx.instruction).to(output.dtype)  # (B, n, d)
            slot = (ids - self.base).clamp(0, self.n - 1)
            picked = prompts.gather(1, slot.unsqueeze(-1).expand(-1, -1, prompts.shape[-1]))
            embeds = torch.where(ph.unsqueeze(-1), picked, embeds)
        return embeds


def _prompt_generate(model, input_ids=None, attention_mask=None, **kwargs):
    """`generate` of a model with a soft prompt: inserts the placeholders, strips them from the output."""
    inserter: PromptInserter = model.peft_prompt
    if input_ids is None or kwargs.get("inputs_embeds") is not None:
        raise ValueError("soft-prompt methods generate from input_ids (inputs_embeds are not supported)")
    gen_cfg = kwargs.get("generation_config") or model.generation_config
    for key in ("repetition_penalty", "encoder_repetition_penalty"):
        value = kwargs.get(key, getattr(gen_cfg, key, None))
        if value not in (None, 1.0):
            raise ValueError(f"{key} is not supported with soft prompts (it indexes logits by input ids)")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    ids, mask, _, _, _ = insert_placeholders(input_ids, attention_mask, inserter.n, inserter.base)
    inserter._gen_width = ids.shape[1]
    try:
        out = type(model).generate(model, input_ids=ids, attention_mask=mask, **kwargs)
    finally:
        inserter._gen_width = None
    seq = out if isinstance(out, torch.Tensor) else out.sequences
    stripped = seq[seq < inserter.base].view(seq.shape[0], seq.shape[1] - inserter.n)
    if isinstance(out, torch.Tensor):
        return stripped
    out.sequences = stripped
    return out


class SoftPrompt(nn.Module):
    """`n` prompt vectors of the model width `d`: free (`dim=None`; Lester et al., 2021), or `dim`-sized
    codes mapped to width `d` by a learnable linear projection (iapt.txt Appendix F, P-tuning)."""

    def __init__(self, n: int, d: int, ref: torch.Tensor, dim: int | None = None,
                 init_from: torch.Tensor | None = None, std: float = 0.02):
        super().__init__()
        self.dim = dim
        if dim is None:
            if init_from is not None:
                assert tuple(init_from.shape) == (n, d), f"init_from {tuple(init_from.shape)} != {(n, d)}"
                self.weight = nn.Parameter(init_from.detach().clone().float())
            else:
                self.weight = new_param(ref, n, d, init="normal", std=std)
        else:
            self.code = new_param(ref, n, dim, init="normal", std=1.0)
            self.proj_weight = new_param(ref, d, dim, init="kaiming")
            self.proj_bias = new_param(ref, d)

    def value(self) -> torch.Tensor:
        if self.dim is None:
            return self.weight
        return nn.functional.linear(self.code, self.proj_weight, self.proj_bias)

    def prompts(self, embeds: torch.Tensor, instruction: torch.Tensor) -> torch.Tensor:
        return self.value().unsqueeze(0).expand(embeds.shape[0], -1, -1)


def vocab_init(model: nn.Module, n: int) -> torch.Tensor:
    """Embeddings of `n` random vocabulary tokens (the prompt initialization of Lester et al., 2021)."""
    weight = model.get_input_embeddings().weight
    idx = torch.randint(0, weight.shape[0], (n,), device=weight.device)
    return weight[idx]


def mean_pool(embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `embeds` (B, T, d) over the positions where `mask` (B, T) is true (zero when none)."""
    m = mask.unsqueeze(-1).to(embeds.dtype)
    return (embeds * m).sum(1) / m.sum(1).clamp(min=1)


# ----------------------------------------------------------------------------------------------------
# key/value prefixes inside attention


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
        attn = sublayer(layer, "attn")
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
        kwargs["position_ids"] = (mask.long().cumsum(1) - 1).clamp(min=0)
        return args, kwargs
    return None
