"""IAPT bi-level optimization (Appendix B): Θ moves only on dev steps, Ω only on train steps."""

from __future__ import annotations

import torch
from transformers import Trainer, TrainingArguments

from pefts.registry import build_method
from runners.backbones import load_backbone
from runners.bilevel import BilevelCallback, make_optimizer
from runners.data import TrainCollator, encode_train
from tasks.registry import build_task
from tests.conftest import compose


def setup(tmp_path):
    cfg = compose("method=lora", "task=synth-compare", "method.dropout=0.0")
    torch.manual_seed(0)
    model, tok = load_backbone(cfg.backbone)
    for p in model.parameters():
        p.requires_grad_(False)
    model = build_method(model, cfg.method)
    with torch.no_grad():  # LoRA's B starts at zero: give Θ and Ω nonzero gradients
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    theta = [p for n, p in named.items() if "layers.0." in n]  # stand-in architecture parameters
    omega = [p for n, p in named.items() if "layers.0." not in n]
    ex = build_task(cfg.task).splits(None)
    rows = encode_train(ex["train"][:8], tok, "plain", 64)
    dev = encode_train(ex["dev"][:8], tok, "plain", 64)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=2, report_to="none",
                             use_cpu=True, save_strategy="no", remove_unused_columns=False, disable_tqdm=True)
    return model, tok, theta, omega, rows, dev, args, cfg


def snapshot(ps):
    return [p.detach().clone() for p in ps]


def moved(before, ps):
    return any(not torch.equal(b, p) for b, p in zip(before, ps))


def test_theta_moves_only_on_dev_steps(tmp_path):
    model, tok, theta, omega, rows, dev, args, cfg = setup(tmp_path)
    collator = TrainCollator(tok.pad_token_id)
    cb = BilevelCallback(model, theta, dev, collator, lr=1e-2, batch_size=4, seed=0, device="cpu")
    calls = []
    real = cb.on_step_end
    t0, o0 = snapshot(theta), snapshot(omega)

    def spy(*a, **k):  # before each dev step: Θ must not have moved since the previous dev step
        calls.append(moved(spy.last, theta))
        real(*a, **k)
        spy.last = snapshot(theta)

    spy.last = t0
    cb.on_step_end = spy
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collator, callbacks=[cb],
                      optimizers=(make_optimizer(model, cfg.runner, exclude=theta), None))
    trainer.train()
    assert cb.dev_steps == 2 and calls == [False, False], "train steps must not move Θ"
    assert moved(t0, theta), "dev steps must move Θ"
    assert moved(o0, omega), "train steps must move Ω"


def test_optimizer_excludes_theta():
    cfg = compose()
    lin = torch.nn.Linear(2, 2)
    opt = make_optimizer(lin, cfg.runner, exclude=[lin.bias])
    assert [p for g in opt.param_groups for p in g["params"]] == [lin.weight]


def test_train_steps_neither_compute_nor_clip_theta_gradients(tmp_path):
    """iapt.txt Appendix B: Ω's steps use train batches only. Θ's gradients must not exist when the Trainer
    clips and steps (they would enter the gradient-norm clipping and shrink Ω's update), and Θ must be
    trainable again between steps, so the best-state copy and save_peft keep it."""
    from transformers import TrainerCallback

    model, tok, theta, omega, rows, dev, args, cfg = setup(tmp_path)
    collator = TrainCollator(tok.pad_token_id)
    cb = BilevelCallback(model, theta, dev, collator, lr=1e-2, batch_size=4, seed=0, device="cpu")
    seen = {"theta_grads": [], "omega_grads": [], "theta_trainable_after": []}

    class AtOptimizerStep(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, **kw):  # after clipping, before AdamW
            seen["theta_grads"].append(any(p.grad is not None for p in theta))
            seen["omega_grads"].append(all(p.grad is not None for p in omega))

        def on_step_end(self, args, state, control, **kw):  # runs after the bi-level callback
            seen["theta_trainable_after"].append(all(p.requires_grad for p in theta))

    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collator,
                      callbacks=[cb, AtOptimizerStep()],
                      optimizers=(make_optimizer(model, cfg.runner, exclude=theta), None))
    trainer.train()
    assert seen["theta_grads"] == [False, False], "Θ got gradients from train batches (and entered the clipping)"
    assert seen["omega_grads"] == [True, True]
    assert seen["theta_trainable_after"] == [True, True] and cb.dev_steps == 2
