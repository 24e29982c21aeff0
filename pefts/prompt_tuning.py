"""Prompt tuning (Lester et al., 2021): `n` learned input vectors in front of every instruction.

Own implementation (pefts/blocks/prompts.py `PromptInserter` + `SoftPrompt`), not `peft.PromptTuningConfig`:
peft 0.21.2 puts the virtual tokens before the left padding, so a left-padded row sees its prompt at a
different relative (RoPE) distance than the same row alone (max logit gap 7e-3 on the tiny backbone;
docs/deviations.md). Here the prompt goes right before each row's first real token.
Parameters: n x d (10 x 4096 = 40,960 on LLaMA-2 7B).

    python run.py method=prompt_tuning method.num_virtual_tokens=20
"""

from __future__ import annotations

from dataclasses import dataclass

from pefts.blocks.common import any_weight, freeze
from pefts.blocks.prompts import PromptInserter, SoftPrompt, vocab_init
from pefts.registry import Budget, MethodConfig, register_method


@dataclass
class PromptTuningConfig(MethodConfig):
    name: str = "prompt_tuning"
    num_virtual_tokens: int = 10  # soft tokens per input (ID-SPAM's baseline setting); params = tokens x d
    # vocab: start from embeddings of random vocabulary tokens (Lester et al.); normal: N(0, 0.02)
    init: str = "vocab"


@register_method("prompt_tuning", PromptTuningConfig, size_knob="num_virtual_tokens",
                 budget=Budget(pinned=40_960))
def build(model, cfg: PromptTuningConfig):
    assert cfg.init in ("vocab", "normal"), f"prompt_tuning init must be vocab|normal, got '{cfg.init}'"
    freeze(model)
    d = model.config.hidden_size
    ref = any_weight(model.get_input_embeddings())
    init = vocab_init(model, cfg.num_virtual_tokens) if cfg.init == "vocab" else None
    return PromptInserter(cfg.num_virtual_tokens, SoftPrompt(cfg.num_virtual_tokens, d, ref, init_from=init)).install(model)
