"""Parallel adapter (He et al., 2021, Eq. 5 / Fig. 1c) connected to the whole block, as in iapt.txt
Appendix F ("bottleneck dimension 36 ... connected to the whole block"): out <- block(h) + s * W_up
relu(W_down h + b) + b', where h is the block's input.

Attached with a forward hook on every decoder layer (pefts/blocks/bottleneck.py `ParallelAdapter`);
W_up and biases start at zero, so the model equals the backbone at step 0; s = 4 as in He et al.'s
parallel adapter. On LLaMA-2 7B with bottleneck 36: 32 x (2 x 4096 x 36 + 36 + 4096) = 9,569,408
(Table 1: 9.4M = the same without biases).

    python run.py method=parallel_adapter method.bottleneck=32
"""

from __future__ import annotations

from dataclasses import dataclass

from pefts.blocks.arch import decoder_layers
from pefts.blocks.bottleneck import Bottleneck, ParallelAdapter, attach_block_hook
from pefts.blocks.common import any_weight, freeze
from pefts.registry import Budget, MethodConfig, register_method


@dataclass
class ParallelAdapterConfig(MethodConfig):
    name: str = "parallel_adapter"
    bottleneck: int = 36  # adapter width (Appendix F); params = L x (2 d bottleneck + bottleneck + d)
    activation: str = "relu"  # nonlinearity inside the bottleneck (He et al.)
    scaling: float = 4.0  # s multiplying the adapter output (He et al.'s parallel adapter)


@register_method("parallel_adapter", ParallelAdapterConfig, size_knob="bottleneck",
                 budget=Budget(pinned=9_569_408, paper=9.4e6))
def build(model, cfg: ParallelAdapterConfig):
    freeze(model)
    d = model.config.hidden_size
    for layer in decoder_layers(model):
        adapter = Bottleneck(d, cfg.bottleneck, any_weight(layer), activation=cfg.activation, scaling=cfg.scaling)
        attach_block_hook(layer, "peft_adapter", ParallelAdapter(adapter))
    return model
