"""AdaLoRA (Zhang et al., 2023b) through `peft.AdaLoraConfig` / `peft.get_peft_model`.

Papers' setting (iapt.txt Appendix F): initial rank 8 on every linear module, half of the rank
budget pruned during fine-tuning (target_r = 4 on average). The tensors allocated at the start hold
32 x [8 x (4(4096+4096) + 3(4096+11008)) + 7 x 8] = 19,990,272 parameters on LLaMA-2 7B; after
pruning, the kept triplets (rank 4 on average) amount to 9,995,136, Table 1's 10.0M.

AdaLoRA needs the training length (`total_step`) and a call of `update_and_allocate(step)` after
each optimizer step, before the gradients are zeroed. The builder's `MethodBuild` carries an
`AdaLoraSchedule` callback (a `transformers.TrainerCallback`) that sets `total_step` (and tinit/tfinal
from their fractions) from the Trainer's `max_steps` at train begin and calls `update_and_allocate` in
`on_optimizer_step`; `method.total_step` is only the fallback used at construction.

    python run.py method=adalora method.init_r=12
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainerCallback

from pefts.blocks.arch import peft_task_type
from pefts.registry import Budget, MethodBuild, MethodConfig, register_method


@dataclass
class AdaLoraConfig(MethodConfig):
    name: str = "adalora"
    init_r: int = 8  # initial rank of every update; allocated params scale linearly with it
    target_ratio: float = 0.5  # final average rank = init_r x this (half of the budget pruned, Appendix F)
    alpha: float = 8.0  # scaling numerator of the update (as LoRA here)
    dropout: float = 0.05  # dropout on the update's input path
    # every linear module of every layer (not the LM head)
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    # fallback training length; the trainer callback replaces it with the Trainer's max_steps
    total_step: int = 1000
    tinit_frac: float = 0.1  # share of the steps trained before any pruning (AdaLoRA's t_i)
    tfinal_frac: float = 0.2  # share of the steps trained after the final budget is reached (AdaLoRA's t_f)
    delta_t: int = 10  # steps between two budget reallocations
    beta1: float = 0.85  # EMA coefficient of the sensitivity (peft default)
    beta2: float = 0.85  # EMA coefficient of the uncertainty (peft default)
    orth_reg_weight: float = 0.5  # weight of the orthogonality regularizer on P and Q added to the loss


def schedule(cfg: AdaLoraConfig, total_step: int) -> dict:
    """tinit/tfinal (steps) from their fractions of `total_step`, keeping tinit < total - tfinal."""
    total_step = max(int(total_step), 2)
    tinit = int(cfg.tinit_frac * total_step)
    tfinal = int(cfg.tfinal_frac * total_step)
    if tinit >= total_step - tfinal:
        tinit, tfinal = 0, 0
    return {"total_step": total_step, "tinit": tinit, "tfinal": tfinal}


class AdaLoraSchedule(TrainerCallback):
    """Sets AdaLoRA's schedule from the Trainer and prunes ranks after every optimizer step."""

    def __init__(self, model, cfg: AdaLoraConfig):
        self.model, self.cfg = model, cfg

    def on_train_begin(self, args, state, control, **kw):
        conf = self.model.peft_config["default"]
        for k, v in schedule(self.cfg, state.max_steps).items():
            setattr(conf, k, v)

    def on_optimizer_step(self, args, state, control, **kw):
        self.model.base_model.update_and_allocate(state.global_step)


@register_method("adalora", AdaLoraConfig, size_knob="init_r",
                 budget=Budget(pinned=19_990_272, paper=10.0e6, reachable=False))
def build(model, cfg: AdaLoraConfig):
    import peft

    assert 0 < cfg.target_ratio <= 1, f"target_ratio must be in (0, 1], got {cfg.target_ratio}"
    targets = list(cfg.target_modules)
    config = peft.AdaLoraConfig(
        init_r=cfg.init_r,
        target_r=max(1, round(cfg.init_r * cfg.target_ratio)),
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules="all-linear" if targets == ["all-linear"] else targets,
        deltaT=cfg.delta_t,
        beta1=cfg.beta1,
        beta2=cfg.beta2,
        orth_reg_weight=cfg.orth_reg_weight,
        task_type=peft_task_type(model),
        **schedule(cfg, cfg.total_step),
    )
    peft_model = peft.get_peft_model(model, config)
    return MethodBuild(peft_model, callbacks=[AdaLoraSchedule(peft_model, cfg)])
