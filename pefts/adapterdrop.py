"""AdapterDrop (Rücklé et al., 2021): Houlsby adapters removed from the lowest layers.

Static AdapterDrop (the adapters of the lowest `drop_layers` blocks are never added), on top of the
Houlsby adapters of iapt.txt Appendix F (bottleneck 18 on attention and FFN). Table 1 gives 9.2M, between
dropping one block (9,397,340) and two (9,094,200); we drop two (ratio 0.989; docs/deviations.md).
On LLaMA-2 7B: 30 x 2 x (2 x 4096 x 18 + 18 + 4096) = 9,094,200.

    python run.py method=adapterdrop method.drop_layers=5
"""

from __future__ import annotations

from dataclasses import dataclass

from pefts.blocks.common import freeze
from pefts.houlsby import add_houlsby
from pefts.registry import Budget, MethodConfig, register_method


@dataclass
class AdapterDropConfig(MethodConfig):
    name: str = "adapterdrop"
    bottleneck: int = 18  # adapter width (Appendix F, as Houlsby)
    activation: str = "swish"  # nonlinearity inside the bottleneck (as Houlsby)
    drop_layers: int = 2  # lowest blocks without adapters; 2 of 32 gives 9.09M on LLaMA-2 7B (Table 1: 9.2M)


@register_method("adapterdrop", AdapterDropConfig, size_knob="bottleneck",
                 budget=Budget(pinned=9_094_200, paper=9.2e6))
def build(model, cfg: AdapterDropConfig):
    freeze(model)
    add_houlsby(model, cfg.bottleneck, cfg.activation, skip_layers=cfg.drop_layers)
    return model
