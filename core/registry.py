"""A name -> (config schema, builder) registry shared by methods and tasks.

One decorator per implementation file registers it and stores its typed schema in Hydra's
ConfigStore under `schema/<group>/<name>` (a group *separate* from `<group>`, so `method=glob(*)`
sweeps never pick schemas up). The YAML in `conf/<group>/<name>.yaml` pulls the schema in with
`defaults: [/schema/<group>/<name>@_here_, _self_]`, so a typo in an override fails at composition.

    from pefts.registry import register_method
    @register_method("lora", LoraConfig)
    def build(model, cfg): ...
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore


class RegistryError(KeyError):
    """Raised for an unknown name; the message names the valid options and the closest one."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it one readable line
        return str(self.args[0])


@dataclass
class Entry:
    name: str
    schema: type
    obj: Any
    meta: dict  # extra facts a registrant declares (e.g. a method's `size_knob`)


class Registry:
    def __init__(self, group: str):
        self.group = group
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, schema: type, **meta: Any) -> Callable[[Any], Any]:
        def deco(obj: Any) -> Any:
            assert name not in self._entries, f"{self.group} '{name}' registered twice"
            self._entries[name] = Entry(name, schema, obj, meta)
            ConfigStore.instance().store(group=f"schema/{self.group}", name=name, node=schema)
            return obj

        return deco

    def names(self) -> list[str]:
        return sorted(self._entries)

    def get(self, name: str) -> Entry:
        if name not in self._entries:
            close = difflib.get_close_matches(str(name), self.names(), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise RegistryError(f"unknown {self.group} '{name}'; valid: {', '.join(self.names())}.{hint}")
        return self._entries[name]

    def __contains__(self, name: str) -> bool:
        return name in self._entries


def import_submodules(package_name: str, package_path: list[str]) -> None:
    """Import every module of a package so that its registration decorators run."""
    import importlib
    import pkgutil

    for info in pkgutil.walk_packages(package_path, prefix=package_name + "."):
        importlib.import_module(info.name)
