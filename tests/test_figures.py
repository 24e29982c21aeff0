"""Figures render from result files: the learned rational activations of saved IAPT weights, score vs
parameters and score vs prompt length from hand-made records (scripts/figures.py)."""

from __future__ import annotations

import json

import pytest
import torch

from core.errors import UserError
from scripts import figures


def test_rational_figure_from_saved_iapt_weights(tmp_path):
    from pefts.io import save_peft
    from pefts.registry import build_method
    from runners.backbones import load_backbone
    from tests.conftest import compose

    cfg = compose("method=iapt")
    torch.manual_seed(0)
    model, _ = load_backbone(cfg.backbone)
    fam = build_method(model, cfg.method)
    with torch.no_grad():  # a "learned" activation: move group 0's a_2
        next(p for n, p in fam.named_parameters() if n.endswith("numerator")).data[2] += 0.1
    save_peft(fam, str(tmp_path / "w.peft.safetensors"))
    acts = figures.rationals(str(tmp_path / "w.peft.safetensors"))
    n_layers = model.config.num_hidden_layers
    assert len(acts) == -(-n_layers // cfg.method.share_every), "one activation per layer group"
    out = figures.plot_rationals(str(tmp_path / "w.peft.safetensors"), str(tmp_path / "r.png"))
    assert open(out, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(UserError, match="holds no rational activation"):
        lora = tmp_path / "lora.peft.safetensors"
        from safetensors.torch import save_file

        save_file({"x.lora_A.weight": torch.zeros(2, 2)}, str(lora))
        figures.rationals(str(lora))


def test_score_figures_from_records(tmp_path):
    runs = tmp_path / "runs"
    for cell, n_tokens, acc, params in (("iapt", 4, 80.0, 1000), ("iapt-len8", 8, 82.0, 1000), ("lora", None, 85.0, 5000)):
        folder = runs / "smollm2-135m" / "sst2" / cell
        folder.mkdir(parents=True)
        method = {"name": "iapt", "n_tokens": n_tokens} if n_tokens else {"name": "lora"}
        rec = {"schema": 1, "backbone": "smollm2-135m", "task": "sst2", "method": method["name"], "variant": None,
               "cell": cell, "seed": 0, "status": "ok", "metrics": {"acc": acc}, "dev": {},
               "params": {"trainable": params}, "config": {"method": method}, "provenance": {}, "wall_time_s": 1.0,
               "curve": {}}
        (folder / "seed0.json").write_text(json.dumps(rec))
    for out in (figures.plot_params(str(runs), "sst2", str(tmp_path / "p.png")),
                figures.plot_length(str(runs), "sst2", "iapt", str(tmp_path / "l.png"))):
        assert open(out, "rb").read(4) == b"\x89PNG"
    with pytest.raises(UserError, match="no finished records of task 'rte'"):
        figures.plot_params(str(runs), "rte", str(tmp_path / "x.png"))
