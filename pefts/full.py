"""Full fine-tuning: every backbone parameter is trainable (the upper reference of the tables).

    python run.py method=full runner.lr=1e-5
"""

from __future__ import annotations

from dataclasses import dataclass

from pefts.registry import Budget, MethodConfig, register_method


@dataclass
class FullConfig(MethodConfig):
    name: str = "full"


@register_method("full", FullConfig, size_knob=None, budget=Budget(pinned=6_738_415_616))
def build(model, cfg: FullConfig):
    for p in model.parameters():
        p.requires_grad_(True)
    return model
