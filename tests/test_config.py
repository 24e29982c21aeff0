"""Every config composes; typos fail at composition; registries and YAML folders agree."""

from __future__ import annotations

import glob
import os

import pytest
from omegaconf import OmegaConf

from tests.conftest import ROOT, compose


def options(group: str) -> list[str]:
    return sorted(os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(ROOT, "conf", group, "*.yaml")))


@pytest.mark.parametrize("group", ["backbone", "method", "task", "runner", "logger", "experiment"])
def test_every_option_composes(group):
    for name in options(group):
        cfg = compose(f"{group}={name}", debug=False)
        OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
        if group != "experiment":
            assert cfg[group].name == name, f"conf/{group}/{name}.yaml sets name={cfg[group].name}"


def test_default_config_is_the_offline_main_job():
    cfg = compose(debug=False)
    assert (cfg.backbone.name, cfg.method.name, cfg.task.name, cfg.runner.name) == (
        "smollm2-135m", "iapt", "synth-compare", "offline")


def test_typo_in_override_fails_with_the_key():
    with pytest.raises(Exception, match="rr"):
        compose("method.rr=3")


def test_wrong_type_fails():
    with pytest.raises(Exception, match="r"):
        compose("method.r=four")


def test_method_registry_matches_yaml():
    from pefts.registry import METHODS

    assert set(METHODS.names()) == set(options("method")), "a registered method lacks a YAML or a YAML lacks a method"


def test_task_registry_matches_yaml():
    from tasks.registry import TASKS

    assert set(TASKS.names()) == set(options("task")), "a registered task lacks a YAML or a YAML lacks a task"


def test_registry_suggests_closest_name():
    from core.registry import RegistryError
    from pefts.registry import METHODS

    with pytest.raises(RegistryError, match="Did you mean 'lora'"):
        METHODS.get("lorra")
