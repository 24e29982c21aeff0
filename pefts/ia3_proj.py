"""(IA)^3 as the papers run it (iapt.txt Appendix F): "the activation adjusting vectors are added the
Query, Key, and Up activations ... initialized with dimension 16, and then a learnable projection layer
projects it to the same dimension with the LLaMA-2 backbone".

Each target m rescales its output: y <- y * (1 + P_m c_m), code c_m (dim), projection P_m
(out_m x dim, no bias) starting at zero, so the model equals the backbone at step 0 (the "1 +" form
replaces (IA)^3's ones-initialized vector; pefts/blocks/vectors.py `LinearScale`). On LLaMA-2 7B
with dim 16: 32 x [16 x (4096 + 4096 + 11008) + 3 x 16] = 9,831,936 = Table 1's 9.8M.

    python run.py method=ia3_proj method.dim=8
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pefts.blocks.arch import named_linears
from pefts.blocks.common import freeze
from pefts.blocks.vectors import LinearScale
from pefts.registry import Budget, MethodConfig, register_method


@dataclass
class Ia3ProjConfig(MethodConfig):
    name: str = "ia3_proj"
    dim: int = 16  # size of each rescaling code; params = dim x (sum of output widths + number of targets)
    # Query, Key and Up activations (Appendix F)
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "up_proj"])


@register_method("ia3_proj", Ia3ProjConfig, size_knob="dim", budget=Budget(pinned=9_831_936, paper=9.8e6))
def build(model, cfg: Ia3ProjConfig):
    assert cfg.dim >= 1, f"ia3_proj dim must be >= 1, got {cfg.dim}"
    freeze(model)
    for _, lin in named_linears(model, list(cfg.target_modules)):
        child = LinearScale(lin.out_features, lin.weight, cfg.dim)
        lin.add_module("peft_ia3", child)
        lin.register_forward_hook(child.hook)
    return model
