"""BitFit as the papers run it (iapt.txt Appendix F): "the bias vectors are initialized with dimension
8, and then a learnable projection layer projects it to the same dimension with the LLaMA-2 backbone".

Each target linear layer m gets b_m = P_m c_m with its own code c_m (dim) and projection P_m
(out_m x dim, no bias); P_m starts at zero, so the model equals the backbone at step 0
(pefts/blocks/vectors.py `LinearBias(dim=...)`). On LLaMA-2 7B with dim 8:
32 x [8 x (4 x 4096 + 2 x 11008 + 4096) + 7 x 8] = 10,880,768 = Table 1's 10.9M.

    python run.py method=bitfit_proj method.dim=4
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pefts.bitfit import LLAMA_LINEARS, add_biases
from pefts.blocks.common import freeze
from pefts.registry import Budget, MethodConfig, register_method


@dataclass
class BitFitProjConfig(MethodConfig):
    name: str = "bitfit_proj"
    dim: int = 8  # size of each bias code; params = dim x (sum of output widths + number of targets)
    # linear layers that get a bias
    target_modules: list[str] = field(default_factory=lambda: list(LLAMA_LINEARS))


@register_method("bitfit_proj", BitFitProjConfig, size_knob="dim",
                 budget=Budget(pinned=10_880_768, paper=10.9e6))
def build(model, cfg: BitFitProjConfig):
    assert cfg.dim >= 1, f"bitfit_proj dim must be >= 1, got {cfg.dim}"
    freeze(model)
    add_biases(model, list(cfg.target_modules), cfg.dim)
    return model
