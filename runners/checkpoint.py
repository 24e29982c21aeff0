"""Resume a killed run: checkpoints beside its record, the last complete one, and the callbacks' state.

    results/runs/<backbone>/<task>/<cell>/seed<k>.ckpt/
        config.json                 the resolved config the checkpoints belong to
        checkpoint-<step>/          Trainer's own files (optimizer.pt, scheduler.pt, rng_state.pth,
                                    trainer_state.json; Trainer loads them with torch.load(weights_only=True)),
                                    peft.safetensors (the trainable tensors only: no backbone copies),
                                    harness.safetensors + harness.json (callback states; harness.json is
                                    written last, so a checkpoint without it is incomplete and skipped)

Trainer writes a checkpoint after every evaluation (`save_steps = eval_steps`) and keeps the last two; a
relaunch with the same overrides resumes from the newest complete one; the folder is removed when the
record is written. A callback takes part by defining `state_dict()` (nested dicts, lists, tuples,
numbers, strings and tensors) and `load_state_dict(state)`.
"""

from __future__ import annotations

import json
import os
import re
import shutil

import torch
from safetensors.torch import load_file, save_file

from core.errors import UserError
from runners import results as R

DONE = "harness.json"  # written last: marks a complete checkpoint
_STEP = re.compile(r"^checkpoint-(\d+)$")


def ckpt_root(path: str) -> str:
    """The checkpoint folder of the run whose record is `path` (seed<k>.json -> seed<k>.ckpt)."""
    return path[: -len(".json")] + ".ckpt" if path.endswith(".json") else path + ".ckpt"


def last_complete(root: str) -> str | None:
    """The newest checkpoint-<step> folder under `root` with its harness.json, or None."""
    if not os.path.isdir(root):
        return None
    found = [(int(m.group(1)), name) for name in os.listdir(root) if (m := _STEP.match(name))]
    for _, name in sorted(found, reverse=True):
        folder = os.path.join(root, name)
        if os.path.isfile(os.path.join(folder, DONE)):
            return folder
    return None


def prepare(root: str, config: dict, force: bool) -> str | None:
    """Start or resume: the checkpoint to resume from (None = from scratch). A folder left by another
    config (compared as records are, `results.comparable`) is refused in one line; force=true discards it."""
    cfg_file = os.path.join(root, "config.json")
    if force and os.path.isdir(root):
        shutil.rmtree(root)
    if os.path.isfile(cfg_file):
        with open(cfg_file) as f:
            old = json.load(f)
        diffs = R.diff_keys(R.comparable(old), R.comparable(json.loads(json.dumps(config, default=str))))
        if diffs:
            raise UserError(f"checkpoints in {root} were written with another config ({'; '.join(diffs[:3])}); "
                            "relaunch with the same overrides to resume, or add force=true to discard them")
        return last_complete(root)
    R.write_json(cfg_file, config)
    return None


def remove(root: str) -> None:
    shutil.rmtree(root, ignore_errors=True)


# -- callback state: tensors to safetensors, the rest to JSON (no pickle) ---------------------------------
def _split(obj, tensors: dict, key: str):
    if isinstance(obj, torch.Tensor):
        tensors[key] = obj.detach().contiguous().cpu().clone()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[k, _split(v, tensors, f"{key}.{k}")] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        items = [_split(v, tensors, f"{key}.{i}") for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    assert obj is None or isinstance(obj, (bool, int, float, str)), f"cannot checkpoint {type(obj).__name__} at {key}"
    return obj


def _join(obj, tensors: dict):
    if isinstance(obj, list):
        return [_join(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__tuple__" in obj:
            return tuple(_join(v, tensors) for v in obj["__tuple__"])
        return {k: _join(v, tensors) for k, v in obj["__dict__"]}
    return obj


def _stateful(callbacks) -> dict:
    out = {}
    for cb in callbacks:
        if callable(getattr(cb, "state_dict", None)) and callable(getattr(cb, "load_state_dict", None)):
            name = type(cb).__name__
            assert name not in out, f"two callbacks of type {name} keep state: names would collide"
            out[name] = cb
    return out


def save_callbacks(folder: str, callbacks) -> None:
    """Write the callbacks' state into `folder`; harness.json last (the completion mark)."""
    tensors: dict[str, torch.Tensor] = {}
    meta = {name: _split(cb.state_dict(), tensors, name) for name, cb in _stateful(callbacks).items()}
    save_file(tensors or {"_": torch.zeros(0)}, os.path.join(folder, "harness.safetensors"))
    tmp = os.path.join(folder, DONE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(meta, f)
    os.replace(tmp, os.path.join(folder, DONE))


def load_callbacks(folder: str, callbacks) -> None:
    with open(os.path.join(folder, DONE)) as f:
        meta = json.load(f)
    tensors = load_file(os.path.join(folder, "harness.safetensors"))
    stateful = _stateful(callbacks)
    missing = sorted(set(stateful) - set(meta))
    assert not missing, f"checkpoint {folder} has no state for callbacks {missing}"
    for name, cb in stateful.items():
        cb.load_state_dict(_join(meta[name], tensors))
