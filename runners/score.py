"""Re-score a predictions file with a task's own metric and print the metrics as one JSON object.

    python -m runners.score task=squad predictions=preds.jsonl
    python -m runners.score task=rte predictions=preds.jsonl data_dir=../shared/data/glue/RTE
    python -m runners.score task=wikisql predictions=preds.jsonl data_dir=hub    # references from the hub
    python -m runners.score task=rte predictions=preds.jsonl data_dir=... partial=true  # a subset of test

Each line of the file is a JSON object with at least `id`, `prediction` and `reference` (a string or a
list of strings). Without `data_dir` the examples' references are rebuilt from the file, so no dataset
is needed; with `data_dir` (a folder, or `hub`) they are looked up by id in the task's test split.
Other `task.<field>=` overrides are passed to Hydra as for run.py. Bad input: one line on stderr, exit 2.

Coverage: a score is over the whole test split, so the file must hold every id of the split exactly
once. A repeated id is always refused; with `data_dir`, so are ids not in the split (a file written
for another task or split) and missing ids. `partial=true` (default false) allows missing ids only;
the output then adds `"partial"` (true when ids are missing), `"n"` (ids scored) and `"total"` (ids in
the split; null when unknown). Without `data_dir` the split is not at hand: the file is checked for
repeats and, when the run's record `seed<k>.json` lies beside `seed<k>.predictions.jsonl` (as
runners/train.py writes them), against the record's test size.

Another task's file: a row's `task` field, or the `task` of the record beside the file, must name
the task being scored; otherwise (rows carry no task) the id check above is what catches it.
"""

from __future__ import annotations

import collections
import functools
import json
import os
import sys

from core.errors import UserError

PREDICTIONS_SUFFIX = ".predictions.jsonl"
EXAMPLES = 3  # ids quoted in a coverage error


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


def record_beside(path: str) -> tuple[str, dict] | None:
    """The run record `seed<k>.json` written beside `seed<k>.predictions.jsonl`, if it is there and readable
    (an unreadable record is not this tool's business: runners/aggregate.py reports it)."""
    if not path.endswith(PREDICTIONS_SUFFIX):
        return None
    rec_path = path[: -len(PREDICTIONS_SUFFIX)] + ".json"
    try:
        with open(rec_path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    return (rec_path, record) if isinstance(record, dict) else None


def check_task(rows: list[dict], task: str, path: str, record) -> None:
    """Refuse a file whose rows or record name another task."""
    for n, r in enumerate(rows, 1):
        if "task" in r and str(r["task"]) != task:
            raise UserError(f"predictions='{path}' row {n} is for task '{r['task']}', not '{task}'; "
                            f"score it with task={r['task']}")
    if record and record[1].get("task") not in (None, task):
        other = record[1]["task"]
        raise UserError(f"predictions='{path}' was written for task '{other}' (its record {record[0]} says so), "
                        f"not '{task}'; score it with task={other}")


def some(ids) -> str:
    ids = list(ids)
    return ", ".join(f"'{i}'" for i in ids[:EXAMPLES]) + (", ..." if len(ids) > EXAMPLES else "")


def check_coverage(ids: list[str], split: list[str] | None, task: str, path: str, partial: bool,
                   total: int | None = None, total_from: str = "") -> int | None:
    """Refuse repeated ids, ids not in `split` and (unless `partial`) missing ones, in one line naming the
    counts and a few ids. `split` None: the split's ids are unknown; `total` (its size, e.g. from the run's
    record) is then checked instead. Returns the split's size (None when unknown)."""
    counts = collections.Counter(ids)
    repeated = [i for i, c in counts.items() if c > 1]
    problems = []
    if repeated:
        problems.append(f"{len(repeated)} id(s) repeated ({sum(counts[i] - 1 for i in repeated)} extra row(s)), "
                        f"e.g. {some(repeated)}")
    missing: list[str] = []
    if split is not None:
        total, known = len(split), set(split)
        unknown = [i for i in counts if i not in known]
        missing = [i for i in split if i not in counts]
        if unknown:
            problems.append(f"{len(unknown)} id(s) not in split {task} (test), e.g. {some(unknown)}: "
                            "a file for another task or split?")
        if missing and not partial:
            problems.append(f"{len(missing)} of {total} id(s) missing, e.g. {some(missing)} "
                            "(partial=true scores a subset)")
    elif total is not None and len(counts) != total and (len(counts) > total or not partial):
        what = "missing" if len(counts) < total else "too many"
        problems.append(f"{len(counts)} distinct id(s) but {total_from} says {task}'s test split has {total} "
                        f"({abs(total - len(counts))} {what}; data_dir= names them"
                        + (", partial=true scores a subset)" if len(counts) < total else ")"))
    if problems:
        raise UserError(f"predictions='{path}' must hold each id of {task}'s test split exactly once "
                        f"({len(ids)} row(s)): " + "; ".join(problems))
    return total


def parse_bool(key: str, value: str) -> bool:
    v = value.strip().lower()
    if v not in ("true", "false"):
        raise UserError(f"{key}='{value}' must be true or false")
    return v == "true"


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


def score_file(overrides: list[str], predictions: str) -> dict:
    """The task's metrics over the file (see the module docstring for coverage and `partial=`)."""
    from tasks.base import Example
    from tasks.registry import build_task

    data_dir = None
    partial = False
    rest = []
    for o in overrides:
        if o.startswith("data_dir="):
            data_dir = o.split("=", 1)[1]
        elif o.startswith("partial="):
            partial = parse_bool("partial", o.split("=", 1)[1])
        else:
            rest.append(o)
    cfg = compose_task(rest)
    name = cfg.task.name
    task = build_task(cfg.task)
    rows = read_predictions(predictions)
    record = record_beside(predictions)
    check_task(rows, name, predictions, record)
    ids = [str(r["id"]) for r in rows]
    if data_dir:
        if data_dir != "hub" and not os.path.isdir(data_dir):
            raise FileNotFoundError(f"data_dir='{data_dir}' is not a folder (or use data_dir=hub)")
        split = task.splits(None if data_dir == "hub" else data_dir)["test"]
        test = {e.id: e for e in split}
        if len(test) != len(split):
            raise UserError(f"{name}'s test split repeats ids ({len(split)} examples, {len(test)} distinct ids), "
                            "so a file cannot be matched to it by id")
        total = check_coverage(ids, list(test), name, predictions, partial)
        examples = [test[i] for i in ids]
    else:
        size = ((record[1].get("split_sizes") or {}).get("test") if record else None)
        size = size if isinstance(size, int) and not isinstance(size, bool) else None
        total = check_coverage(ids, None, name, predictions, partial, size, f"its record {record[0]}" if record else "")
        examples = []
        for n, r in enumerate(rows, 1):
            refs = references_of(r, predictions, n)
            examples.append(Example(id=str(r["id"]), query=str(r.get("query", "")), response=refs[0] if refs else "",
                                    references=refs, label=r.get("label")))
    metrics = task.score([str(r["prediction"] or "") for r in rows], examples)
    if partial:
        metrics = {**metrics, "partial": total is None or len(ids) < total, "n": len(ids), "total": total}
    return metrics


def predictions_of(record: dict) -> list[dict] | None:
    """The rows of the predictions file beside a run record (`record["_path"]`, as runners/aggregate.py `scan`
    gives it); None without the file. Read once per file version: a table's notes and tests each ask."""
    path = record.get("_path", "")
    path = path[: -len(".json")] + PREDICTIONS_SUFFIX if path.endswith(".json") else ""
    if not os.path.isfile(path):
        return None
    return _read_cached(path, os.stat(path).st_mtime_ns)


@functools.lru_cache(maxsize=4096)
def _read_cached(path: str, mtime_ns: int) -> list[dict]:
    return read_predictions(path)


def example_scores(record: dict, metric: str = "acc") -> dict[str, float] | None:
    """{example id: `metric` of that test example alone} (accuracy: 100 or 0) from the predictions file beside
    a run record (`record["_path"]`, as runners/aggregate.py `scan` gives it), scored by the record's task
    with its recorded task config; None without the file, or when the task gives no `metric` per example."""
    from omegaconf import OmegaConf

    from tasks.base import Example
    from tasks.registry import TASKS

    rows = predictions_of(record)
    if rows is None:
        return None
    path = record["_path"][: -len(".json")] + PREDICTIONS_SUFFIX
    entry = TASKS.get(record["task"])
    fields = set(OmegaConf.structured(entry.schema))
    task = entry.obj(OmegaConf.merge(OmegaConf.structured(entry.schema),
                                     {k: v for k, v in (record.get("config") or {}).get("task", {}).items() if k in fields}))
    out = {}
    for n, r in enumerate(rows, 1):
        refs = references_of(r, path, n)
        example = Example(id=str(r["id"]), query="", response=refs[0] if refs else "", references=refs,
                          label=r.get("label"))
        metrics = task.score([str(r["prediction"] or "")], [example])
        if metric not in metrics:
            return None
        out[str(r["id"])] = float(metrics[metric])
    return out


def main(argv: list[str]) -> None:
    predictions = None
    overrides = []
    for a in argv:
        if a.startswith("predictions="):
            predictions = a.split("=", 1)[1]
        elif "=" not in a:
            raise UserError(f"argument '{a}' is not key=value; usage: python -m runners.score task=<name> "
                            "predictions=<file.jsonl> [data_dir=<folder>|hub] [partial=true]")
        else:
            overrides.append(a)
    if not predictions:
        raise UserError("predictions= is required: a .jsonl file with id, prediction, reference per line")
    print(json.dumps(score_file(overrides, predictions)))


if __name__ == "__main__":
    from core.errors import exit_on_user_error

    exit_on_user_error(main, sys.argv[1:])
