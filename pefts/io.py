"""Save and load the PEFT weights alone (no backbone weights), for every method alike.

The saved file holds exactly the parameters with `requires_grad=True` (plus registered buffers a
method marks as its own with the `peft_` name prefix), keyed by their names in the wrapped model.
Loading expects the same method built on a fresh backbone:

    save_peft(model, "run/peft.safetensors")
    fresh = build_method(load_backbone(...)[0], cfg.method); load_peft(fresh, "run/peft.safetensors")
"""

from __future__ import annotations

import os
import tempfile

import torch
from safetensors.torch import load_file, save_file


def peft_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The method's own tensors: trainable parameters and buffers whose last name part starts with 'peft_'."""
    state = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    state.update({n: b.detach() for n, b in model.named_buffers() if n.rsplit(".", 1)[-1].startswith("peft_")})
    return state


def save_peft(model: torch.nn.Module, path: str) -> None:
    """Write the PEFT tensors to a safetensors file atomically (temp file + rename)."""
    state = {n: t.contiguous().cpu().clone() for n, t in peft_state_dict(model).items()}
    assert state, "the model has no trainable parameters: nothing to save"
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    os.close(fd)
    try:
        save_file(state, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_peft(model: torch.nn.Module, path: str) -> torch.nn.Module:
    """Load PEFT tensors saved by `save_peft` into `model` (the same method on a fresh backbone)."""
    state = load_file(path)
    own = peft_state_dict(model)
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"PEFT weights in '{path}' do not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    with torch.no_grad():
        for name, value in state.items():
            target = params.get(name, buffers.get(name))
            assert target.shape == value.shape, f"{name}: saved {tuple(value.shape)} vs model {tuple(target.shape)}"
            target.copy_(value.to(target.dtype))
    return model
