"""Compose the run config the way `run.py` does, for scripts and tests: one helper, written once.

    from core.config import compose
    cfg = compose(["backbone=tiny", "method=lora", "task=rte"])          # methods and tasks registered
    cfg = compose(["task=rte"], load=("tasks",))                         # the task side only (re-scoring)

`load` names the packages whose registries the config needs; they are imported by name (a plugin load:
the ground floor does not depend on them), and only they: re-scoring a predictions file never imports
a PEFT method. Without "pefts" the `method` group is dropped from the defaults list.
"""

from __future__ import annotations

import importlib
import os

import core.schema  # noqa: F401  (registers the backbone/runner/logger/run schemas)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONF = os.path.join(ROOT, "conf")
REGISTRIES = ("pefts", "tasks")  # packages whose import registers methods / tasks


def load_registries(packages=REGISTRIES) -> None:
    """Import the packages whose modules register themselves (methods, tasks)."""
    for name in packages:
        importlib.import_module(name)


def compose(overrides=(), *, load=REGISTRIES, config_name: str = "config", return_hydra_config: bool = False):
    """The resolved top-level config for these command-line style overrides (no Hydra job is started)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    load_registries(load)
    overrides = list(overrides)
    if "pefts" not in load and not any(o.lstrip("+~").startswith("method") for o in overrides):
        overrides.append("~method")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base=None):
        return hydra_compose(config_name=config_name, overrides=overrides, return_hydra_config=return_hydra_config)
