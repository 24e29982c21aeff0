"""LN-Tuning (Qi et al., 2022, "Parameter-Efficient Tuning on Layer Normalization for Pre-trained Language
Models"): train only the gain (and bias, where there is one) of every normalization layer, through
`peft.LNTuningConfig` / `peft.get_peft_model` (peft copies each target norm and trains the copy).

Not in the papers' tables: a small reference point below BitFit. LLaMA-2 7B (RMSNorm, no biases): the two
norms of each block plus the final norm, 32 x 2 x 4096 + 4096 = 266,240. The model equals the backbone at
step 0 (the copies start as the pretrained norms).

    python run.py method=ln_tuning
"""

from __future__ import annotations

from dataclasses import dataclass

from pefts.blocks.arch import peft_task_type
from pefts.registry import Budget, MethodConfig, register_method


@dataclass
class LnTuningConfig(MethodConfig):
    name: str = "ln_tuning"
    # norm modules to train, by name suffix; null: peft's per-architecture list (Llama: input_layernorm,
    # post_attention_layernorm, norm)
    target_modules: list[str] | None = None


@register_method("ln_tuning", LnTuningConfig, size_knob=None, budget=Budget(pinned=266_240))
def build(model, cfg: LnTuningConfig):
    import warnings

    import peft

    targets = None if cfg.target_modules is None else list(cfg.target_modules)
    with warnings.catch_warnings():  # peft warns on RMSNorm (not on its list); tests/test_methods.py checks it works
        warnings.filterwarnings("ignore", message="Unsupported layer type", category=UserWarning)
        return peft.get_peft_model(model, peft.LNTuningConfig(target_modules=targets, task_type=peft_task_type(model)))
