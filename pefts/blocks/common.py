"""Helpers shared by the baseline methods' pieces: new parameters next to a backbone weight, freezing.

New parameters are created on the device of the weight they sit next to (so a `meta`-device backbone
gives a `meta`-device method, see scripts/params.py) in float32; the hooks cast back to the activation
dtype. Every piece attaches to an unmodified `transformers` model with forward hooks (the backbone's
module names and weights stay as they are); where to attach comes from pefts/blocks/arch.py.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def new_param(ref: torch.Tensor, *shape: int, init: str = "zeros", std: float = 0.02) -> nn.Parameter:
    """A float32 parameter on `ref`'s device: init 'zeros', 'ones', 'normal' (std) or 'kaiming' (fan-in uniform)."""
    t = torch.empty(*shape, device=ref.device, dtype=torch.float32)
    if init == "zeros":
        nn.init.zeros_(t)
    elif init == "ones":
        nn.init.ones_(t)
    elif init == "normal":
        nn.init.normal_(t, std=std)
    elif init == "kaiming":
        nn.init.kaiming_uniform_(t, a=math.sqrt(5))
    else:
        raise ValueError(f"unknown init '{init}'")
    return nn.Parameter(t)


def freeze(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def any_weight(module: nn.Module) -> torch.Tensor:
    """A weight of `module` (to take the device from)."""
    for p in module.parameters():
        return p
    raise ValueError(f"{type(module).__name__} has no parameters")
