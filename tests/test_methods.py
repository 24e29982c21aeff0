"""Behaviour every registered PEFT method must have, on the tiny backbone (GQA Llama, byte tokenizer).

Parametrized over `METHODS.names()`, so methods added later are covered automatically:
only the method's parameters train; forward/backward with left and right padding give each row what
it gets alone; cached generation equals uncached (greedy and beam search) and rows equal rows alone;
save_peft -> load_peft onto a fresh backbone + method reproduces the outputs; the loss of the labelled
columns only (runners/trainer.py `labelled_positions`) gives the same gradients. Trainable parameters are
perturbed first, so zero-initialized (identity) methods cannot pass by doing nothing.

    .venv/bin/python -m pytest tests/test_methods.py -q
"""

from __future__ import annotations

import functools
import os

import pytest
import torch

from pefts.blocks.prompts import PromptInserter
from pefts.io import load_peft, save_peft
from pefts.registry import METHODS, build_method
from runners.backbones import load_backbone
from runners.trainer import labelled_positions
from tests.conftest import ROOT, compose

NAMES = METHODS.names()
TEXTS = ["hi there", "a", "the quick fox"]  # different lengths, so every batch has padding
NEW = 4  # generated tokens per test


@functools.cache
def _cfg(name: str):
    return compose(f"method={name}")


def build(name: str, seed: int = 0, perturb: bool = True):
    """(backbone ids, model, tokenizer): backbone from seed 0, method initialized from `seed`."""
    cfg = _cfg(name)
    torch.manual_seed(0)
    model, tok = load_backbone(cfg.backbone)
    for p in model.parameters():
        p.requires_grad_(False)
    backbone_ids = {id(p) for p in model.parameters()}
    torch.manual_seed(seed)
    model = build_method(model, cfg.method)
    if perturb:
        gen = torch.Generator().manual_seed(1234 + seed)
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn(p.shape, generator=gen).to(p.dtype) * 0.1)
    return backbone_ids, model, tok


def batch(tok, side: str, with_labels: bool = True):
    """Tokenized TEXTS padded on `side`; labels mask the first half of each row as instruction."""
    tok.padding_side = side
    enc = tok(TEXTS, return_tensors="pt", padding=True)
    tok.padding_side = "left"
    ids, mask = enc["input_ids"], enc["attention_mask"]
    if not with_labels:
        return ids, mask, None
    labels = ids.masked_fill(mask == 0, -100)
    for i, row in enumerate(mask):
        real = row.nonzero().flatten()
        labels[i, real[: (len(real) + 1) // 2]] = -100
    return ids, mask, labels


def rows_alone(ids, mask, labels):
    """Each row without its padding: (ids, mask, labels, real-column index)."""
    for i in range(ids.shape[0]):
        real = mask[i].nonzero().flatten()
        lab = None if labels is None else labels[i : i + 1, real]
        yield ids[i : i + 1, real], mask[i : i + 1, real], lab, real


def test_registry_matches_yaml():
    stems = {f[:-5] for f in os.listdir(os.path.join(ROOT, "conf", "method")) if f.endswith(".yaml")}
    assert set(NAMES) == stems, f"registered only: {set(NAMES) - stems}; yaml only: {stems - set(NAMES)}"


@pytest.mark.parametrize("name", NAMES)
def test_only_method_parameters_train(name):
    backbone_ids, model, tok = build(name)
    model.train()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable, f"{name}: no trainable parameters"
    for side in ("right", "left"):
        model.zero_grad(set_to_none=True)
        ids, mask, labels = batch(tok, side)
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        assert out.logits.shape[:2] == ids.shape, f"{name}: logits {tuple(out.logits.shape)} for ids {tuple(ids.shape)}"
        assert torch.isfinite(out.loss), f"{name}: loss {out.loss}"
        out.loss.backward()
        total = 0.0
        for n, p in model.named_parameters():
            if p.requires_grad:
                assert p.grad is not None, f"{name}: trainable {n} got no gradient ({side} padding)"
                total += float(p.grad.abs().sum())
            else:
                assert p.grad is None, f"{name}: frozen {n} got a gradient"
            if name != "full" and id(p) in backbone_ids:
                assert not p.requires_grad, f"{name}: backbone parameter {n} is trainable"
        assert total > 0, f"{name}: all gradients are zero"
    if name == "full":
        assert all(p.requires_grad for p in model.parameters()), "full: some parameter is frozen"


@pytest.mark.parametrize("name", NAMES)
def test_padding_and_generation(name):
    _, model, tok = build(name)
    model.eval()
    torch.manual_seed(0)
    reference, _ = load_backbone(_cfg(name).backbone)
    reference.eval()
    with torch.no_grad():
        for side in ("left", "right"):
            ids, mask, labels = batch(tok, side)
            logits = model(input_ids=ids, attention_mask=mask, labels=labels).logits
            base = reference(input_ids=ids, attention_mask=mask).logits
            real = mask.bool()
            assert not torch.allclose(logits[real], base[real], atol=1e-4), f"{name}: method changes nothing"
            for i, (a_ids, a_mask, a_lab, cols) in enumerate(rows_alone(ids, mask, labels)):
                alone = model(input_ids=a_ids, attention_mask=a_mask, labels=a_lab).logits[0]
                torch.testing.assert_close(logits[i, cols], alone, atol=1e-4, rtol=1e-4,
                                           msg=lambda m, i=i, side=side: f"{name}: row {i} ({side} pad) != alone: {m}")
        ids, mask, _ = batch(tok, "left", with_labels=False)
        kw = dict(max_new_tokens=NEW, do_sample=False, pad_token_id=tok.pad_token_id)
        greedy = None
        for beams in (1, 3):
            cached = model.generate(input_ids=ids, attention_mask=mask, num_beams=beams, use_cache=True, **kw)
            uncached = model.generate(input_ids=ids, attention_mask=mask, num_beams=beams, use_cache=False, **kw)
            assert cached.shape[1] == ids.shape[1] + NEW, f"{name}: generate returned {tuple(cached.shape)}"
            assert torch.equal(cached[:, : ids.shape[1]], ids), f"{name}: output does not start with the input"
            assert torch.equal(cached, uncached), f"{name} beams={beams}: cached {cached[:, -NEW:].tolist()} != " \
                                                  f"uncached {uncached[:, -NEW:].tolist()}"
            greedy = cached if greedy is None else greedy
        for i, (a_ids, a_mask, _, _) in enumerate(rows_alone(ids, mask, None)):
            alone = model.generate(input_ids=a_ids, attention_mask=a_mask, num_beams=1, **kw)
            assert torch.equal(greedy[i, -NEW:], alone[0, -NEW:]), \
                f"{name}: generated row {i} {greedy[i, -NEW:].tolist()} != alone {alone[0, -NEW:].tolist()}"


@pytest.mark.parametrize("name", NAMES)
def test_save_load_roundtrip(name, tmp_path):
    _, model, tok = build(name, seed=0)
    model.eval()
    ids, mask, _ = batch(tok, "left", with_labels=False)
    path = str(tmp_path / "peft.safetensors")
    save_peft(model, path)
    _, fresh, _ = build(name, seed=1, perturb=False)
    fresh.eval()
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).logits
        before = fresh(input_ids=ids, attention_mask=mask).logits
        assert not torch.allclose(want, before, atol=1e-5), f"{name}: fresh model already equals the trained one"
        load_peft(fresh, path)
        got = fresh(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6, msg=lambda m: f"{name}: reloaded outputs differ: {m}")


@pytest.mark.parametrize("name", NAMES)
def test_soft_prompt_refusals(name):
    """Soft-prompt methods refuse what they cannot do, with a clear error (never wrong tokens)."""
    _, model, tok = build(name, perturb=False)
    if not isinstance(getattr(model, "peft_prompt", None), PromptInserter):
        pytest.skip(f"{name} has no placeholder soft prompt")
    ids, mask, _ = batch(tok, "left", with_labels=False)
    with pytest.raises(ValueError, match="repetition_penalty"):
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=2, repetition_penalty=1.3,
                       pad_token_id=tok.pad_token_id)
    with pytest.raises(ValueError, match="inputs_embeds"):
        model(inputs_embeds=model.get_input_embeddings()(ids), attention_mask=mask)


@pytest.mark.parametrize("name", NAMES)
def test_labelled_positions_give_the_same_loss_and_gradients(name):
    """runner.loss_positions=labelled: the model projects only the labelled columns onto the vocabulary. Same
    gradients bit for bit and the same logits at those columns; the loss is the same sum taken in another
    order (fewer ignored zeros), so it may differ in its last bits."""
    _, model, tok = build(name)
    model.train()
    for side in ("right", "left"):
        ids, mask, labels = batch(tok, side)
        n = (labels[:, 1:] != -100).sum()
        got = []
        for extra in ({}, labelled_positions(labels)):
            model.zero_grad(set_to_none=True)
            torch.manual_seed(1)  # the same dropout masks
            out = model(input_ids=ids, attention_mask=mask, labels=labels, num_items_in_batch=n, **extra)
            out.loss.backward()
            got.append((out.loss.detach(), out.logits.detach(),
                        [p.grad.clone() for p in model.parameters() if p.requires_grad and p.grad is not None]))
        (loss, logits, grads), (loss2, logits2, grads2) = got
        keep = labelled_positions(labels)["logits_to_keep"]
        assert logits2.shape == (ids.shape[0], len(keep), logits.shape[-1]), f"{name}: {tuple(logits2.shape)}"
        assert len(keep) < ids.shape[1] - 1, "the test batch must leave some columns out"
        assert torch.equal(logits2, logits[:, keep]), f"{name} ({side} pad): kept logits differ"
        torch.testing.assert_close(loss2, loss, rtol=3e-7, atol=0, msg=lambda m, side=side: f"{name} ({side} pad): {m}")
        assert len(grads2) == len(grads) and all(torch.equal(a, b) for a, b in zip(grads, grads2)), (
            f"{name} ({side} pad): gradients differ")
