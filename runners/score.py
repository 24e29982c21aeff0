"""Re-score a predictions file with a task's own metric and print the metrics as one JSON object.

    python -m runners.score task=squad predictions=preds.jsonl
    python -m runners.score task=rte predictions=preds.jsonl data_dir=../shared/data/glue/RTE
    python -m runners.score task=wikisql predictions=preds.jsonl data_dir=hub    # references from the hub

Each line of the file is a JSON object with at least `id`, `prediction` and `reference` (a string or a
list of strings). Without `data_dir` the examples' references are rebuilt from the file, so no dataset
is needed; with `data_dir` (a folder, or `hub`) they are looked up by id in the task's test split.
Other `task.<field>=` overrides are passed to Hydra as for run.py. Bad input: one line on stderr, exit 2.
"""

from __future__ import annotations

import json
import os
import sys

from core.errors import UserError


def read_predictions(path: str) -> list[dict]:
    """Rows of a predictions jsonl; each must have id and prediction (reference is checked by the caller)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"predictions='{path}' does not exist (expected a .jsonl file)")
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"predictions='{path}' line {n} is not JSON ({e.msg})") from None
            if not isinstance(row, dict) or "id" not in row or "prediction" not in row:
                raise UserError(f"predictions='{path}' line {n} lacks 'id' or 'prediction' (needs id, prediction, reference)")
            rows.append(row)
    if not rows:
        raise UserError(f"predictions='{path}' has no rows")
    return rows


def references_of(row: dict, path: str, n: int) -> list[str]:
    ref = row.get("reference", row.get("references"))
    if isinstance(ref, str):
        return [ref]
    if isinstance(ref, list) and all(isinstance(r, str) for r in ref):
        return list(ref)
    raise UserError(f"predictions='{path}' row {n} (id {row['id']}): 'reference' must be a string or a list of "
                    f"strings, got {type(ref).__name__}; or pass data_dir= to take references from the dataset")


def compose_task(overrides: list[str]):
    """The task config composed with Hydra (as run.py does), loading the task registry only."""
    from core.config import compose, load_registries
    from tasks.registry import TASKS

    load_registries(("tasks",))

    for o in overrides:
        key, _, value = o.partition("=")
        if key == "task":
            TASKS.get(value)  # unknown name -> RegistryError naming the valid ones and the closest
    if not any(o.startswith("task=") for o in overrides):
        raise UserError(f"task= is required; valid: {', '.join(TASKS.names())}")
    return compose(["logger=none", *overrides], load=("tasks",))


def score_file(overrides: list[str], predictions: str) -> dict[str, float]:
    from tasks.base import Example
    from tasks.registry import build_task

    data_dir = None
    rest = []
    for o in overrides:
        if o.startswith("data_dir="):
            data_dir = o.split("=", 1)[1]
        else:
            rest.append(o)
    cfg = compose_task(rest)
    task = build_task(cfg.task)
    rows = read_predictions(predictions)
    if data_dir:
        if data_dir != "hub" and not os.path.isdir(data_dir):
            raise FileNotFoundError(f"data_dir='{data_dir}' is not a folder (or use data_dir=hub)")
        test = {e.id: e for e in task.splits(None if data_dir == "hub" else data_dir)["test"]}
        unknown = [str(r["id"]) for r in rows if str(r["id"]) not in test]
        if unknown:
            raise UserError(f"{len(unknown)} id(s) of predictions='{predictions}' are not in {cfg.task.name}'s test "
                            f"split (e.g. '{unknown[0]}'); valid ids look like '{next(iter(test), '')}'")
        examples = [test[str(r["id"])] for r in rows]
    else:
        examples = []
        for n, r in enumerate(rows, 1):
            refs = references_of(r, predictions, n)
            examples.append(Example(id=str(r["id"]), query=str(r.get("query", "")), response=refs[0] if refs else "",
                                    references=refs, label=r.get("label")))
    return task.score([str(r["prediction"] or "") for r in rows], examples)


def main(argv: list[str]) -> None:
    predictions = None
    overrides = []
    for a in argv:
        if a.startswith("predictions="):
            predictions = a.split("=", 1)[1]
        elif "=" not in a:
            raise UserError(f"argument '{a}' is not key=value; usage: python -m runners.score task=<name> "
                            "predictions=<file.jsonl> [data_dir=<folder>|hub]")
        else:
            overrides.append(a)
    if not predictions:
        raise UserError("predictions= is required: a .jsonl file with id, prediction, reference per line")
    print(json.dumps(score_file(overrides, predictions)))


if __name__ == "__main__":
    from core.errors import exit_on_user_error

    exit_on_user_error(main, sys.argv[1:])
