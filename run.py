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
from core.errors import UserError, exit_on_user_error, one_line  # noqa: E402
from runners.sweep import expand_argv  # noqa: E402

CONF = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conf")
GROUPS = ("backbone", "method", "task", "runner", "logger", "experiment")


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


@hydra.main(config_path="conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    from runners.results import RunLocked
    from runners.train import RunFailed, run

    logging.getLogger("transformers").setLevel(logging.WARNING)
    try:
        record = run(cfg)
    except RunLocked as e:  # another process trains this run: skip it, and let a sweep go on
        print(one_line(e), file=sys.stderr)
        return
    except UserError as e:  # one clear line, non-zero exit, even inside a Hydra sweep
        print(one_line(e), file=sys.stderr)
        raise SystemExit(2) from None
    except RunFailed as e:  # the run started and raised: one line naming its failed record
        print(f"error: run failed: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    state = "skipped (exists)" if record.get("skipped") else f"done in {record['wall_time_s']:.0f} s"
    print(f"[{record['backbone']}/{record['task']}/{record['cell']}/seed{record['seed']}] {state}: "
          f"test {record['metrics']}")


if __name__ == "__main__":
    argv = exit_on_user_error(expand_argv, sys.argv[1:])
    exit_on_user_error(check_choices, argv)
    sys.argv = [sys.argv[0], *argv]
    main()
