"""Measurements behind issue #9 (why IAPT does or does not learn): one model, a few SST-2-like rows.

    python -m scripts.diagnose_iapt experiment=iapt_sst2_cpu method.init=zero_up
    python -m scripts.diagnose_iapt experiment=iapt_sst2_cpu method.init=small_normal \
        peft=results/.../seed0.peft.safetensors rows=40

Prints one JSON object:
- `input_gap`: mean over positive test rows minus mean over negative rows of logit(first token of the
  positive answer) - logit(first token of the negative answer) at the answer position, for the bare
  backbone and with the method (how much the prediction depends on the input);
- `grad`: gradient norms of one training micro-batch by parameter group (up, down, pooler, theta = the
  rational's coefficients), the total, and the clip factor min(1, 1.0 / total) (Trainer's default max_grad_norm);
- `rel_step_up`: lr / rms(W_up), the size of Adam's first step on W_up relative to W_up (RMSNorm makes
  a soft token's effect scale-free, so this is the step on what the soft tokens *are*);
- per layer: `soft_attention` (attention mass real tokens put on the soft tokens, mean over heads and
  real query positions), `pool_first` (the pooler's weight on the first instruction token),
  `soft_cos` (mean pairwise cosine of the generated soft tokens across rows: 1 = the same prompt for every
  input), `act_outside` (fraction of the rational's inputs outside its fitted range).
Reads nothing but the config, the data and an optional PEFT file; writes nothing.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict

import torch


def _balanced(examples, n: int):
    by = defaultdict(list)
    for ex in examples:
        by[ex.response].append(ex)
    labels = sorted(by)
    assert len(labels) == 2, f"needs a two-label task, got responses {labels[:5]}"
    return [ex for pair in zip(*(by[label][: n // 2] for label in labels)) for ex in pair], labels


def _answer_logits(model, tok, examples, template, label_ids):
    from runners.data import prompt_batches

    out = torch.empty(len(examples), 2)
    for ids, mask, idx in prompt_batches(examples, tok, template, 1024, batch_size=8):
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits[:, -1]
        out[idx] = logits[:, label_ids].float()
    return out


def main(argv: list[str]) -> None:
    from core.config import compose
    from pefts.blocks.layout import instruction_mask
    from pefts.io import load_peft
    from pefts.registry import build_peft
    from runners.backbones import load_backbone
    from runners.data import TrainCollator, encode_train
    from runners.train import task_data_dir
    from tasks.base import format_example
    from tasks.registry import build_task

    opts = {"rows": "24", "peft": None}
    overrides = []
    for a in argv:
        k, _, v = a.partition("=")
        (opts.__setitem__(k, v) if k in opts else overrides.append(a))
    cfg = compose(overrides)
    torch.manual_seed(cfg.seed)
    model, tok = load_backbone(cfg.backbone, cache_dir=cfg.runner.cache_dir)
    model.set_attn_implementation("eager")  # attention weights come back from each attention module
    for p in model.parameters():
        p.requires_grad_(False)
    splits = build_task(cfg.task).splits(task_data_dir(cfg))
    test, labels = _balanced(splits["test"], int(opts["rows"]))
    label_ids = [format_example(tok, test[0].query, lab, cfg.task.template)[1][0] for lab in labels]
    assert label_ids[0] != label_ids[1], f"answers {labels} start with the same token"
    sign = torch.tensor([1.0 if ex.response == labels[1] else -1.0 for ex in test])

    def gap(logits):  # logit(label 1) - logit(label 0): mean on label-1 rows minus mean on label-0 rows
        d = logits[:, 1] - logits[:, 0]
        return float(d[sign > 0].mean() - d[sign < 0].mean())

    report = {"config": {"init": cfg.method.get("init"), "position": cfg.method.get("position"),
                         "peft": opts["peft"], "rows": len(test), "labels": labels}}
    bare = gap(_answer_logits(model, tok, test, cfg.task.template, label_ids))

    torch.manual_seed(cfg.seed)
    built = build_peft(model, cfg.method)
    fam = built.model
    if opts["peft"]:
        load_peft(fam, opts["peft"])
    fam.eval()
    report["input_gap"] = {"backbone": round(bare, 3),
                           "method": round(gap(_answer_logits(fam, tok, test, cfg.task.template, label_ids)), 3)}

    # -- one forward pass with hooks: attention on soft tokens, pooler weights, generated tokens, activations
    layers = defaultdict(dict)
    rows = encode_train(test[:8], tok, cfg.task.template, cfg.runner.max_seq_len)
    batch = TrainCollator(tok.pad_token_id)(rows)
    # the backbone layout of this batch, as FamilyModel.forward computes it (prepare is deterministic)
    captured = {"x": fam.injector.prepare(batch["input_ids"], batch["attention_mask"],
                                          instruction_mask(batch["attention_mask"], batch["labels"]))}
    hooks = []
    attn_mods = [m for n, m in fam.backbone.named_modules() if n.endswith("self_attn")]
    for i, m in enumerate(attn_mods):
        def on_attn(mod, args, out, i=i):
            w = out[1]  # [B, heads, T', T']
            x = captured["x"]
            if w is None or x.soft_start is None:
                return
            B, _, T, _ = w.shape
            cols = x.soft_start[:, None] + torch.arange(fam.n_tokens)[None]
            soft = torch.zeros(B, T, dtype=torch.bool).scatter_(1, cols, True)
            real_q = x.attention_mask.bool() & ~soft
            mass = w.mean(1).masked_fill(~soft[:, None, :], 0).sum(-1)  # [B, T'] per query
            layers[i]["soft_attention"] = round(float(mass[real_q].mean()), 4)
        hooks.append(m.register_forward_hook(on_attn))
    bank = fam.generators["default"]
    acts_hooked: set[int] = set()
    for layer in fam.layers:
        g = bank.generator(layer)

        def on_pool(mod, args, out, layer=layer):
            h, mask = args
            u = h @ mod.weight.to(h.dtype)
            u = u.masked_fill(~mask.bool()[..., None], float("-inf"))
            a = u.softmax(1)  # [B, T, l_sp]
            first = mask.float().argmax(1)
            layers[layer]["pool_first"] = round(float(a[torch.arange(len(first)), first].mean()), 4)
        if hasattr(g.pooler, "weight"):
            hooks.append(g.pooler.register_forward_hook(on_pool))

        def on_act(mod, args, out):  # shared by L_s layers: the running generator says which layer calls
            layer = captured["layer"]
            bound = getattr(mod, "bound", None)
            if bound is not None:
                layers[layer]["act_outside"] = round(float((args[0].abs() > bound).float().mean()), 4)
            layers[layer]["act_in_max"] = round(float(args[0].abs().max()), 1)
        if id(g.activation) not in acts_hooked:
            acts_hooked.add(id(g.activation))
            hooks.append(g.activation.register_forward_hook(on_act))
        hooks.append(g.register_forward_pre_hook(lambda mod, args, layer=layer: captured.__setitem__("layer", layer)))

        def on_gen(mod, args, out, layer=layer):
            t = torch.nn.functional.normalize(out.flatten(1).float(), dim=-1)
            c = t @ t.T
            n = len(c)
            layers[layer]["soft_cos"] = round(float((c.sum() - c.diagonal().sum()) / max(n * (n - 1), 1)), 4)
            layers[layer]["soft_rms"] = round(float(out.float().pow(2).mean().sqrt()), 4)
        hooks.append(g.register_forward_hook(on_gen))
    with torch.no_grad():
        fam(**batch)
    for h in hooks:
        h.remove()

    # -- one training micro-batch: gradient norms by group
    fam.train()
    theta = {id(p) for p in (built.bilevel.params if built.bilevel else [])}
    fam(**batch).loss.backward()
    groups = defaultdict(float)
    for n, p in fam.named_parameters():
        if p.grad is None:
            continue
        kind = ("theta" if id(p) in theta else "up" if ".up." in n else "down" if ".down." in n
                else "pooler" if "pooler" in n else "other")
        groups[kind] += float(p.grad.float().pow(2).sum())
    total = sum(groups.values()) ** 0.5
    report["grad"] = {k: float(f"{v ** 0.5:.3g}") for k, v in sorted(groups.items())}
    report["grad"]["total"] = float(f"{total:.3g}")
    report["grad"]["clip_factor"] = float(f"{min(1.0, 1.0 / max(total, 1e-30)):.3g}")
    ups = torch.cat([p.detach().flatten() for n, p in fam.named_parameters() if n.endswith("up.weight")])
    rms = float(ups.pow(2).mean().sqrt())
    report["rel_step_up"] = float(f"{cfg.runner.lr / rms:.3g}") if rms > 0 else float("inf")
    report["layers"] = {int(k): v for k, v in sorted(layers.items())}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
