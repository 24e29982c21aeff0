"""LoRA (Hu et al., 2021) with the peft library's defaults: `peft.LoraConfig(task_type="CAUSAL_LM")` (SEQ_CLS on encoders),
i.e. rank 8, alpha 8, no dropout, on peft's per-architecture default targets (Llama: q_proj, v_proj):
32 x 2 x 8 x (4096 + 4096) = 4,194,304 tunable parameters on LLaMA-2 7B. The papers' LoRA is method=lora.

    python run.py method=lora_default method.r=16
"""

from __future__ import annotations

from dataclasses import dataclass

from pefts.blocks.arch import peft_task_type
from pefts.registry import Budget, MethodConfig, register_method


@dataclass
class LoraDefaultConfig(MethodConfig):
    name: str = "lora_default"
    r: int = 8  # rank (peft default); alpha stays 8 as in peft, so the update scale is 8 / r


@register_method("lora_default", LoraDefaultConfig, size_knob="r", budget=Budget(pinned=4_194_304))
def build(model, cfg: LoraDefaultConfig):
    import peft

    return peft.get_peft_model(model, peft.LoraConfig(task_type=peft_task_type(model), r=cfg.r))
