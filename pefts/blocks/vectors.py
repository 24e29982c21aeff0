"""Vectors on linear outputs: BitFit biases and (IA)^3 scales, free or projected from a small code.

    from pefts.blocks.arch import named_linears
    for _, lin in named_linears(model, ["q_proj", "v_proj"]):
        child = LinearBias(lin.out_features, lin.weight)
        lin.add_module("peft_bitfit", child)
        lin.register_forward_hook(child.hook)
"""

from __future__ import annotations

import torch
from torch import nn

from pefts.blocks.common import new_param


class ProjectedVector(nn.Module):
    """A vector of size `out`: a free vector (`dim=None`), or `proj @ code` with a `dim`-sized code and a
    learnable (out x dim) projection (iapt.txt Appendix F). `proj` starts at zero, so the vector starts at 0."""

    def __init__(self, out: int, ref: torch.Tensor, dim: int | None = None, code_std: float = 1.0):
        super().__init__()
        self.dim = dim
        if dim is None:
            self.vector = new_param(ref, out)
        else:
            self.code = new_param(ref, dim, init="normal", std=code_std)
            self.proj = new_param(ref, out, dim)

    def value(self) -> torch.Tensor:
        return self.vector if self.dim is None else self.proj @ self.code


class LinearBias(nn.Module):
    """BitFit on a bias-less linear layer: y <- y + b (Ben Zaken et al., 2022), b zero at start."""

    def __init__(self, out: int, ref: torch.Tensor, dim: int | None = None):
        super().__init__()
        self.bias = ProjectedVector(out, ref, dim)

    def hook(self, module, args, output):
        return output + self.bias.value().to(output.dtype)


class LinearScale(nn.Module):
    """(IA)^3 on a linear output: y <- y * (1 + l) (Liu et al., 2022, Eq. in Sec. 3.3 with l = l' - 1),
    so l = 0 (the backbone) at start."""

    def __init__(self, out: int, ref: torch.Tensor, dim: int | None = None):
        super().__init__()
        self.scale = ProjectedVector(out, ref, dim)

    def hook(self, module, args, output):
        return output * (1 + self.scale.value()).to(output.dtype)
