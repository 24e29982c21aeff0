"""One source for defaults: the schema dataclass holds each default and, in a comment, its effect; a YAML sets
only what differs from what it extends (the schema, or the preset named in its defaults list).

    conf/method/iapt.yaml          header, defaults list, nothing else: IaptConfig's defaults are the preset
    conf/runner/offline.yaml       only the values that differ from conf/runner/default.yaml

A value equal to the one the YAML would get anyway is a default written twice (the two drift apart
unnoticed); it fails here with the file, the key and the value.
"""

from __future__ import annotations

import dataclasses
import glob
import inspect
import io
import os
import re
import tokenize

import pytest
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from core.schema import BackboneConfig, LoggerConfig, RunConfig, RunnerConfig
from pefts.registry import METHODS
from tasks.registry import TASKS
from tests.conftest import ROOT, compose

GROUPS = ("method", "task", "runner", "backbone", "logger")
GROUP_SCHEMAS = {"runner": RunnerConfig, "backbone": BackboneConfig, "logger": LoggerConfig}
NOT_VALUES = ("defaults", "hydra")  # keys of a YAML that are Hydra's, not the schema's
EXEMPT = {"name"}  # fields that only say which option this is


def yaml_files() -> list[tuple[str, str, str]]:
    """(group, option, path) of every config file: conf/config.yaml and every option of every group."""
    out = [("config", "config", os.path.join(ROOT, "conf", "config.yaml"))]
    for group in GROUPS:
        for path in sorted(glob.glob(os.path.join(ROOT, "conf", group, "*.yaml"))):
            out.append((group, os.path.splitext(os.path.basename(path))[0], path))
    return out


def schema_of(group: str, name: str) -> type:
    if group == "config":
        return RunConfig
    if group in GROUP_SCHEMAS:
        return GROUP_SCHEMAS[group]
    return (METHODS if group == "method" else TASKS).get(name).schema


def own_values(path: str) -> dict:
    values = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    return {k: v for k, v in values.items() if k not in NOT_VALUES}


def inherited(group: str, path: str):
    """What the YAML's defaults list gives before `_self_`: the schema's defaults, or a preset it extends."""
    base = OmegaConf.create({})
    for entry in OmegaConf.load(path).get("defaults", []):
        if entry == "_self_":
            break
        if not isinstance(entry, str):  # a group choice (`backbone: smollm2-135m`), not a parent
            continue
        if entry.startswith("/schema/") or entry == "schema_run":
            node = ConfigStore.instance().load(entry.lstrip("/").split("@")[0] + ".yaml").node
        else:
            parent = os.path.join(ROOT, "conf", group, f"{entry}.yaml")
            node = OmegaConf.merge(inherited(group, parent), own_values(parent))
        base = OmegaConf.merge(base, node)
    return OmegaConf.to_container(base, resolve=False)


def same(a, b) -> bool:
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def repeats(own: dict, base: dict, prefix: str = ""):
    """(dotted key, value) of every value in `own` that `base` already has."""
    for key, value in own.items():
        if key not in base:
            continue
        if isinstance(value, dict) and isinstance(base[key], dict):
            yield from repeats(value, base[key], f"{prefix}{key}.")
        elif same(value, base[key]):
            yield f"{prefix}{key}", value


CASES = yaml_files()
IDS = [os.path.relpath(p, ROOT) for _, _, p in CASES]


@pytest.mark.parametrize("group,name,path", CASES, ids=IDS)
def test_yaml_sets_only_values_that_differ_from_the_default(group, name, path):
    rel = os.path.relpath(path, ROOT)
    where = schema_of(group, name).__name__
    twice = [f"{rel}: {key}: {value!r} repeats the default it extends ({where} or its parent preset)"
             for key, value in repeats(own_values(path), inherited(group, path))]
    assert not twice, ("defaults written twice; delete them from the YAML (the comment on their effect "
                       "belongs on the dataclass field):\n" + "\n".join(twice))


@pytest.mark.parametrize("group,name,path", CASES, ids=IDS)
def test_yaml_header_says_where_its_defaults_live(group, name, path):
    rel = os.path.relpath(path, ROOT)
    with open(path) as f:
        header = f.read().split("defaults:")[0].splitlines()
    head = " ".join(ln[1:].strip() for ln in header if ln.startswith("#"))
    cls = schema_of(group, name)
    want = f"{cls.__name__} in {os.path.relpath(inspect.getsourcefile(cls), ROOT)}"
    assert "defaults and their effects:" in head.lower(), f"{rel}: no '# Defaults and their effects: {want}'"
    assert want in head, f"{rel}: the header should name {want}"


def schemas() -> list[type]:
    """Every schema dataclass a config is built from, with the dataclasses they inherit fields from."""
    roots = [RunConfig, RunnerConfig, BackboneConfig, LoggerConfig]
    roots += [METHODS.get(n).schema for n in METHODS.names()] + [TASKS.get(n).schema for n in TASKS.names()]
    out: list[type] = []
    for root in roots:
        for cls in root.__mro__:
            if dataclasses.is_dataclass(cls) and cls not in out:
                out.append(cls)
    return out


def uncommented_fields(cls: type) -> list[str]:
    """Fields declared in `cls` itself whose line, or the line above it, carries no `#` comment."""
    lines, _ = inspect.getsourcelines(cls)
    src = "".join(lines)
    comments = {tok.start[0] - 1 for tok in tokenize.generate_tokens(io.StringIO(src).readline)
                if tok.type == tokenize.COMMENT}
    missing = []
    for name in cls.__dict__.get("__annotations__", {}):
        if name in EXEMPT:
            continue
        at = [i for i, ln in enumerate(lines) if re.match(rf"^\s+{name}\s*:", ln)]
        assert at, f"{cls.__name__}.{name}: field line not found"
        i = at[0]
        above = i - 1 in comments and lines[i - 1].lstrip().startswith("#")
        if i not in comments and not above:
            missing.append(name)
    return missing


def test_every_schema_field_comments_its_effect():
    bare = []
    for cls in schemas():
        source = os.path.relpath(inspect.getsourcefile(cls), ROOT)
        bare += [f"{source}: {cls.__name__}.{name}" for name in uncommented_fields(cls)]
    assert not bare, "fields without a comment on their effect (inline or above):\n" + "\n".join(bare)


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_composes_under_its_strict_schema(group):
    """Typed by its dataclass (so an unknown key or a wrong type fails at composition), name as the file."""
    names = [name for g, name, _ in CASES if g == group]
    for name in names:
        cfg = compose(f"{group}={name}", debug=False)
        assert OmegaConf.get_type(cfg[group]) is schema_of(group, name), f"conf/{group}/{name}.yaml: untyped"
        assert cfg[group].name == name, f"conf/{group}/{name}.yaml composes name={cfg[group].name}"
    with pytest.raises(Exception, match="not_a_field"):
        compose(f"{group}={names[0]}", f"{group}.not_a_field=1", debug=False)


def test_top_level_config_composes_under_its_schema():
    cfg = compose(debug=False)
    assert OmegaConf.get_type(cfg) is RunConfig
    with pytest.raises(Exception, match="not_a_field"):
        compose("not_a_field=1", debug=False)
