"""SPT (Zhu & Tan, 2023, "Learning to Selectively Insert Prompts for Better Prompt Tuning"), smallest
faithful version: a soft prompt at the input plus, before every higher layer l, a candidate prompt P_l
inserted through a learnable gate g_l = sigmoid(a_l):  h_prompt <- g_l P_l + (1 - g_l) h_prompt.

The prompt occupies `n` sequence positions (pefts/blocks/prompts.py `PromptInserter`); a forward
pre-hook on each decoder layer rewrites those positions' hidden states. With all gates at 1 this is
deep prompt tuning with fresh prompts per layer; at 0, plain prompt tuning. Gates start at
sigmoid(gate_init). The gate logits are architecture parameters: with `bilevel: true` the builder
declares them (`MethodBuild.bilevel`) and the runner updates them on dev batches (first-order DARTS,
runners/bilevel.py) at `arch_lr`; with `bilevel: false` they train jointly with the prompts. Unlike
the paper, the gates stay soft at inference (no layer selection and re-training;
docs/deviations.md). Not usable with gradient checkpointing (the layer hooks need the
placeholder positions of the current call; they raise when the recomputation lacks them).
LLaMA-2 7B with n = 10: 32 x 10 x 4096 + 31 = 1,310,751.

    python run.py method=spt method.num_virtual_tokens=16
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pefts.blocks.arch import decoder_layers
from pefts.blocks.common import any_weight, freeze, new_param
from pefts.blocks.prompts import PromptInserter, SoftPrompt, vocab_init
from pefts.registry import Bilevel, Budget, MethodBuild, MethodConfig, register_method


class GatedLayerPrompts(nn.Module):
    """Candidate prompts (L-1, n, d) and gate logits (L-1,) for the decoder layers 1..L-1."""

    def __init__(self, layers: int, n: int, d: int, ref: torch.Tensor, gate_init: float):
        super().__init__()
        self.prompts = new_param(ref, layers - 1, n, d, init="normal")
        self.gate_logits = nn.Parameter(torch.full((layers - 1,), float(gate_init), device=ref.device))


class _LayerHook:
    """Pre-hook of decoder layer `layer` (>= 1): mixes P_l into the prompt positions."""

    def __init__(self, inserter: PromptInserter, gated: GatedLayerPrompts, layer: int):
        self.inserter, self.gated, self.layer = inserter, gated, layer

    def __call__(self, module, args, kwargs):
        ctx = self.inserter._ctx
        if ctx is None:
            raise RuntimeError("spt layer hook ran outside a model forward call (gradient checkpointing is unsupported)")
        ph = ctx.placeholder
        if not bool(ph.any()):
            return None
        hidden = args[0] if args else kwargs["hidden_states"]
        assert hidden.shape[:2] == ph.shape, f"hidden {tuple(hidden.shape)} vs placeholder mask {tuple(ph.shape)}"
        slot = (ph.long().cumsum(1) - 1).clamp(min=0)  # prompt token index at placeholder positions
        g = torch.sigmoid(self.gated.gate_logits[self.layer - 1])
        new = self.gated.prompts[self.layer - 1][slot]  # (B, T, d)
        mixed = (g * new + (1 - g) * hidden.float()).to(hidden.dtype)
        hidden = torch.where(ph.unsqueeze(-1), mixed, hidden)
        if args:
            return (hidden, *args[1:]), kwargs
        kwargs["hidden_states"] = hidden
        return args, kwargs


@dataclass
class SptConfig(MethodConfig):
    name: str = "spt"
    num_virtual_tokens: int = 10  # prompt positions; params = L x tokens x d + (L - 1) gates
    gate_init: float = 0.0  # initial gate logit a_l; gate = sigmoid(a_l) = 0.5 at 0
    bilevel: bool = True  # gate logits updated on dev batches, prompts on train batches (runners/bilevel.py)
    # learning rate of the gate logits in the bi-level updates (DARTS's default; the papers give none)
    arch_lr: float = 3e-4


@register_method("spt", SptConfig, size_knob="num_virtual_tokens", budget=Budget(pinned=1_310_751))
def build(model, cfg: SptConfig):
    freeze(model)
    layers = decoder_layers(model)
    assert len(layers) >= 2, "spt needs at least two layers"
    d = model.config.hidden_size
    ref = any_weight(model.get_input_embeddings())
    inserter = PromptInserter(cfg.num_virtual_tokens,
                              SoftPrompt(cfg.num_virtual_tokens, d, ref, init_from=vocab_init(model, cfg.num_virtual_tokens)))
    model = inserter.install(model)
    gated = GatedLayerPrompts(len(layers), cfg.num_virtual_tokens, d, ref, cfg.gate_init)
    inserter.add_module("layer_prompts", gated)
    for i, layer in enumerate(layers[1:], start=1):
        layer.register_forward_pre_hook(_LayerHook(inserter, gated, i), with_kwargs=True)
    return MethodBuild(model, bilevel=Bilevel([gated.gate_logits], lr=cfg.arch_lr) if cfg.bilevel else None)
