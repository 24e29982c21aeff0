"""Run records: one JSON per (backbone, task, method-or-variant, seed), written atomically.

    results/runs/<backbone>/<task>/<cell>/seed<k>.json          # cell = variant or method name
    results/runs/<backbone>/<task>/<cell>/seed<k>.predictions.jsonl

    results/runs/<backbone>/<task>/<cell>/seed<k>.failed.json   # a run that raised: error + traceback
    results/runs/<backbone>/<task>/<cell>/seed<k>.lock          # held while the run trains (pid, host, start)

A cell is one config: every record of a cell has the same resolved config apart from the seed and the
keys in NOT_COMPARED. A run whose config differs from its own finished record, or from the cell's other
seeds, is an error naming the differing keys, never a silent skip or a mixed median: ablations carry
`variant=<name>`. `force=true` replaces the run's own record (also a corrupt one), never the cell's others.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import logging
import os
import platform
import socket
import subprocess
import tempfile
import time
import traceback
from importlib import metadata

from omegaconf import OmegaConf

from core.errors import UserError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
ZERO_SHOT = "zero-shot"  # cell name of the untrained-backbone reference row (runners/train.py writes it)
_UMASK = os.umask(0o022)
os.umask(_UMASK)
# Keys that do not change what a run computes (where it is written, how it is logged, where data is read from;
# num_threads and loss_positions change the order of float sums only: the same gradients, losses to the last bits).
NOT_COMPARED = {"seed", "force", "break_lock", "logger", "results_dir", "data_dir", "data_root", "print_table",
                "experiment", "columns", "mean_of", "task_cost", "task_source", "notes",  # how a table shows runs (task_source acts through task.source)
                "runner.cache_dir", "runner.device", "runner.num_threads", "runner.logging_steps",
                "runner.save_peft", "runner.resume", "runner.progress", "runner.loss_positions", "task.local_dir"}
PACKAGES = ("torch", "transformers", "peft", "datasets", "hydra-core", "omegaconf", "wandb", "accelerate", "gguf")
REQUIRED_KEYS = ("schema", "backbone", "task", "method", "cell", "seed", "status", "metrics", "dev", "params",
                 "config", "provenance", "wall_time_s", "curve")
# the order of a record's keys after its identity (JSON keeps it; records stay byte-comparable across versions)
RECORD_ORDER = ("status", "metrics", "dev", "params", "config", "provenance", "wall_time_s", "timing_s", "curve",
                "split_sizes", "protocol", "chance", "steps", "effective_batch_size", "input_dependence")


def new_record(cfg, config: dict, cell: str | None = None, **fields) -> dict:
    """The one builder of run records: the trained run's, the untrained backbone's (cell=ZERO_SHOT: method
    zero-shot, no variant, seed 0) and a failed run's stub (identity and config only, `write_failed` adds the
    error). `fields` are the keys of RECORD_ORDER, written in that order."""
    unknown = set(fields) - set(RECORD_ORDER)
    assert not unknown, f"new_record: unknown record keys {sorted(unknown)}; known: {RECORD_ORDER}"
    zero = cell == ZERO_SHOT
    record = {"schema": SCHEMA_VERSION, "backbone": cfg.backbone.name, "task": cfg.task.name,
              "method": ZERO_SHOT if zero else cfg.method.name, "variant": None if zero else cfg.variant,
              "cell": cell or cell_name(cfg), "seed": 0 if zero else cfg.seed}
    fields["config"] = config
    record.update((k, fields[k]) for k in RECORD_ORDER if k in fields)
    return record


def cell_name(cfg) -> str:
    return cfg.variant or cfg.method.name


def result_path(cfg, cell: str | None = None, seed: int | None = None) -> str:
    """<results_dir>/<backbone>/<task>/<cell>/seed<k>.json of the run `cfg` names (or of another cell or seed
    of its backbone and task: the zero-shot row is `cell=ZERO_SHOT, seed=0`)."""
    cell = cell or cell_name(cfg)
    seed = cfg.seed if seed is None else seed
    for what, value in (("backbone", cfg.backbone.name), ("task", cfg.task.name), ("variant/method", cell)):
        if not value or "/" in str(value) or str(value).startswith("."):
            raise UserError(f"{what} name '{value}' cannot be used in a result path (no '/', no leading '.')")
    return run_path(cfg.results_dir, cfg.backbone.name, cfg.task.name, cell, seed)


def run_path(results_dir: str, backbone: str, task: str, cell: str, seed: int | str) -> str:
    """The record of one run, <results_dir>/<backbone>/<task>/<cell>/seed<k>.json, from plain names (the
    layout of the module docstring; `result_path` checks the names of a run about to be written)."""
    return os.path.join(results_dir, backbone, task, cell, f"seed{seed}.json")


# keys added after records existed, with the value every older record was computed with
# ("group.key", or "group.key@name" for a key of one method or task only)
ADDED_LATER = {"runner.scoring": "generate", "method.init_std@iapt": 1e-3, "method.pool_skip_first@iapt": False,
               "runner.adam_beta1": 0.9, "runner.adam_beta2": 0.999, "runner.adam_epsilon": 1e-8,
               "runner.eval_test": True, "runner.init_peft": None,
               "runner.group_by_length": False}


# The runner keys that change what an untrained backbone's zero-shot row computes (it trains nothing, so the
# learning rate, steps, batch ... of the run that wrote it do not matter: cells with per-method learning rates
# share one zero-shot row).
ZERO_SHOT_RUNNER = ("scoring", "num_beams", "max_seq_len", "max_test_examples", "dtype")


def comparable(config: dict, drop_method: bool = False) -> dict:
    """The part of a resolved config that identifies what a run computes; `drop_method` for a zero-shot row
    (no method, and of the runner only ZERO_SHOT_RUNNER)."""
    out = {}
    for group, value in config.items():
        if group in NOT_COMPARED or (drop_method and group == "method"):
            continue
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if f"{group}.{k}" not in NOT_COMPARED}
            for key, old in ADDED_LATER.items():
                path, _, only = key.partition("@")
                g, _, k = path.partition(".")
                if g == group and (not only or value.get("name") == only):
                    value.setdefault(k, old)
            if drop_method and group == "runner":
                value = {k: v for k, v in value.items() if k in ZERO_SHOT_RUNNER}
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


class CorruptRecord(UserError):
    """A record file that cannot be read as a record (truncated, edited, not JSON)."""


def read_record(path: str) -> dict:
    """The record at `path`; CorruptRecord naming the file when it is not a readable record."""
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptRecord(f"{path} is not a readable run record ({type(e).__name__}: {e}); "
                            "rerun that seed with force=true to replace it") from None
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict) or "status" not in record:
        raise CorruptRecord(f"{path} is not a run record (no status/config); rerun that seed with force=true")
    return record


def _diff_message(diffs: list[str]) -> str:
    return f"{'; '.join(diffs[:4])}{'; ...' if len(diffs) > 4 else ''}"


def load_finished(path: str, config: dict, drop_method: bool = False, force: bool = False) -> dict | None:
    """The finished record at `path` if its config matches `config`; None if absent, failed, or
    `force` (which replaces it, corrupt or not); UserError naming the keys if the config differs."""
    if force or not os.path.exists(path):
        return None
    record = read_record(path)
    if record.get("status") != "ok":
        return None
    diffs = diff_keys(comparable(record["config"], drop_method), comparable(config, drop_method))
    if diffs:
        raise UserError(
            f"{path} was produced by a different config ({_diff_message(diffs)}); give this run its own "
            "`variant=<name>`, or add force=true to replace this seed's record")
    return record


def cell_records(path: str) -> list[tuple[str, dict]]:
    """(path, record) of the finished records of the other seeds in `path`'s cell folder."""
    out = []
    for other in sorted(glob.glob(os.path.join(os.path.dirname(path), "seed*.json"))):
        name = os.path.basename(other)
        if other == path or not name[4:-5].isdigit():  # seed<k>.json only (not .failed.json)
            continue
        rec = read_record(other)
        if rec.get("status") == "ok":
            out.append((other, rec))
    return out


def check_cell(path: str, config: dict, drop_method: bool = False) -> None:
    """UserError when a finished record of another seed in this cell has a different config."""
    for other, rec in cell_records(path):
        diffs = diff_keys(comparable(rec["config"], drop_method), comparable(config, drop_method))
        if diffs:
            raise UserError(
                f"cell {os.path.dirname(path)} already holds {os.path.basename(other)} with another config "
                f"({_diff_message(diffs)}): a cell is one config; give this run its own `variant=<name>`")


def failed_path(path: str) -> str:
    return path[: -len(".json")] + ".failed.json"


def write_failed(path: str, cfg_record: dict, error: BaseException, stage: str) -> str:
    """Record a run that raised: status failed, the error in one line and its traceback, beside `path`."""
    where = failed_path(path)
    record = dict(cfg_record, status="failed", stage=stage, error=f"{type(error).__name__}: {error}".splitlines()[0],
                  traceback="".join(traceback.format_exception(type(error), error, error.__traceback__))[-20_000:],
                  failed_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
    write_json(where, record)
    return where


def clear_failed(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(failed_path(path))


class RunLocked(UserError):
    """Another live process holds this run's lock (or one on another host, which cannot be checked from here).
    Not an error of the launch: run.py says `skipped:` and exits 0, and a sweep goes on."""


class WriteError(UserError):
    """The file system refused a write (permissions, not a folder, disk full, read-only): one line, exit 2."""


WRITE_ERRNOS = {errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EEXIST, errno.EISDIR, errno.ENOSPC, errno.EDQUOT,
                errno.EROFS, errno.ENAMETOOLONG, errno.ENOENT, errno.EFBIG}


def write_error(e: OSError, what: str) -> WriteError:
    """An OSError of writing `what` as one line naming it, the reason and the way out."""
    reason = e.strerror or type(e).__name__
    where = e.filename or what
    return WriteError(f"cannot write {what} ('{where}': {reason}); free space or choose a writable results_dir= "
                      "(or $HARNESS_RESULTS); the run left no record")


def ensure_writable(path: str) -> None:
    """Before any work: the folder of the record `path` exists (made if needed) and takes a file, else one
    line (WriteError). Catches a results_dir under a regular file, a folder without write permission, a
    read-only or full file system."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-probe.")
        try:
            os.write(fd, b"x")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.remove(probe)
    except OSError as e:
        raise write_error(e, f"the results folder '{folder}'") from None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def run_lock(path: str, break_lock: bool = False):
    """One writer per run: `seed<k>.lock` (pid, host, start time) created exclusively. A lock held by a
    live process raises RunLocked (one line); a stale one (dead pid on this host) is taken over. A lock of
    another host cannot be checked from here: RunLocked, unless `break_lock` (the user says it is dead)."""
    lock = path[: -len(".json")] + ".lock"
    os.makedirs(os.path.dirname(os.path.abspath(lock)), exist_ok=True)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o664)
        except FileExistsError:
            try:
                with open(lock) as f:
                    held = json.load(f)
            except (OSError, json.JSONDecodeError):
                held = {}
            same_host = held.get("host") == me["host"]
            if held and same_host and _alive(int(held.get("pid", -1))):
                raise RunLocked(f"{path} is being run by pid {held.get('pid')} on {held.get('host')} since "
                                f"{held.get('started')} (lock {lock})") from None
            if held and not same_host and not break_lock:
                raise RunLocked(f"{path} is locked by pid {held.get('pid')} on host {held.get('host')} since "
                                f"{held.get('started')} (lock {lock}), which cannot be checked from "
                                f"{me['host']}; if that run is gone, relaunch with break_lock=true") from None
            if held and not same_host:
                log.warning("break_lock=true: taking over %s of pid %s on %s", lock, held.get("pid"), held.get("host"))
            with contextlib.suppress(FileNotFoundError):  # stale: its process is gone
                os.remove(lock)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    else:
        raise RunLocked(f"{path}: could not take the lock {lock}")
    try:
        yield lock
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(lock)


def atomic_write_text(path: str, text: str) -> None:
    """Write via a temp file in the same folder + os.replace, so readers never see a partial file; a file
    system that refuses (permissions, not a folder, disk full) raises WriteError naming `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    except OSError as e:
        raise write_error(e, path) from None
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are for the group to read
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError):
            raise write_error(e, path) from None
        raise


def write_json(path: str, obj: dict) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=False, default=str) + "\n")


def write_jsonl(path: str, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def provenance(device: str, torch_threads: int | None = None) -> dict:
    """Where and with what a record was computed. `torch_threads`: the caller's torch.get_num_threads() (callers
    that never load torch, such as scripts.table's code-version check, leave it None)."""
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
        # torch's CPU threads in this process (runner.num_threads, or OMP_NUM_THREADS / the core count when it is
        # null): a speed setting outside the run's identity (the same losses to the last bit, measured in
        # results/bench/threads), kept so a record says how it was run
        "torch_threads": torch_threads,
    }


def to_container(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


def validate_record(record: dict) -> None:
    missing = [k for k in REQUIRED_KEYS if k not in record]
    assert not missing, f"result record lacks keys {missing}"
