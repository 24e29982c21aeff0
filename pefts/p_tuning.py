"""P-tuning (Liu et al., 2021, "GPT understands, too") as the papers run it (iapt.txt Appendix F):
"the soft prompts' length is 64, and the soft prompts is first initialized with dimension 36, and then
a learnable projection layer projects it to the same dimension with the LLaMA-2 backbone".

Soft prompt P = C W^T + b with codes C (64 x 36) and one shared projection W (d x 36), b (d), inserted
before each instruction like prompt tuning (pefts/blocks/prompts.py `SoftPrompt(dim=...)`,
`PromptInserter`). peft's `PromptEncoder` does not match this: it embeds the tokens at the model
width and reparameterizes them with an MLP/LSTM whose input is d-wide.
On LLaMA-2 7B: 64 x 36 + 36 x 4096 + 4096 = 153,856; Table 1's 9.4M cannot come from this
setting (docs/budgets.md), `target=9.4e6` searches the code size `dim` instead.

    python run.py method=p_tuning method.dim=64
"""

from __future__ import annotations

from dataclasses import dataclass

from pefts.blocks.common import any_weight, freeze
from pefts.blocks.prompts import PromptInserter, SoftPrompt
from pefts.registry import Budget, MethodConfig, register_method


@dataclass
class PTuningConfig(MethodConfig):
    name: str = "p_tuning"
    num_virtual_tokens: int = 64  # soft tokens per input (Appendix F)
    # size of each token's code before the shared projection to d; params = tokens x dim + dim x d + d
    dim: int = 36


@register_method("p_tuning", PTuningConfig, size_knob="dim",
                 budget=Budget(pinned=153_856, paper=9.4e6, reachable=False))
def build(model, cfg: PTuningConfig):
    assert cfg.dim >= 1, f"p_tuning dim must be >= 1, got {cfg.dim}"
    freeze(model)
    ref = any_weight(model.get_input_embeddings())
    prompt = SoftPrompt(cfg.num_virtual_tokens, model.config.hidden_size, ref, dim=cfg.dim)
    return PromptInserter(cfg.num_virtual_tokens, prompt).install(model)
