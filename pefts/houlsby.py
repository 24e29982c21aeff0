"""Houlsby adapters (Houlsby et al., 2019, Fig. 2): a bottleneck h <- h + W_up f(W_down h + b) + b'
after the attention sublayer and after the feed-forward sublayer of every block (before their
residual additions), as in iapt.txt Appendix F ("bottleneck dimension 18 ... added on the
self-attention and feed-forward module").

Attached with forward hooks on `self_attn` and `mlp` (pefts/blocks/bottleneck.py `OutputAdapter`);
W_down ~ N(0, 0.02), W_up and biases zero, so the model equals the backbone at step 0. Activation
swish (AdapterHub's HoulsbyConfig; the paper leaves it open). On LLaMA-2 7B with bottleneck 18:
32 x 2 x (2 x 4096 x 18 + 18 + 4096) = 9,700,480 (Table 1: 9.4M = the same without biases).

    python run.py method=houlsby method.bottleneck=16
"""

from __future__ import annotations

from dataclasses import dataclass

from pefts.blocks.arch import decoder_layers, sublayer
from pefts.blocks.bottleneck import Bottleneck, OutputAdapter, attach_output_hook
from pefts.blocks.common import any_weight, freeze
from pefts.registry import Budget, MethodConfig, register_method


@dataclass
class HoulsbyConfig(MethodConfig):
    name: str = "houlsby"
    # adapter width (Appendix F); params = 2 adapters x L x (2 d bottleneck + bottleneck + d)
    bottleneck: int = 18
    activation: str = "swish"  # nonlinearity inside the bottleneck: relu | gelu | swish | tanh | identity


def add_houlsby(model, bottleneck: int, activation: str, skip_layers: int = 0) -> None:
    """Houlsby adapters after attention and FFN of every block except the lowest `skip_layers`."""
    d = model.config.hidden_size
    layers = decoder_layers(model)
    assert 0 <= skip_layers < len(layers), f"cannot drop {skip_layers} of {len(layers)} layers"
    for layer in layers[skip_layers:]:
        for kind in ("attn", "mlp"):
            sub = sublayer(model, layer, kind)
            adapter = Bottleneck(d, bottleneck, any_weight(sub), activation=activation)
            attach_output_hook(sub, "peft_adapter", OutputAdapter(adapter))


@register_method("houlsby", HoulsbyConfig, size_knob="bottleneck",
                 budget=Budget(pinned=9_700_480, paper=9.4e6))
def build(model, cfg: HoulsbyConfig):
    freeze(model)
    add_houlsby(model, cfg.bottleneck, cfg.activation)
    return model
