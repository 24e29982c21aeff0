"""(IA)^3 (Liu et al., 2022) through `peft.IA3Config` / `peft.get_peft_model`, with peft's defaults.

peft's Llama defaults rescale the outputs of k_proj and v_proj and the input of down_proj (Sec. 3.3):
32 x (4096 + 4096 + 11008) = 614,400 tunable parameters on LLaMA-2 7B. The papers' (IA)^3 row
(iapt.txt Table 1, 9.8M) is the projected variant, method=ia3_proj (pefts/ia3_proj.py).
No size knob: the count is fixed by the architecture.

    python run.py method=ia3
"""

from __future__ import annotations

from dataclasses import dataclass

from pefts.blocks.arch import peft_task_type
from pefts.registry import Budget, MethodConfig, register_method


@dataclass
class Ia3Config(MethodConfig):
    name: str = "ia3"
    # rescaled modules; null: peft's per-architecture default (Llama: k_proj, v_proj, down_proj)
    target_modules: list[str] | None = None
    # targets whose input (not output) is rescaled; null: peft's default (down_proj)
    feedforward_modules: list[str] | None = None


@register_method("ia3", Ia3Config, size_knob=None, budget=Budget(pinned=614_400))
def build(model, cfg: Ia3Config):
    import peft

    kw = {}
    if cfg.target_modules is not None:
        kw["target_modules"] = list(cfg.target_modules)
        kw["feedforward_modules"] = list(cfg.feedforward_modules or [])
    return peft.get_peft_model(model, peft.IA3Config(task_type=peft_task_type(model), **kw))


