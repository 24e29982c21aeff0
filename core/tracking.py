"""The W&B mode of a logger config, resolved in one place for runs (runners/train.py) and tables
(runners/tables.py): None when nothing is logged, else online or offline."""

from __future__ import annotations

import os

from core.errors import UserError

MODES = ("auto", "online", "offline", "disabled")


def wandb_mode(logger) -> str | None:
    """None for `logger=none` or mode disabled; auto = online iff WANDB_API_KEY is set, else offline (no
    network needed); UserError naming the valid modes for any other value."""
    if logger.name == "none" or logger.mode == "disabled":
        return None
    if logger.mode not in MODES:
        raise UserError(f"logger.mode='{logger.mode}' is not one of {', '.join(MODES)}")
    if logger.mode == "auto":
        return "online" if os.environ.get("WANDB_API_KEY") else "offline"
    return logger.mode
