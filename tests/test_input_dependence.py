"""The input-dependence measure (runners/input_dependence.py) on hand-made outputs and on the tiny backbone: a
static output scores cosine 1 and spread 0, an input-aware generator less; a trained input-aware run's record
keeps it per layer, another method's record has none.

    .venv/bin/python -m pytest tests/test_input_dependence.py -q
"""

from __future__ import annotations

import pytest
import torch

from runners.input_dependence import measure, of_run
from tests.conftest import compose

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_measure_of_static_orthogonal_and_scaled_outputs():
    static = torch.ones(5, 2, 3)
    assert measure({0: static}) == {"rows": 5, "layers": {0: {"cosine": 1.0, "spread": 0.0}}, "cosine": 1.0,
                                    "spread": 0.0}
    orthogonal = torch.eye(4).reshape(4, 2, 2)
    m = measure({3: orthogonal, 1: static[:4]})
    assert m["layers"][3]["cosine"] == 0.0 and list(m["layers"]) == [1, 3]
    mean = torch.full((4,), 0.25)  # rows e_i: each is sqrt(0.75) from the mean, whose norm is 0.5
    assert m["layers"][3]["spread"] == pytest.approx(float((torch.eye(4)[0] - mean).norm() / mean.norm()), abs=1e-6)
    assert m["cosine"] == pytest.approx(0.5) and m["spread"] == pytest.approx(m["layers"][3]["spread"] / 2, abs=1e-6)
    scaled = torch.stack([torch.ones(3) * k for k in (1.0, 2.0, 3.0)])
    assert measure({0: scaled})["layers"][0]["cosine"] == pytest.approx(1.0), "cosine ignores the scale"
    assert measure({0: scaled})["layers"][0]["spread"] > 0.3, "the spread sees it"


def test_an_input_aware_method_on_the_tiny_backbone_varies_with_its_input():
    from pefts.registry import build_method
    from runners.backbones import load_backbone
    from tasks.registry import build_task

    cfg = compose("method=iapt", "task=synth-compare")
    torch.manual_seed(0)
    model, tok = load_backbone(cfg.backbone)
    model = build_method(model, cfg.method)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    test = build_task(cfg.task).splits(None)["test"][:6]
    m = of_run(model.eval(), tok, test, cfg.task.template, 64, 4, "cpu")
    assert m["rows"] == 6 and sorted(m["layers"]) == model.layers
    assert all(-1 <= v["cosine"] < 0.999999 and v["spread"] > 0 for v in m["layers"].values()), m
    assert of_run(model.backbone, tok, test, cfg.task.template, 64, 4, "cpu") is None, "no generator: no measure"


def test_the_record_of_an_input_aware_run_keeps_it_and_lora_has_none(tmp_results):
    from runners.train import run

    fast = ("task=synth-compare", "runner.max_train_examples=16", "runner.max_steps=2", "runner.eval_steps=2", "seed=0")
    rec = run(compose("method=parade", *fast))
    dep = rec["input_dependence"]
    assert dep["rows"] == min(64, rec["split_sizes"]["test"]) and dep["layers"], dep
    assert "input_dependence" not in run(compose("method=lora", *fast))


def test_table_notes_show_how_far_a_near_static_output_is_from_static():
    """runners/tables.py dependence_notes: the median over seeds per (cell, task); a cosine or spread within 1e-3
    of static prints its distance from it (a 3-decimal rounding would print a static 1.0000 / 0.000)."""
    from runners.tables import dependence_notes, small_gap

    assert (small_gap(0.99487, 1.0), small_gap(0.068, 0.0)) == ("0.9949", "0.068")
    assert (small_gap(0.999998, 1.0), small_gap(4.2e-05, 0.0)) == ("1-2.0e-06", "4.2e-05")
    assert (small_gap(1.0, 1.0), small_gap(0.0, 0.0)) == ("1", "0")
    recs = [{"backbone": "b", "task": "sst2", "cell": "parade", "input_dependence": {"cosine": 1.0, "spread": s}}
            for s in (1e-05, 3e-05, 0.0)] + [{"backbone": "b", "task": "sst2", "cell": "lora"}]
    (note,) = dependence_notes(recs, "b", ["sst2"], ["parade", "lora"])
    assert note.endswith("parade sst2 cosine 1 spread 1.0e-05 (n=3)."), note
