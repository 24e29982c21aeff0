"""Bottleneck adapters: sequential on a sublayer's output (Houlsby) or parallel to a whole block (He et al.).

    from pefts.blocks.arch import decoder_layers
    for layer in decoder_layers(model):
        attach_output_hook(layer.mlp, "peft_adapter", OutputAdapter(Bottleneck(d, 18, ref=layer.mlp.down_proj.weight)))
"""

from __future__ import annotations

import torch
from torch import nn

from pefts.blocks.activations import ACTIVATIONS, ADAPTER_ACTIVATIONS
from pefts.blocks.common import new_param


def _first(output):
    return output[0] if isinstance(output, tuple) else output


def _replace_first(output, value):
    return (value, *output[1:]) if isinstance(output, tuple) else value


class Bottleneck(nn.Module):
    """x -> up(act(down(x))) with biases; `up` is zero-initialized so a fresh adapter adds nothing.

    Houlsby et al. (2019) Fig. 2 (with the skip connection added by the caller); He et al. (2021) Eq. 5.
    `activation`: a name among `ADAPTER_ACTIVATIONS` (pefts/blocks/activations.py) or a module.
    """

    def __init__(self, dim: int, bottleneck: int, ref: torch.Tensor, activation: str | nn.Module = "relu",
                 scaling: float = 1.0, init_std: float = 0.02):
        super().__init__()
        if isinstance(activation, nn.Module):
            self.act = activation  # a learnable activation (Learned-Adapter's mixed operation)
            activation = None
        else:
            assert activation in ADAPTER_ACTIVATIONS, f"activation '{activation}' not in {sorted(ADAPTER_ACTIVATIONS)}"
            self.act = ACTIVATIONS[activation]()  # parameter-free
        self.activation, self.scaling = activation, scaling
        self.down_weight = new_param(ref, bottleneck, dim, init="normal", std=init_std)
        self.down_bias = new_param(ref, bottleneck)
        self.up_weight = new_param(ref, dim, bottleneck)
        self.up_bias = new_param(ref, dim)

    def down(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x.to(self.down_weight.dtype), self.down_weight, self.down_bias)

    def up(self, z: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(z, self.up_weight, self.up_bias) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(x))).to(x.dtype)


class OutputAdapter(nn.Module):
    """Sequential adapter on a sublayer's output: h <- h + f(h) (Houlsby et al., 2019)."""

    def __init__(self, adapter: nn.Module):
        super().__init__()
        self.adapter = adapter

    def hook(self, module, args, output):
        h = _first(output)
        return _replace_first(output, h + self.adapter(h))


class ParallelAdapter(nn.Module):
    """Adapter parallel to a whole block: out <- block(h) + f(h) (He et al., 2021, parallel form)."""

    def __init__(self, adapter: nn.Module):
        super().__init__()
        self.adapter = adapter

    def hook(self, module, args, kwargs, output):
        h = args[0] if args else kwargs["hidden_states"]
        out = _first(output)
        return _replace_first(output, out + self.adapter(h))


def attach_output_hook(module: nn.Module, name: str, child: OutputAdapter) -> None:
    """Register `child` as `module.<name>` and its `hook` as a forward hook of `module`."""
    assert not hasattr(module, name), f"{type(module).__name__} already has '{name}'"
    module.add_module(name, child)
    module.register_forward_hook(child.hook)


def attach_block_hook(layer: nn.Module, name: str, child: ParallelAdapter) -> None:
    assert not hasattr(layer, name), f"{type(layer).__name__} already has '{name}'"
    layer.add_module(name, child)
    layer.register_forward_hook(child.hook, with_kwargs=True)
