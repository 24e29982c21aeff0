"""DePT (Shi & Lipani, 2024, "Decomposed Prompt Tuning"): a shorter soft prompt P_s (m x d) plus a
low-rank update A B (A: s x r, B: r x d) added position-wise to the frozen input embeddings
(Sec. 2: E' = E + A B for the first s input positions), each part with its own learning rate.

Decoder-only adaptation: the update goes to the instruction tokens only (position i = i-th attended
instruction token of the row; tokens past s are left as they are), the prompt sits before them
(pefts/blocks/prompts.py `PromptInserter` with an `edit` step). Defaults are DePT's T5-Base budget
(m = 60, r = 30, s = 256: as many parameters as 100 prompt tokens at d = 768). A ~ N(0, 1/r),
B = 0, so the update starts at zero. LLaMA-2 7B: 60 x 4096 + 256 x 30 + 30 x 4096 = 376,320.

Separate learning rates: the builder's `MethodBuild.param_groups` has one group for the low-rank pair
at method.lowrank_lr and one for the prompt at method.prompt_lr (runner.lr when null).

    python run.py method=dept method.rank=45 method.lowrank_lr=5e-4
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pefts.blocks.common import any_weight, freeze, new_param
from pefts.blocks.prompts import PromptInserter, SoftPrompt, vocab_init
from pefts.registry import Budget, MethodBuild, MethodConfig, ParamGroup, register_method


class DecomposedPrompt(nn.Module):
    """Prompt source for `PromptInserter`: a free prompt and a position-wise low-rank embedding update."""

    def __init__(self, n: int, d: int, max_positions: int, rank: int, ref: torch.Tensor, init_from=None):
        super().__init__()
        self.prompt = SoftPrompt(n, d, ref, init_from=init_from)
        self.max_positions = max_positions
        self.lowrank_a = new_param(ref, max_positions, rank, init="normal", std=rank ** -0.5)
        self.lowrank_b = new_param(ref, rank, d)

    def prompts(self, embeds: torch.Tensor, instruction: torch.Tensor) -> torch.Tensor:
        return self.prompt.prompts(embeds, instruction)

    def edit(self, embeds: torch.Tensor, instruction: torch.Tensor) -> torch.Tensor:
        if not bool(instruction.any()):
            return embeds
        pos = instruction.long().cumsum(1) - 1  # index among the row's instruction tokens
        use = instruction & (pos < self.max_positions)
        update = (self.lowrank_a @ self.lowrank_b)[pos.clamp(0, self.max_positions - 1)]  # (B, T, d)
        return embeds + (update * use.unsqueeze(-1)).to(embeds.dtype)


@dataclass
class DeptConfig(MethodConfig):
    name: str = "dept"
    num_virtual_tokens: int = 60  # length m of the shorter prompt (DePT's T5-Base setting)
    rank: int = 30  # rank r of the embedding update A (s x r) B (r x d); params = m d + r (s + d)
    max_positions: int = 256  # s: instruction positions that get an update (DePT's max input length)
    # learning rate of A and B (own AdamW group through model.optimizer_param_groups)
    lowrank_lr: float = 1e-4
    prompt_lr: float | None = None  # learning rate of the prompt; null = runner.lr


@register_method("dept", DeptConfig, size_knob="rank", budget=Budget(pinned=376_320))
def build(model, cfg: DeptConfig):
    assert cfg.rank >= 1 and cfg.max_positions >= 1, "dept needs rank >= 1 and max_positions >= 1"
    freeze(model)
    ref = any_weight(model.get_input_embeddings())
    source = DecomposedPrompt(cfg.num_virtual_tokens, model.config.hidden_size, cfg.max_positions, cfg.rank, ref,
                              init_from=vocab_init(model, cfg.num_virtual_tokens))
    model = PromptInserter(cfg.num_virtual_tokens, source).install(model)
    prompt = [p for p in source.prompt.parameters() if p.requires_grad]
    lowrank = [p for p in (source.lowrank_a, source.lowrank_b) if p.requires_grad]
    return MethodBuild(model, param_groups=[ParamGroup(prompt, lr=cfg.prompt_lr or None),
                                            ParamGroup(lowrank, lr=cfg.lowrank_lr)])
