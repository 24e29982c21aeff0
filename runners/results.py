"""Run records: one JSON per (backbone, task, method-or-variant, seed), written atomically.

    results/runs/<backbone>/<task>/<cell>/seed<k>.json          # cell = variant or method name
    results/runs/<backbone>/<task>/<cell>/seed<k>.predictions.jsonl

A record whose recorded config differs from the requested one (in anything but the seed and the
keys in NOT_COMPARED) is an error, never a silent skip: ablations carry `variant=<name>`.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
from importlib import metadata

from omegaconf import OmegaConf

from core.errors import UserError

SCHEMA_VERSION = 1
# Keys that do not change what a run computes (where it is written, how it is logged, where data is read from).
NOT_COMPARED = {"seed", "force", "logger", "results_dir", "data_dir", "print_table", "experiment",
                "runner.cache_dir", "runner.device", "runner.num_threads", "runner.logging_steps"}
PACKAGES = ("torch", "transformers", "peft", "datasets", "hydra-core", "omegaconf", "wandb", "accelerate", "gguf")
REQUIRED_KEYS = ("schema", "backbone", "task", "method", "cell", "seed", "status", "metrics", "dev", "params",
                 "config", "provenance", "wall_time_s", "curve")


def cell_name(cfg) -> str:
    return cfg.variant or cfg.method.name


def result_path(cfg, cell: str | None = None) -> str:
    cell = cell or cell_name(cfg)
    for what, value in (("backbone", cfg.backbone.name), ("task", cfg.task.name), ("variant/method", cell)):
        if not value or "/" in str(value) or str(value).startswith("."):
            raise UserError(f"{what} name '{value}' cannot be used in a result path (no '/', no leading '.')")
    return os.path.join(cfg.results_dir, cfg.backbone.name, cfg.task.name, cell, f"seed{cfg.seed}.json")


def comparable(config: dict, drop_method: bool = False) -> dict:
    """The part of a resolved config that identifies what a run computes."""
    out = {}
    for group, value in config.items():
        if group in NOT_COMPARED or (drop_method and group == "method"):
            continue
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if f"{group}.{k}" not in NOT_COMPARED}
        out[group] = value
    return out


def diff_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k, "<absent>"), b.get(k, "<absent>")
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += diff_keys(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.append(f"{prefix}{k}: recorded {va!r}, requested {vb!r}")
    return keys


def load_finished(path: str, config: dict, drop_method: bool = False) -> dict | None:
    """The finished record at `path` if its config matches `config`; None if absent; UserError if it differs."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        record = json.load(f)
    if record.get("status") != "ok":
        return None
    diffs = diff_keys(comparable(record["config"], drop_method), comparable(config, drop_method))
    if diffs:
        raise UserError(
            f"{path} was produced by a different config ({'; '.join(diffs[:4])}"
            f"{'; ...' if len(diffs) > 4 else ''}); give this run its own `variant=<name>`, or `force=true` to overwrite"
        )
    return record


def atomic_write_text(path: str, text: str) -> None:
    """Write via a temp file in the same folder + os.replace, so readers never see a partial file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json(path: str, obj: dict) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=False, default=str) + "\n")


def write_jsonl(path: str, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def provenance(device: str) -> dict:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    versions = {}
    for p in PACKAGES:
        try:
            versions[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            versions[p] = None
    return {
        "git_commit": git("rev-parse", "HEAD") or None,
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "packages": versions,
        "python": platform.python_version(),
        "host": platform.node(),
        "device": device,
    }


def to_container(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


def validate_record(record: dict) -> None:
    missing = [k for k in REQUIRED_KEYS if k not in record]
    assert not missing, f"result record lacks keys {missing}"
