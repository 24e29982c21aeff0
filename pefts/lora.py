"""LoRA (Hu et al., 2021) through `peft.LoraConfig` / `peft.get_peft_model`.

Papers' setting (iapt.txt Appendix F): rank 4 on every linear module of every Transformer layer,
which gives 10.0M tunable parameters on LLaMA-2 7B (iapt.txt Table 1):
32 layers x 4 x [4(4096+4096) (q,k,v,o) + 3(4096+11008) (gate,up,down)] = 9,994,240.

    python run.py method=lora method.r=8
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pefts.blocks.arch import peft_task_type
from pefts.registry import Budget, MethodConfig, register_method


@dataclass
class LoraConfig(MethodConfig):
    name: str = "lora"
    r: int = 4  # rank of every low-rank update; tunable params scale linearly with it
    alpha: float = 8.0  # scaling numerator: the update is multiplied by alpha / r
    dropout: float = 0.05  # dropout on the LoRA input path
    # every linear module of every layer (not the LM head)
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])


@register_method("lora", LoraConfig, size_knob="r", budget=Budget(pinned=9_994_240, paper=10.0e6))
def build(model, cfg: LoraConfig):
    import peft

    targets = list(cfg.target_modules)
    config = peft.LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules="all-linear" if targets == ["all-linear"] else targets,
        task_type=peft_task_type(model),
    )
    return peft.get_peft_model(model, config)

