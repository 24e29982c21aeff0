"""Method registry: `@register_method(name, ConfigDataclass)` on a `build(model, cfg) -> model` function.

The builder receives the frozen-or-not backbone (a `transformers` causal LM) and the method's typed
config; it returns a model whose only trainable parameters are the method's. That model must accept
`input_ids`, `attention_mask`, `labels` in `forward` and support `generate(...)` like a HF model.
Instruction (prompt) tokens are those with `attention_mask == 1` and `labels == -100` in training,
and the whole prefill input at generation time.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.registry import Registry

METHODS = Registry("method")


@dataclass
class MethodConfig:
    """Fields every method config has."""

    name: str = "???"


def register_method(name: str, schema: type, size_knob: str | None = None):
    """Register a builder. `size_knob` names the config field that scales the tunable-parameter
    count (rank, bottleneck, prompt length...), which `scripts.params target=...` searches over."""
    return METHODS.register(name, schema, size_knob=size_knob)


def build_method(model, cfg):
    """Apply the method named `cfg.name` to `model` and return the PEFT model."""
    return METHODS.get(cfg.name).obj(model, cfg)
