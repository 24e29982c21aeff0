"""Method registry and the method -> runner contract.

    @register_method("lora", LoraConfig, size_knob="r", budget=Budget(pinned=9_994_240, paper=10.0e6))
    def build(model, cfg: LoraConfig) -> MethodBuild | nn.Module: ...

The builder receives the frozen backbone (a `transformers` model) and the method's typed config and
returns the PEFT model, whose only trainable parameters are the method's, plus what the runner needs
to train it, as one `MethodBuild`: optimizer parameter groups with their own learning rates (DePT),
architecture parameters trained bi-level on dev batches (IAPT's rational coefficients, SPT's gates,
SSP's search; the runner owns that loop), and `transformers.TrainerCallback`s made from plain
arguments (AdaLoRA's rank allocation, SSP's pruning). A builder with nothing to tell the runner may
return the model alone. The model accepts `input_ids`, `attention_mask`, `labels` in `forward` and
supports `generate(...)` like a HF model. Instruction (prompt) tokens are those with
`attention_mask == 1` and `labels == -100` in training, and the whole prefill input at generation time.

`Budget` holds the method's tunable-parameter count on LLaMA-2 7B (pinned: measured on the meta
device, `python -m scripts.params backbone=llama2-7b method=<name>`) and the paper's (iapt.txt Table 1
and the other papers' tables); tests/test_budgets.py checks every registered method against it, so a
new method edits no central list.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from core.registry import Registry

METHODS = Registry("method")


@dataclass
class MethodConfig:
    """Fields every method config has."""

    name: str = "???"


@dataclass(frozen=True)
class Budget:
    """Tunable parameters on `backbone` (LLaMA-2 7B unless stated): `pinned` is our exact count at the
    preset's defaults; `paper` the count the papers report (None: not reported on that backbone);
    `reachable=False` when the paper's count cannot be met under its stated settings (the arithmetic is
    then in docs/deviations.md, under the method's name in backticks)."""

    pinned: int
    paper: float | None = None
    reachable: bool = True
    backbone: str = "llama2-7b"


@dataclass
class ParamGroup:
    """One AdamW parameter group; None means the runner's value (runner.lr, runner.weight_decay)."""

    params: list[nn.Parameter]
    lr: float | None = None
    weight_decay: float | None = None


@dataclass
class Bilevel:
    """Architecture parameters Θ of a first-order DARTS scheme (iapt.txt Appendix B): the runner leaves
    them out of the training optimizer and gives them one AdamW step at `lr` on a dev batch after each
    training step, during the first `until` fraction of the training steps (1.0: all of them)."""

    params: list[nn.Parameter]
    lr: float
    until: float = 1.0


@dataclass
class MethodBuild:
    """What a method's builder hands the runner."""

    model: nn.Module
    param_groups: list[ParamGroup] | None = None  # None: one group of every trainable parameter
    bilevel: Bilevel | None = None
    callbacks: list[Any] = field(default_factory=list)  # transformers.TrainerCallback instances
    facts: dict[str, int] = field(default_factory=dict)  # counts reported beside trainable/total (SSP's budget)


def register_method(name: str, schema: type, size_knob: str | None = None, budget: Budget | None = None):
    """Register a builder. `size_knob` names the config field that scales the tunable-parameter
    count (rank, bottleneck, prompt length...), which `scripts.params target=...` searches over."""
    return METHODS.register(name, schema, size_knob=size_knob, budget=budget)


def build_peft(model, cfg) -> MethodBuild:
    """Apply the method named `cfg.name` to `model`: the PEFT model and what the runner needs."""
    out = METHODS.get(cfg.name).obj(model, cfg)
    if isinstance(out, MethodBuild):
        return out
    assert isinstance(out, nn.Module), f"method '{cfg.name}' returned {type(out).__name__}, not a MethodBuild"
    return MethodBuild(out)


def build_method(model, cfg) -> nn.Module:
    """Apply the method named `cfg.name` to `model` and return the PEFT model alone (inference, counts)."""
    return build_peft(model, cfg).model
