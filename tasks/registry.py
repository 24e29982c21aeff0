"""Task registry: `@register_task(name, ConfigDataclass)` on a `Task` subclass (see tasks/base.py)."""

from __future__ import annotations

from core.registry import Registry

TASKS = Registry("task")


def register_task(name: str, schema: type):
    return TASKS.register(name, schema)


def build_task(cfg):
    """Instantiate the task named `cfg.name` with its typed config."""
    return TASKS.get(cfg.name).obj(cfg)
