"""SSP (pefts/ssp.py): pruning fits the budget, pruned candidates are inert, the callback prunes at
ceil(search_frac x max_steps) in a short Trainer run, and save/load after pruning reproduces outputs."""

from __future__ import annotations

import pytest
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from pefts import ssp
from pefts.io import load_peft, save_peft
from pefts.registry import build_peft
from runners.backbones import load_backbone
from runners.bilevel import BilevelCallback, training_setup
from runners.data import TrainCollator, encode_train
from tasks.registry import build_task
from tests.conftest import compose

BUDGET = 0.3  # a fraction of the tiny backbone's search space


def build(*overrides: str, seed: int = 0, perturb: bool = True):
    cfg = compose("method=ssp", f"method.budget={BUDGET}", "method.dropout=0.0", "task=synth-compare", *overrides)
    torch.manual_seed(0)
    model, tok = load_backbone(cfg.backbone)
    torch.manual_seed(seed)
    built = build_peft(model, cfg.method)
    model = built.model
    if perturb:  # nonzero deltas and distinct gates, so the gate order and the outputs mean something
        gen = torch.Generator().manual_seed(100 + seed)
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn(p.shape, generator=gen) * 0.5)
    build.last = built  # the MethodBuild of the latest build (callbacks, groups, bi-level spec)
    return cfg, model, tok


def inputs(tok):
    tok.padding_side = "left"
    enc = tok(["hi there", "a", "the quick fox"], return_tensors="pt", padding=True)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    return enc["input_ids"], enc["attention_mask"], labels


def test_prune_keeps_budget_and_highest_gates():
    _, model, _ = build()
    mods = ssp.candidates(model)
    items = sorted(((float(torch.sigmoid(c.gate_logits[k].detach())), i, k, c.sizes()[k])
                    for i, c in enumerate(mods) for k in range(len(ssp.KINDS))), key=lambda t: (-t[0], t[1], t[2]))
    out = ssp.prune(model, BUDGET)
    space = ssp.search_space(model)
    assert out["budget"] == round(BUDGET * space) and out["search_space"] == space
    assert 0 < out["kept"] <= out["budget"], out
    assert ssp.kept_params(model) == out["kept"]
    smallest = min(s for *_, s in items)
    assert out["budget"] - out["kept"] < smallest, "greedy pruning left room for another candidate"
    first_skip = next(j for j, (_, i, k, _) in enumerate(items) if not mods[i].peft_keep[k])
    assert all(mods[i].peft_keep[k] for _, i, k, _ in items[:first_skip]), "a higher gate was pruned"
    assert first_skip > 0, "the highest-gated candidate was pruned"
    with pytest.raises(AssertionError, match="already fixed"):
        ssp.prune(model, BUDGET)


def test_absolute_budget():
    _, model, _ = build(perturb=False)
    out = ssp.prune(model, 5000)
    assert out["budget"] == 5000 and 0 < out["kept"] <= 5000


def test_pruned_candidates_are_inert():
    _, model, tok = build()
    ssp.prune(model, BUDGET)
    mods = ssp.candidates(model)
    pruned = [(c, k) for c in mods for k in range(len(ssp.KINDS)) if not c.peft_keep[k]]
    assert pruned and len(pruned) < 2 * len(mods)
    for c, k in pruned:  # zeroed
        tensors = [c.lora_A, c.lora_B] if k == 0 else [c.bias]
        assert all(not t.any() for t in tensors)
    ids, mask, labels = inputs(tok)
    model.eval()
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).logits
        for c, k in pruned:  # masked out: even nonzero values of pruned tensors change nothing
            for t in ([c.lora_A, c.lora_B] if k == 0 else [c.bias]):
                t.normal_()
        after = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(after, before, atol=0, rtol=0)
    model.train()
    model.zero_grad(set_to_none=True)
    model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    for c in mods:
        assert c.gate_logits.grad is None, "fixed gates must get no gradient"
        for k, tensors in enumerate(([c.lora_A, c.lora_B], [c.bias])):
            for t in tensors:
                if c.peft_keep[k]:
                    assert t.grad is not None and t.grad.abs().sum() > 0
                else:
                    assert t.grad is None, "a pruned candidate got a gradient"


class Spy(TrainerCallback):
    """Records, at each step end (after SspSearch), whether the structure is still being searched."""

    def __init__(self, model):
        self.model, self.searching = model, []

    def on_step_end(self, args, state, control, **kw):
        self.searching.append((state.global_step, ssp.candidates(self.model)[0].searching()))


@pytest.mark.parametrize("bilevel", [True, False])
def test_callback_prunes_at_search_end(tmp_path, bilevel):
    cfg, model, tok = build("method.search_frac=0.5", f"method.search_bilevel={str(bilevel).lower()}",
                            "method.arch_lr=0.05", perturb=False)
    ex = build_task(cfg.task).splits(None)
    rows = encode_train(ex["train"][:12], tok, "plain", 64)
    dev = encode_train(ex["dev"][:8], tok, "plain", 64)
    collator = TrainCollator(tok.pad_token_id)
    opt, cbs = training_setup(build.last, cfg.runner, dev, collator, batch_size=4, seed=0, device="cpu")
    spy = Spy(model)
    gates0 = torch.stack([c.gate_logits.detach().clone() for c in ssp.candidates(model)])
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    gate_ids = {id(p) for p in ssp.architecture_parameters(model)}
    assert bool(gate_ids & in_opt) == (not bilevel), "gates are in the Trainer's optimizer only when joint"
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=3, report_to="none",
                             use_cpu=True, save_strategy="no", remove_unused_columns=False, disable_tqdm=True,
                             learning_rate=1e-2)
    snap = {}

    class AtPrune(TrainerCallback):  # state of the kept tensors right after pruning (end of step 2)
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 2:
                snap.update({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})
                snap["gate"] = torch.stack([c.peft_gate.clone() for c in ssp.candidates(model)])

    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collator,
                      callbacks=[*cbs, spy, AtPrune()], optimizers=(opt, None))
    trainer.train()
    assert spy.searching == [(1, True), (2, False), (3, False)], spy.searching  # ceil(0.5 x 3) = 2
    search = next(c for c in cbs if isinstance(c, ssp.SspPrune))
    assert search.result["step"] == 2 and 0 < search.result["kept"] <= search.result["budget"]
    if bilevel:
        dev_steps = next(c for c in cbs if isinstance(c, BilevelCallback))
        assert dev_steps.dev_steps == 2, "one dev step per search step"
    mods = ssp.candidates(model)
    gates1 = torch.stack([c.gate_logits.detach() for c in mods])
    assert not torch.equal(gates0, gates1), "the gates did not move during the search"
    assert torch.equal(torch.stack([c.peft_gate for c in mods]), snap["gate"]), "gates moved after pruning"
    params = dict(model.named_parameters())
    moved_kept = False
    for c in mods:
        for k, tensors in enumerate(([c.lora_A, c.lora_B], [c.bias])):
            for t in tensors:
                if not c.peft_keep[k]:
                    assert not t.any(), "a pruned candidate was trained after pruning"
    for n, v in snap.items():
        if n != "gate" and not torch.equal(params[n], v):
            moved_kept = True
    assert moved_kept, "the kept candidates stopped training after pruning"


def test_save_load_after_pruning(tmp_path):
    _, model, tok = build()
    ssp.prune(model, BUDGET)
    model.eval()
    ids, mask, _ = inputs(tok)
    path = str(tmp_path / "ssp.safetensors")
    save_peft(model, path)
    _, fresh, _ = build(seed=1, perturb=False)
    fresh.eval()
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).logits
        assert not torch.allclose(fresh(input_ids=ids, attention_mask=mask).logits, want, atol=1e-5)
        load_peft(fresh, path)
        got = fresh(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    for a, b in zip(ssp.candidates(model), ssp.candidates(fresh)):
        assert not b.searching() and torch.equal(a.peft_keep, b.peft_keep)
    assert ssp.kept_params(fresh) == ssp.kept_params(model)
