"""LN-Tuning (pefts/ln_tuning.py): only the norms' gains train, the model starts as the backbone, and the
count is the architecture's norm width (the shared behaviour tests in tests/test_methods.py cover the rest)."""

from __future__ import annotations

import torch

from pefts.registry import build_method
from runners.backbones import load_backbone
from tests.conftest import compose


def test_only_norm_gains_train_and_start_is_the_backbone():
    cfg = compose("method=ln_tuning")
    torch.manual_seed(0)
    model, tok = load_backbone(cfg.backbone)
    ids = tok(["hi there"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        want = model(input_ids=ids).logits
    c = model.config
    peft_model = build_method(model, cfg.method)
    names = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert names and all("layernorm" in n or ".norm." in n for n in names), names
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert trainable == (2 * c.num_hidden_layers + 1) * c.hidden_size
    with torch.no_grad():
        torch.testing.assert_close(peft_model(input_ids=ids).logits, want)
