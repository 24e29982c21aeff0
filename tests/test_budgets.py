"""Tunable-parameter budgets, counted on the meta device (scripts/params.py), from each method's own
registration (`budget=Budget(...)` in `@register_method`): no central list to edit.

Pins the exact count of every registered method (so a change to a method shows up here and in
docs/budgets.md), checks it against the paper's count (within 5%, or `reachable=False` with a
documented reason in docs/deviations.md), and checks that `target=` finds a fitting size knob for every
method that declares one.

    .venv/bin/python -m pytest tests/test_budgets.py -q
"""

from __future__ import annotations

import functools
import os

import pytest

from pefts.registry import METHODS
from scripts.params import count, fit_target
from tests.conftest import ROOT, compose

NAMES = METHODS.names()


def budget(name: str):
    return METHODS.get(name).meta["budget"]


@functools.cache
def trainable(name: str, backbone: str = "llama2-7b") -> int:
    return count(compose(f"backbone={backbone}", f"method={name}", debug=False))["trainable"]


@pytest.mark.parametrize("name", NAMES)
def test_every_method_declares_its_budget(name):
    assert budget(name) is not None, (
        f"method '{name}' declares no budget: add budget=Budget(pinned=<count>, paper=<paper's count or None>) to its "
        f"@register_method (count: python -m scripts.params backbone=llama2-7b method={name})")


@pytest.mark.parametrize("name", NAMES)
def test_pinned_counts(name):
    b = budget(name)
    got = trainable(name, b.backbone)
    assert got == b.pinned, f"{name}: {got:,} tunable params on {b.backbone}, pinned {b.pinned:,}"


@pytest.mark.parametrize("name", NAMES)
def test_every_method_builds_on_meta_llama(name):
    assert trainable(name) > 0, f"{name}: no tunable parameters on the meta llama2-7b"


@pytest.mark.parametrize("name", [n for n in NAMES if budget(n) is not None and budget(n).paper is not None])
def test_paper_budgets(name):
    b = budget(name)
    ratio = trainable(name, b.backbone) / b.paper
    if not b.reachable:
        with open(os.path.join(ROOT, "docs", "deviations.md")) as f:
            assert f"`{name}`" in f.read(), f"{name}: ratio {ratio:.3f} to the paper and no entry in docs/deviations.md"
    else:
        assert abs(ratio - 1) <= 0.05, f"{name}: {trainable(name, b.backbone):,} vs paper {b.paper:,.0f} ({ratio:.3f})"


@pytest.mark.parametrize("name", [n for n in NAMES if METHODS.get(n).meta.get("size_knob")])
def test_target_search(name):
    """target= finds the knob value whose count is within 5% of twice the preset's count (or of the paper's)."""
    b = budget(name)
    target = b.paper if b.paper is not None and b.backbone == "llama2-7b" else 2 * trainable(name)
    out = fit_target(compose("backbone=llama2-7b", f"method={name}", debug=False), target)
    assert abs(out["ratio"] - 1) <= 0.05, f"{name}: {out['knob']}={out['value']} gives {out['trainable']:,} for {target:,.0f}"


@pytest.mark.parametrize("name", [n for n in NAMES if not METHODS.get(n).meta.get("size_knob")])
def test_no_knob_methods_refuse_target(name):
    with pytest.raises(SystemExit, match="declares no size knob"):
        fit_target(compose("backbone=llama2-7b", f"method={name}", debug=False), 1e6)
