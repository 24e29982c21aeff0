"""Download every task's hub data (and optionally a backbone's weights) into the HF cache, on a networked
machine, so that later runs with HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 read them from the cache.

    python -m scripts.prefetch                                  # all tasks, default HF cache
    python -m scripts.prefetch tasks=rte,boolq,e2e backbone=llama2-7b
    python -m scripts.prefetch cache_dir=/shared/hf             # then run with HF_HOME=/shared/hf

Each task is fetched by calling its own hub loader (`task.splits(None)`), so the cache holds exactly
what runs read. Prints one line per task (rows per split, or the error) and exits 1 if any failed.
"""

from __future__ import annotations

import os
import sys


def parse(argv: list[str]) -> dict[str, str]:
    args = {}
    for a in argv:
        key, sep, value = a.partition("=")
        if not sep or key not in ("tasks", "backbone", "cache_dir"):
            raise ValueError(f"argument '{a}' is not one of tasks=a,b,... backbone=<name> cache_dir=<folder>")
        args[key] = value
    return args


def prefetch_backbone(name: str) -> str:
    """Snapshot of the backbone's hub weights and tokenizer; returns the local folder."""
    from huggingface_hub import snapshot_download

    from core.config import compose

    b = compose(["logger=none", f"backbone={name}"], load=()).backbone
    if not b.hub_id:
        raise ValueError(f"backbone '{name}' has no hub_id (source={b.source}): nothing to download")
    return snapshot_download(b.hub_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "tokenizer*"])


def main(argv: list[str]) -> int:
    args = parse(argv)
    if args.get("cache_dir"):
        os.environ["HF_HOME"] = os.path.abspath(os.path.expanduser(args["cache_dir"]))  # before datasets loads
    from core.config import compose, load_registries
    from tasks.registry import TASKS, build_task

    load_registries(("tasks",))

    names = args["tasks"].split(",") if args.get("tasks") else [n for n in TASKS.names() if n != "synth-compare"]
    failed = 0
    for name in names:
        TASKS.get(name)  # an unknown name fails here, with the valid ones
        try:  # the task's YAML composed over its schema, as run.py sees it
            splits = build_task(compose(["logger=none", f"task={name}"], load=("tasks",)).task).splits(None)
            print(f"{name}: " + ", ".join(f"{k} {len(v)}" for k, v in splits.items()), flush=True)
        except Exception as e:  # report every task, then fail
            failed += 1
            print(f"{name}: FAILED {type(e).__name__}: {e}", flush=True)
    if args.get("backbone"):
        print(f"backbone {args['backbone']}: {prefetch_backbone(args['backbone'])}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    from core.errors import exit_on_user_error

    raise SystemExit(exit_on_user_error(main, sys.argv[1:]))
