"""Hydra entry point: one (backbone, method, task, seed) run, or a sweep of them.

    python run.py                                               # offline main job (SmolLM2, synthetic task)
    python run.py method=lora task=rte seed=0..4 data_dir=../shared/data/glue/RTE
    python run.py backbone=tiny runner=debug task=rte seed=0,1,2 logger=none

`seed=0..4`, comma lists and Hydra's range()/glob() start a sweep without `-m` (runners/sweep.py).
Finished runs are skipped (force=true reruns); results go to results/runs/ (runners/results.py).
"""

from __future__ import annotations

import logging
import os
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("WANDB_SILENT", "true")

import warnings  # noqa: E402

warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

import core.schema  # noqa: E402,F401  (registers schemas)
import pefts  # noqa: E402,F401  (registers methods)
import tasks  # noqa: E402,F401  (registers tasks)
from core.errors import (  # noqa: E402
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_PREEMPTED,
    EXIT_USAGE,
    UserError,
    exit_on_user_error,
    one_line,
)
from runners.sweep import expand_argv  # noqa: E402

CONF = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conf")
GROUPS = ("backbone", "method", "task", "runner", "logger", "experiment", "ablation")


def check_choices(argv: list[str]) -> None:
    """Unknown group options (method=lorx) fail with the valid names and the closest one."""
    import difflib
    import glob as g

    for arg in argv:
        key, sep, value = arg.partition("=")
        key = key.lstrip("+~")
        if not sep or key not in GROUPS or any(c in value for c in ",()*") or value == "null":
            continue
        names = sorted(os.path.splitext(os.path.basename(p))[0] for p in g.glob(os.path.join(CONF, key, "*.yaml")))
        if value not in names:
            close = difflib.get_close_matches(value, names, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise UserError(f"unknown {key} '{value}'; valid: {', '.join(names)}.{hint}")


def _selected(argv: list[str], group: str) -> str | None:
    """The option of `group` this command line selects: its own `group=x`, else an experiment's
    `override /group: x`, else conf/config.yaml's default."""
    import yaml

    def defaults_of(path: str) -> dict:
        with open(path, encoding="utf-8") as f:
            items = (yaml.safe_load(f) or {}).get("defaults", [])
        out = {}
        for item in items:
            if isinstance(item, dict):
                for k, v in item.items():
                    out[str(k).replace("override ", "").lstrip("/").removeprefix("optional ").strip()] = v
        return out

    chosen = defaults_of(os.path.join(CONF, "config.yaml")).get(group)
    for arg in argv:
        key, _, value = arg.partition("=")
        if key.lstrip("+~") == "experiment" and value and value != "null" and not any(c in value for c in ",()*"):
            chosen = defaults_of(os.path.join(CONF, "experiment", f"{value}.yaml")).get(group, chosen)
    for arg in argv:
        key, _, value = arg.partition("=")
        if key.lstrip("+~") == group:
            chosen = value
    return chosen if isinstance(chosen, str) and not any(c in chosen for c in ",()*") else None


def check_keys(argv: list[str]) -> None:
    """Unknown keys (runner.lrr=1e-3, +runner.lrr=..., seeds=0..4) fail with the closest valid key, before
    Hydra's multi-line message and its advice to append the typo with `+`, which would run it ignored."""
    import dataclasses
    import difflib

    from core.schema import BackboneConfig, LoggerConfig, RunConfig, RunnerConfig
    from pefts.registry import METHODS
    from tasks.registry import TASKS

    schemas = {"runner": lambda name: RunnerConfig, "backbone": lambda name: BackboneConfig,
               "logger": lambda name: LoggerConfig, "method": lambda name: METHODS.get(name).schema,
               "task": lambda name: TASKS.get(name).schema}
    for arg in argv:
        key, sep, _ = arg.partition("=")
        key = key.lstrip("+~")
        if not sep or key.startswith(("hydra.", "hydra/")) or key.startswith("-"):  # Hydra's own (launchers)
            continue
        group, dot, field = key.partition(".")
        if not dot and group == "ablation":  # `+ablation=<cell>`: a group (conf/ablation/), not a key
            continue
        if not dot:  # a top-level key
            valid = [f.name for f in dataclasses.fields(RunConfig)]
            name, what = group, "top-level key"
        elif group in schemas:
            chosen = _selected(argv, group)
            if chosen is None or chosen == "null":
                continue
            try:
                schema = schemas[group](chosen)
            except KeyError:
                continue  # an unknown option: check_choices names it
            valid = [f.name for f in dataclasses.fields(schema)]
            name, what = field.split(".")[0], f"key of {group} '{chosen}'"
        else:
            continue
        if name not in valid:
            close = difflib.get_close_matches(name, valid, n=1)
            hint = f" Did you mean '{(group + '.' if dot else '') + close[0]}'?" if close else ""
            raise UserError(f"unknown {what}: '{key}'; valid: {', '.join(valid)}.{hint}")
        _check_type(arg, RunConfig if not dot else schema, key if not dot else field)


def _check_type(arg: str, schema, field: str) -> None:
    """A value of the wrong type (runner.lr=abc, runner.max_steps=1.5) in one line, as the typed schema
    would refuse it at composition (Hydra's own message spans five lines and exits 1)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        override = OverridesParser.create().parse_override(arg.lstrip("+~") if arg.startswith("+") else arg)
    except Exception:
        return  # Hydra reports override syntax errors itself
    if override.is_sweep_override() or override.is_delete():
        return
    try:
        OmegaConf.update(OmegaConf.structured(schema), field, override.value(), merge=True)
    except OmegaConfBaseException as e:
        reason = str(e).strip().splitlines()[0]
        raise UserError(f"{override.key_or_group}={override.get_value_element_as_str()}: {reason}") from None
    except Exception:
        return


@hydra.main(config_path="conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    from runners.results import RunLocked
    from runners.train import Preempted, RunFailed, run

    logging.getLogger("transformers").setLevel(logging.WARNING)
    try:
        record = run(cfg)
    except RunLocked as e:  # another process trains this run: skip it (exit 0), and let a sweep go on
        print(f"skipped: {e}", file=sys.stderr)
        return
    except UserError as e:  # one clear line, non-zero exit, even inside a Hydra sweep
        print(one_line(e), file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    except RunFailed as e:  # the run started and raised: one line naming its failed record
        print(f"error: run failed: {e}", file=sys.stderr)
        raise SystemExit(EXIT_FAILED) from None
    except Preempted as e:  # SIGTERM/SIGINT in training: checkpointed; a relaunch (or a requeue) resumes
        print(f"stopped: {e}", file=sys.stderr)
        raise SystemExit(EXIT_PREEMPTED) from None
    except KeyboardInterrupt:  # SIGINT outside training: records are written atomically, nothing half-done
        print("interrupted: no record written for this run", file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED) from None
    state = "skipped (exists)" if record.get("skipped") else f"done in {record['wall_time_s']:.0f} s"
    print(f"[{record['backbone']}/{record['task']}/{record['cell']}/seed{record['seed']}] {state}: "
          f"test {record['metrics']}")


if __name__ == "__main__":
    argv = exit_on_user_error(expand_argv, sys.argv[1:])
    exit_on_user_error(check_choices, argv)
    exit_on_user_error(check_keys, argv)
    sys.argv = [sys.argv[0], *argv]
    main()
