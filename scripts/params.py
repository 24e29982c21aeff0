"""Tunable/total parameter counts of a method on a backbone built on the `meta` device (no weights).

    python -m scripts.params backbone=llama2-7b method=lora
    python -m scripts.params backbone=llama2-7b method=lora target=8.4e6     # size knob closest to 8.4M

Prints one JSON object: backbone, method, trainable, total, the counts a method reports itself (SSP:
search_space, gates, budget), and knob/value/target with target=.
"""

from __future__ import annotations

import json
import sys

import torch


def count(cfg) -> dict:
    """Parameter counts of `cfg.method` applied to `cfg.backbone` on the meta device."""
    from pefts.registry import build_peft
    from runners.backbones import build_meta

    torch.manual_seed(0)
    model = build_meta(cfg.backbone)
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.device("meta"):
        built = build_peft(model, cfg.method)
    trainable = sum(p.numel() for p in built.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in built.model.parameters())
    return {"backbone": cfg.backbone.name, "method": cfg.method.name, "trainable": trainable, "total": total,
            **built.facts}


def fit_target(cfg, target: float, lo: int = 1, hi: int = 1 << 16) -> dict:
    """Integer value of the method's size knob whose trainable count is closest to `target`.

    Assumes the count grows with the knob (true of ranks, bottlenecks, prompt lengths, dimensions).
    """
    from omegaconf import open_dict

    from pefts.registry import METHODS

    knob = METHODS.get(cfg.method.name).meta.get("size_knob")
    if knob is None:
        raise SystemExit(f"method '{cfg.method.name}' declares no size knob, so target= cannot be searched")

    def at(v: int) -> int:
        with open_dict(cfg):
            cfg.method[knob] = v
        return count(cfg)["trainable"]

    while lo < hi:  # smallest value with count >= target
        mid = (lo + hi) // 2
        if at(mid) >= target:
            hi = mid
        else:
            lo = mid + 1
    best = min({max(1, lo - 1), lo}, key=lambda v: abs(at(v) - target))
    out = count_with(cfg, knob, best)
    out.update(knob=knob, value=best, target=target, ratio=out["trainable"] / target)
    return out


def count_with(cfg, knob, value):
    from omegaconf import open_dict

    with open_dict(cfg):
        cfg.method[knob] = value
    return count(cfg)


def main(argv: list[str]) -> None:
    from core.config import compose

    target = None
    overrides = []
    for a in argv:
        if a.startswith("target="):
            target = float(a.split("=", 1)[1])
        else:
            overrides.append(a)
    cfg = compose(["logger=none", *overrides])
    print(json.dumps(fit_target(cfg, target) if target is not None else count(cfg)))


if __name__ == "__main__":
    from core.errors import exit_on_user_error

    exit_on_user_error(main, sys.argv[1:])
