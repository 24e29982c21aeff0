"""Tunable-parameter budgets on LLaMA-2 7B, counted on the meta device (scripts/params.py).

Pins the exact count of every baseline preset (so a change to a method shows up here and in
docs/budgets.md), checks the presets against iapt.txt Table 1 (within 5%, or a documented reason in
docs/deviations.md), and checks that `target=` finds a fitting size knob for every registered
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

# Measured with `python -m scripts.params backbone=llama2-7b method=<m>` (arithmetic in each method's docstring).
PINNED = {
    "adalora": 19_990_272,  # allocated at init_r=8; 9,995,136 after pruning to rank 4 on average
    "adapterdrop": 9_094_200,
    "bitfit": 1_359_872,
    "bitfit_proj": 10_880_768,
    "dept": 376_320,
    "full": 6_738_415_616,
    "houlsby": 9_700_480,
    "ia3": 614_400,
    "ia3_proj": 9_831_936,
    "learned_adapter": 9_569_568,
    "lora": 9_994_240,
    "lora_default": 4_194_304,
    "p_tuning": 153_856,
    "p_tuning_v2": 16_777_216,
    "parallel_adapter": 9_569_408,
    "prefix_tuning": 136_839_680,
    "prompt_tuning": 40_960,
    "smop": 98_304,
    "spt": 1_310_751,
    "ssp": 21_348_800,  # search space at r=8 (LoRA + bias candidates + 448 gates); <= 8,600,000 kept after pruning
}

# iapt.txt Table 1, "Tunable Params" (LLaMA-2 7B).
PAPER = {
    "houlsby": 9.4e6, "parallel_adapter": 9.4e6, "adapterdrop": 9.2e6, "learned_adapter": 9.5e6, "lora": 10.0e6,
    "adalora": 10.0e6, "bitfit_proj": 10.9e6, "ia3_proj": 9.8e6, "p_tuning": 9.4e6, "p_tuning_v2": 9.4e6,
    "ssp": 8.6e6,
}
# Presets that cannot reach Table 1 under Appendix F's stated settings; docs/deviations.md shows why.
UNREACHABLE = {"adalora", "p_tuning", "p_tuning_v2", "ssp"}  # adalora, ssp: build-time count is the search space


@functools.cache
def trainable(name: str) -> int:
    return count(compose("backbone=llama2-7b", f"method={name}", debug=False))["trainable"]


@pytest.mark.parametrize("name", sorted(PINNED))
def test_pinned_counts(name):
    assert name in METHODS, f"pinned method '{name}' is not registered"
    assert trainable(name) == PINNED[name], f"{name}: {trainable(name):,} tunable params, pinned {PINNED[name]:,}"


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_builds_on_meta_llama(name):
    assert trainable(name) > 0, f"{name}: no tunable parameters on the meta llama2-7b"


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_budgets(name):
    ratio = trainable(name) / PAPER[name]
    if name in UNREACHABLE:
        with open(os.path.join(ROOT, "docs", "deviations.md")) as f:
            assert f"`{name}`" in f.read(), f"{name}: ratio {ratio:.3f} to Table 1 and no entry in docs/deviations.md"
    else:
        assert abs(ratio - 1) <= 0.05, f"{name}: {trainable(name):,} vs Table 1 {PAPER[name]:,.0f} (ratio {ratio:.3f})"


@pytest.mark.parametrize("name", [n for n in METHODS.names() if METHODS.get(n).meta.get("size_knob")])
def test_target_search(name):
    """target= finds the knob value whose count is within 5% of twice the preset's count (or of Table 1's)."""
    target = PAPER.get(name, 2 * trainable(name))
    out = fit_target(compose("backbone=llama2-7b", f"method={name}", debug=False), target)
    assert abs(out["ratio"] - 1) <= 0.05, f"{name}: {out['knob']}={out['value']} gives {out['trainable']:,} for {target:,.0f}"


@pytest.mark.parametrize("name", [n for n in sorted(PINNED) if not METHODS.get(n).meta.get("size_knob")])
def test_no_knob_methods_refuse_target(name):
    with pytest.raises(SystemExit, match="declares no size knob"):
        fit_target(compose("backbone=llama2-7b", f"method={name}", debug=False), 1e6)
