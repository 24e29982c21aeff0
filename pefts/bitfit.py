"""BitFit (Ben Zaken et al., 2022): train only bias terms, here of the linear layers of every block.

LLaMA's linear layers have no biases, so zero-initialized bias vectors are added to their outputs
with forward hooks (pefts/blocks/vectors.py `LinearBias`); a linear layer that already has a bias
has that bias unfrozen instead. On LLaMA-2 7B (q,k,v,o,gate,up,down):
32 x (4 x 4096 + 2 x 11008 + 4096) = 1,359,872 parameters. The papers' BitFit row (iapt.txt Table 1,
10.9M) is the projected variant, method=bitfit_proj. No size knob: the count is fixed by the architecture.

    python run.py method=bitfit
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pefts.blocks.arch import ARCHS, named_linears
from pefts.blocks.common import freeze
from pefts.blocks.vectors import LinearBias
from pefts.registry import Budget, MethodConfig, register_method

LLAMA_LINEARS = list(ARCHS["llama"].linears)


@dataclass
class BitFitConfig(MethodConfig):
    name: str = "bitfit"
    # linear layers that get a bias
    target_modules: list[str] = field(default_factory=lambda: list(LLAMA_LINEARS))


def add_biases(model, targets: list[str], dim: int | None) -> None:
    """A (possibly projected) bias on each target linear; plain BitFit reuses existing biases."""
    for _, lin in named_linears(model, targets):
        if dim is None and lin.bias is not None:
            lin.bias.requires_grad_(True)
            continue
        child = LinearBias(lin.out_features, lin.weight, dim)
        lin.add_module("peft_bitfit", child)
        lin.register_forward_hook(child.hook)


@register_method("bitfit", BitFitConfig, size_knob=None, budget=Budget(pinned=1_359_872))
def build(model, cfg: BitFitConfig):
    freeze(model)
    add_biases(model, list(cfg.target_modules), None)
    return model
