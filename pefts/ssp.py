"""SSP / S3Delta (Hu et al., 2022, "Sparse Structure Search for Parameter-Efficient Tuning"), the smallest
faithful version: a search space of gated delta modules, a differentiable gate search, then pruning to a
parameter budget, after which the kept modules keep training (iapt.txt Table 1: 8.6M on LLaMA-2 7B;
Appendix F: "We adjust the sparsity for SSP so that the number of tunable parameters is comparable").

Search space: on every target linear module of every decoder layer (q,k,v,o,gate,up,down on Llama) two
candidates, each behind its own scalar gate g = sigmoid(a) (a learnable logit):
  - LoRA of rank r:  y <- y + g_lora * (alpha / r) * B A dropout(x)   (A kaiming, B zero)
  - a BitFit bias:   y <- y + g_bias * b                                 (b zero)
Adapters and LNFit are left out of the space (docs/deviations.md, "ssp"). Attached with forward hooks
(`SspCandidates`, child `peft_ssp` of each linear), so the backbone is untouched and the model equals
the backbone at step 0.

Schedule (declared in the returned `MethodBuild`; the runner runs it):
  1. search, the first `search_frac` of the training steps: deltas train on training batches; the gate
     logits either take one AdamW step on a dev batch after every training step (`search_bilevel: true`,
     first-order DARTS as in the paper, at `arch_lr`: `Bilevel(gates, until=search_frac)`, so the runner
     leaves the gates out of the Trainer's optimizer) or train jointly with the deltas
     (`search_bilevel: false`, a parameter group without weight decay).
  2. prune (the `SspPrune` callback), at the end of step ceil(search_frac x max_steps): candidates sorted by gate value (highest
     first) are kept greedily while their parameter total fits `budget` (an absolute count, or a
     fraction of the search space when <= 1); the others are zeroed and masked out of the forward pass
     (no output, no gradient). The kept gates are fixed at their current values.
  3. the kept deltas keep training to the end.

The structure lives in buffers `peft_keep` (1 kept / 0 pruned), `peft_gate` (fixed gate values) and
`peft_searching` (1 before pruning), saved by pefts/io.py, so save_peft -> load_peft onto a fresh build
reproduces a pruned model. Pruned tensors stay `requires_grad=True` (but never get a gradient): that keeps
the set of saved tensors equal to a fresh build's, which load_peft requires, and keeps the runner's
best-dev-state restore valid across the pruning step.

Counts on LLaMA-2 7B (r = 8): the build-time search space (what `scripts.params` reports, like AdaLoRA's
"allocated") is 32 x [8 x 78,080 + (4 x 4096 + 2 x 11008 + 4096) + 7 x 2] = 21,348,800; after pruning the
kept deltas total at most `budget` = 8,600,000 (Table 1's 8.6M); both counts, on the meta device:
`python -m scripts.params backbone=llama2-7b method=ssp` (search_space, gates, budget).

    python run.py method=ssp method.budget=0.4 method.search_frac=0.3
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import TrainerCallback

from pefts.blocks.arch import ARCHS, named_linears
from pefts.blocks.common import freeze, new_param
from pefts.registry import Bilevel, Budget, MethodBuild, MethodConfig, ParamGroup, register_method

LLAMA_LINEARS = list(ARCHS["llama"].linears)
KINDS = ("lora", "bias")  # candidate order inside each SspCandidates


@dataclass
class SspConfig(MethodConfig):
    name: str = "ssp"
    r: int = 8  # rank of every LoRA candidate; the search space (counted by scripts.params) scales with it
    alpha: float = 16.0  # LoRA scaling numerator: the update is multiplied by alpha / r
    dropout: float = 0.05  # dropout on the LoRA input path
    # linears that get candidates
    target_modules: list[str] = field(default_factory=lambda: list(LLAMA_LINEARS))
    # tunable params kept after pruning (Table 1: 8.6M on LLaMA-2 7B); <= 1 = a fraction of the search space
    budget: float = 8.6e6
    search_frac: float = 0.3  # share of the training steps spent searching the gates before pruning
    gate_init: float = 0.0  # initial gate logit of every candidate (sigmoid(0) = 0.5)
    # gates take AdamW steps on dev batches (first-order DARTS); false trains them jointly
    search_bilevel: bool = True
    arch_lr: float = 3e-4  # learning rate of the gate logits in the bi-level dev steps (the papers give none)


class SspCandidates(nn.Module):
    """The gated candidates (LoRA, bias) of one linear layer; `hook` adds the kept ones to its output."""

    def __init__(self, lin: nn.Linear, r: int, alpha: float, dropout: float, gate_init: float):
        super().__init__()
        ref = lin.weight
        self.r, self.scaling = r, alpha / r
        self.lora_A = new_param(ref, r, lin.in_features, init="kaiming")
        self.lora_B = new_param(ref, lin.out_features, r)
        self.bias = new_param(ref, lin.out_features)
        self.gate_logits = nn.Parameter(torch.full((len(KINDS),), float(gate_init), device=ref.device))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.register_buffer("peft_keep", torch.ones(len(KINDS), device=ref.device))
        self.register_buffer("peft_gate", torch.zeros(len(KINDS), device=ref.device))
        self.register_buffer("peft_searching", torch.ones((), device=ref.device))
        self._flags = None  # (buffer versions, searching, keep) cached on the Python side

    def sizes(self) -> list[int]:
        """Parameter count of each candidate (LoRA: r (in + out); bias: out)."""
        return [self.lora_A.numel() + self.lora_B.numel(), self.bias.numel()]

    def gates(self) -> torch.Tensor:
        return torch.sigmoid(self.gate_logits) if self.searching() else self.peft_gate

    def _state(self):
        key = (self.peft_keep._version, self.peft_searching._version, self.peft_keep.data_ptr())
        if self._flags is None or self._flags[0] != key:  # load_peft / prune change the buffers in place
            self._flags = (key, bool(self.peft_searching), [bool(k) for k in self.peft_keep.tolist()])
        return self._flags

    def searching(self) -> bool:
        return self._state()[1]

    def hook(self, module, args, output):
        _, searching, keep = self._state()
        if not any(keep):
            return output
        g = torch.sigmoid(self.gate_logits) if searching else self.peft_gate
        delta = None
        if keep[0]:
            x = self.dropout(args[0].to(self.lora_A.dtype))
            delta = (x @ self.lora_A.t() @ self.lora_B.t()) * (self.scaling * g[0])
        if keep[1]:
            b = self.bias * g[1]
            delta = b if delta is None else delta + b
        return output + delta.to(output.dtype)

    @torch.no_grad()
    def fix(self, keep: list[bool]) -> None:
        """Keep the candidates flagged in `keep`, zero the others, and fix the gates at their values."""
        gate = torch.sigmoid(self.gate_logits.float())
        self.peft_keep.copy_(torch.tensor([float(k) for k in keep]))
        self.peft_gate.copy_(gate * self.peft_keep)
        self.peft_searching.zero_()
        if not keep[0]:
            self.lora_A.zero_()
            self.lora_B.zero_()
        if not keep[1]:
            self.bias.zero_()


def candidates(model: nn.Module) -> list[SspCandidates]:
    return [m for m in model.modules() if isinstance(m, SspCandidates)]


def search_space(model: nn.Module) -> int:
    """Parameters of all candidate deltas (gates excluded)."""
    return sum(sum(c.sizes()) for c in candidates(model))


def budget_params(budget: float, space: int) -> int:
    """The budget as a parameter count: a fraction of the search space when <= 1, else absolute."""
    assert budget > 0, f"ssp budget must be > 0, got {budget}"
    return int(round(budget * space)) if budget <= 1 else min(int(budget), space)


def kept_params(model: nn.Module) -> int:
    """Parameters of the kept candidate deltas (after pruning: the tunable budget actually used)."""
    return sum(s for c in candidates(model) for s, k in zip(c.sizes(), c.peft_keep.tolist()) if k)


@torch.no_grad()
def prune(model: nn.Module, budget: float) -> dict:
    """Keep the highest-gated candidates whose parameter total fits `budget`; zero and mask the rest."""
    mods = candidates(model)
    assert mods, "the model has no SSP candidates"
    assert all(c.searching() for c in mods), "the SSP structure is already fixed"
    space = search_space(model)
    limit = budget_params(budget, space)
    items = []  # (gate, index, module, kind, size)
    for c in mods:
        g = torch.sigmoid(c.gate_logits.float()).tolist()
        for k, size in enumerate(c.sizes()):
            items.append((g[k], len(items), c, k, size))
    items.sort(key=lambda t: (-t[0], t[1]))
    keep = {id(c): [False] * len(KINDS) for c in mods}
    total = 0
    for _, _, c, k, size in items:  # greedy: largest gate first, skip what no longer fits
        if total + size <= limit:
            keep[id(c)][k] = True
            total += size
    for c in mods:
        c.fix(keep[id(c)])
    return {"search_space": space, "budget": limit, "kept": total,
            "kept_modules": sum(sum(v) for v in keep.values()), "candidates": len(items)}


class SspPrune(TrainerCallback):
    """Prunes the search space to `budget` at the end of step ceil(search_frac x max_steps) (at train
    begin when that is 0). The gate search itself is the runner's bi-level loop (`Bilevel(until=
    search_frac)` in the MethodBuild) or joint training."""

    def __init__(self, model: nn.Module, budget: float, search_frac: float):
        self.model, self.budget, self.search_frac = model, budget, search_frac
        self.prune_step: int | None = None
        self.result: dict | None = None

    def _prune(self, step: int) -> None:
        self.result = dict(prune(self.model, self.budget), step=step)

    def state_dict(self) -> dict:  # a resumed run (runners/checkpoint.py) must not prune twice
        return {"result": self.result}

    def load_state_dict(self, state: dict) -> None:
        self.result = state["result"]

    def on_train_begin(self, args, state, control, **kw):
        self.prune_step = math.ceil(self.search_frac * state.max_steps)
        if self.prune_step <= 0 and self.result is None:
            self._prune(0)

    def on_step_end(self, args, state, control, **kw):
        if self.result is None and self.prune_step is not None and state.global_step >= self.prune_step:
            self._prune(state.global_step)


def architecture_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [c.gate_logits for c in candidates(model)]


@register_method("ssp", SspConfig, size_knob="r",
                 budget=Budget(pinned=21_348_800, paper=8.6e6, reachable=False))
def build(model, cfg: SspConfig):
    assert cfg.r >= 1, f"ssp rank must be >= 1, got {cfg.r}"
    assert 0 <= cfg.search_frac <= 1, f"search_frac must be in [0, 1], got {cfg.search_frac}"
    freeze(model)
    for _, lin in named_linears(model, list(cfg.target_modules)):
        child = SspCandidates(lin, cfg.r, cfg.alpha, cfg.dropout, cfg.gate_init)
        lin.add_module("peft_ssp", child)
        lin.register_forward_hook(child.hook)

    gates = architecture_parameters(model)
    gate_ids = {id(p) for p in gates}
    groups = [ParamGroup([p for p in model.parameters() if p.requires_grad and id(p) not in gate_ids])]
    if not cfg.search_bilevel:  # joint search: gates in the training optimizer, without weight decay
        groups.append(ParamGroup([p for p in gates if p.requires_grad], weight_decay=0.0))
    space = search_space(model)
    return MethodBuild(
        model, param_groups=groups,
        bilevel=Bilevel(gates, lr=cfg.arch_lr, until=cfg.search_frac) if cfg.search_bilevel else None,
        callbacks=[SspPrune(model, cfg.budget, cfg.search_frac)],
        facts={"search_space": space, "gates": sum(p.numel() for p in gates),
               "budget": budget_params(cfg.budget, space)})
