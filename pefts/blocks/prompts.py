"""Soft prompts of the baseline methods (prompt tuning, P-tuning, DePT, SPT, SMoP), as placeholder tokens.

`PromptInserter`: `n` learned vectors go in front of each row's first attended token (after any left
padding, so a padded row equals the row run alone under RoPE); the positions come from the one soft-prompt
layout (`insert_soft_positions`, pefts/blocks/layout.py, position "prepend"). They travel through the
model as placeholder ids `>= num_embeddings` in `input_ids`; an embedding hook swaps in the vectors.
Because the placeholders are ordinary tokens of the sequence, HF `generate` handles KV caches, beam
reordering and uncached decoding itself. Forward calls insert the placeholders and strip their logits
(or, given transformers' `logits_to_keep` columns, keep those columns' logits alone).

Encoders (RoBERTa + a classification head, ID-SPAM's baselines): the prompt goes right behind <s>, whose
state the head reads (position "after_first", as the input-aware family places it on encoders); the class
labels pass unchanged, every attended token is instruction, and nothing is stripped. RoBERTa counts
positions from its pad id: the soft tokens get the pad position and real tokens keep their own, as the
family's pad-id placeholders do (pefts/family.py).

    PromptInserter(n, SoftPrompt(n, d, ref, init_from=vocab_init(model, n))).install(model)
"""

from __future__ import annotations

import types

import torch
from torch import nn

from pefts.blocks.arch import is_encoder
from pefts.blocks.common import new_param
from pefts.blocks.layout import insert_soft_positions


def insert_placeholders(ids: torch.Tensor, mask: torch.Tensor, n: int, base: int,
                        labels: torch.Tensor | None = None, position: str = "prepend"):
    """Insert `n` placeholder ids (base, ..., base+n-1) before each row's first attended token (or
    right after it: position "after_first").

    Returns (ids, mask, labels, placeholder, keep): the widened tensors, the (B, T+n) placeholder
    mask and the (B, T+n) mask of original columns (to strip logits back to (B, T)).
    """
    lay = insert_soft_positions(ids, mask, labels, mask.bool(), n, position, fill_id=base)
    ph = lay.soft()
    ids2 = lay.input_ids + (ph.long().cumsum(1) - 1).clamp(min=0) * ph  # base + slot at the soft positions
    return ids2, lay.attention_mask, lay.labels, ph, ~ph


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
        # the ordinary forward call's logits to give back: `_keep` masks the caller's positions among the
        # prompted ones [B, L+n]; `_picks` [B, K] indexes, per row, the caller's `logits_to_keep` columns among
        # the columns projected here (transformers' logits_to_keep path)
        self._keep: torch.Tensor | None = None
        self._picks: torch.Tensor | None = None
        self._ids: torch.Tensor | None = None
        self.encoder = False  # set by install: an encoder with a classification head (module docstring)
        self.pad_positions: int | None = None  # RoBERTa: positions count from this pad id

    def install(self, model: nn.Module) -> nn.Module:
        assert not hasattr(model, "peft_prompt"), "the model already has a soft prompt (peft_prompt)"
        embed = model.get_input_embeddings()
        self.base = embed.num_embeddings
        model_type = getattr(model.config, "model_type", None)
        self.encoder = is_encoder(model_type)
        self.pad_positions = model.config.pad_token_id if model_type == "roberta" else None
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
        self._keep = self._picks = None
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
            if self.encoder:
                return self._encoder_pre(ids, mask, kwargs)
            labels = kwargs.get("labels")
            ids, mask2, labels2, ph, keep = insert_placeholders(ids, mask, self.n, self.base, labels)
            instr_old = mask.bool() if labels is None else mask.bool() & (labels == -100)
            instr = torch.zeros_like(ph)
            instr[keep] = instr_old.reshape(-1)
            kwargs.update(input_ids=ids, attention_mask=mask2)
            if labels is not None:
                kwargs["labels"] = labels2
            self._keep = keep
            if torch.is_tensor(kwargs.get("logits_to_keep")):  # caller columns -> their columns here, per row
                src = keep.nonzero()[:, 1].view(keep.shape[0], -1)
                cols, self._picks = torch.unique(src[:, kwargs["logits_to_keep"]], return_inverse=True)
                kwargs["logits_to_keep"] = cols
                if kwargs.get("shift_labels") is not None:  # each target at its column's place among `cols`
                    kwargs["shift_labels"] = kwargs["shift_labels"].new_full((ids.shape[0], len(cols)), -100).scatter(
                        1, self._picks, kwargs["shift_labels"])
        self._ctx = _Ctx(ph, instr)
        return (), kwargs

    def _encoder_pre(self, ids, mask, kwargs):
        """An encoder's forward call: the prompt behind <s>, class labels untouched, nothing to strip."""
        ids, mask2, _, ph, _ = insert_placeholders(ids, mask, self.n, self.base, position="after_first")
        real = mask2.bool() & ~ph
        kwargs.update(input_ids=ids, attention_mask=mask2)
        if self.pad_positions is not None:  # RoBERTa's create_position_ids_from_input_ids, soft tokens as pads
            kwargs["position_ids"] = real.long().cumsum(1) * real + self.pad_positions
        self._ctx = _Ctx(ph, real)
        return (), kwargs

    def _model_post(self, module, args, kwargs, output):
        self._ctx = None
        keep, picks, self._keep, self._picks = self._keep, self._picks, None, None
        logits = getattr(output, "logits", None)
        if picks is not None and logits is not None:  # logits_to_keep: each row's caller columns
            output.logits = logits.gather(1, picks[..., None].expand(-1, -1, logits.shape[-1]))
        elif keep is not None and logits is not None and logits.shape[1] == keep.shape[1]:
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
