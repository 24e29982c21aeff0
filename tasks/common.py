"""Shared task plumbing: hub/local loading through `datasets.load_dataset`, the opt-in carving of
train/dev/test out of a validation set, and zero-shot transfer between tasks (id-spam.txt 3.4).

    from tasks.common import BenchTask, load_hub, load_local
    rows = load_hub("aps/super_glue", "boolq")                     # {'train': [...], 'validation': [...]}
    rows = load_local("json", {"validation": path})                  # the same rows from a local file

Nothing here downloads anything unless `load_hub` is called (the hub path, `data_dir` unset).
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass

from core.errors import UserError
from tasks.base import DataError, Task, TaskConfig, appendix_c_split

log = logging.getLogger(__name__)

PAPER = "paper"  # task.protocol when the splits follow iapt.txt Appendix C (or the task's documented rule)
CARVED = "carved-from-validation (NOT the papers' protocol)"


OFFLINE_ERRORS = ("LocalEntryNotFoundError", "OfflineModeIsEnabled", "ConnectionError", "DatasetNotFoundError",
                  "ConnectTimeout", "ReadTimeout", "MaxRetryError", "NameResolutionError")


def _offline(e: BaseException) -> bool:
    """True when `e` (or what caused it) says the hub could not be reached."""
    while e is not None:
        if type(e).__name__ in OFFLINE_ERRORS or "Couldn't reach" in str(e) or "offline mode" in str(e).lower():
            return True
        e = e.__cause__ or e.__context__
    return False


def hub_unreachable(repo: str, e: BaseException) -> UserError:
    return UserError(f"hub dataset '{repo}' cannot be loaded here ({type(e).__name__}: "
                     f"{str(e).strip().splitlines()[0][:160] if str(e).strip() else 'no network'}); pass "
                     "data_dir=<folder with the original files> (../shared/data/README.md lists them), or cache it on "
                     "a networked machine with `python -m scripts.prefetch tasks=<name>` and run with HF_HUB_OFFLINE=1")


def load_hub(repo: str, config: str | None = None, splits: tuple[str, ...] | None = None) -> dict[str, list[dict]]:
    """Rows of a hub dataset, split name -> list of dicts.

    Repositories that still ship a loading script (which datasets>=4 refuses to run) are read from
    the hub's own Parquet export (`refs/convert/parquet`, one folder per config), so every task keeps
    a single `datasets.load_dataset` code path.
    """
    import datasets

    from core.hub import go_offline, hub_reachable

    if not hub_reachable():  # fail (or read the cache) at once instead of after ~90 s of retries
        go_offline()
    try:
        ds = datasets.load_dataset(repo, config)
    except Exception as e:
        script = isinstance(e, RuntimeError) and "scripts are no longer supported" in str(e)
        if not script and not datasets.config.HF_HUB_OFFLINE:
            if _offline(e):
                raise hub_unreachable(repo, e) from None
            raise
        try:  # the Parquet export (also what an offline run finds cached for such a repository)
            ds = datasets.load_dataset(repo, revision="refs/convert/parquet", data_dir=config or "default")
        except Exception as e2:
            if _offline(e2) or _offline(e):
                raise hub_unreachable(repo, e2 if script else e) from None
            if script:
                raise
            raise e from None
    names = splits or tuple(ds)
    missing = [s for s in names if s not in ds]
    if missing:
        raise DataError(f"hub dataset '{repo}' ({config}) has no split {missing}; it has {sorted(ds)}")
    return {s: [dict(r) for r in ds[s]] for s in names}


def _blank(path: str) -> bool:
    """True for an existing file with nothing but whitespace in it."""
    if not os.path.isfile(path):
        return False
    with open(path, "rb") as f:
        return not any(chunk.strip() for chunk in iter(lambda: f.read(1 << 16), b""))


def not_utf8(path: str, split: str) -> UserError | None:
    """The first line of `path` that is not UTF-8, as one line naming the file, line, column and byte;
    None if the file decodes."""
    with open(path, "rb") as f:
        for n, line in enumerate(f, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as e:
                return UserError(f"data file '{path}' ({split}) line {n} is not UTF-8 (byte 0x{line[e.start]:02x} "
                                 f"at column {e.start + 1}); re-encode the file as UTF-8, e.g. iconv -f latin1 -t utf-8")
    return None


def load_local(builder: str, files: dict[str, str], **kwargs) -> dict[str, list[dict]]:
    """Rows of local files through a packaged `datasets` builder (csv, json, text), one split at a time
    (so splits whose files have different columns, like MNLI's train/dev TSVs, load cleanly)."""
    import datasets

    out = {}
    for split, path in files.items():
        try:
            ds = datasets.load_dataset(builder, data_files={split: path}, **kwargs)
        except Exception as e:  # DatasetGenerationError hides the cause (empty file, ragged rows) in a chain
            cause = e
            while cause.__cause__ is not None or cause.__context__ is not None:
                cause = cause.__cause__ or cause.__context__
            msg = str(cause).strip().splitlines()[0][:200] if str(cause).strip() else type(cause).__name__
            if isinstance(cause, UnicodeDecodeError) and (bad := not_utf8(path, split)):
                raise bad from None
            if "corresponds to no data" in msg or _blank(path):
                raise UserError(f"data file '{path}' ({split}) has no data rows") from None
            how = f" with delimiter {kwargs['delimiter']!r}" if kwargs.get("delimiter") else ""
            raise UserError(f"data file '{path}' ({split}) cannot be read as {builder}{how} "
                            f"({type(cause).__name__}: {msg})") from None
        if not len(ds[split]):
            raise UserError(f"data file '{path}' ({split}) has no rows")
        out[split] = [dict(r) for r in ds[split]]
    return out


class BadLabel(UserError):
    """A label outside a task's label set (`label_name`); the loaders add the file and line."""


def label_name(value, names: list[str]) -> str:
    """A label as its text: an integer (or '0'/'1' string, or a bool for two classes) indexes `names`;
    text must be one of `names`. Anything else raises `BadLabel` naming the value and the valid labels."""
    if isinstance(value, bool):
        if len(names) == 2:
            return names[int(value)]
    elif isinstance(value, int) or (isinstance(value, float) and value.is_integer()) or (
            isinstance(value, str) and value.strip().lstrip("-").isdigit()):
        if 0 <= int(value) < len(names):
            return names[int(value)]
    elif isinstance(value, str) and value.strip() in names:
        return value.strip()
    raise BadLabel(f"label {value!r} is not one of {', '.join(names)} (or their class ids 0-{len(names) - 1})")


def data_line(path: str, row: int, header: bool = False) -> int | None:
    """1-based line number of data row `row` (0-based) of a one-row-per-line file (JSONL, a TSV read
    without quoting), blank lines skipped as the readers skip them; None if the file has fewer rows."""
    with open(path, encoding="utf-8-sig") as f:
        seen = -1 if header else 0
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            if seen == row:
                return n
            seen += 1
    return None


def row_error(path: str, split: str, row: int, msg: str, header: bool = False) -> UserError:
    """`msg` about data row `row` (0-based) of `path` as one line naming the file and the line."""
    n = data_line(path, row, header)
    return UserError(f"data file '{path}' ({split}) {f'line {n}' if n else f'row {row + 1}'}: {msg}")


def tsv_problem(path: str, split: str, label_column: str | None = None,
                names: list[str] | None = None) -> UserError | None:
    """The first short row (fewer tab-separated fields than the header) or bad label of a TSV read
    without quoting (one row per line), as a one-line error naming the file and line; None if clean."""
    if bad := not_utf8(path, split):
        return bad
    with open(path, encoding="utf-8-sig") as f:
        header = f.readline().rstrip("\r\n").split("\t")
        col = header.index(label_column) if label_column in header and names else None
        for n, line in enumerate(f, start=2):
            line = line.rstrip("\r\n")
            if not line:
                continue
            fields = line.split("\t")
            if len(fields) < len(header):
                return UserError(
                    f"data file '{path}' ({split}) line {n} has {len(fields)} of the {len(header)} tab-separated "
                    f"fields of its header ({', '.join(header)}); missing: {', '.join(header[len(fields):])}")
            if col is not None:
                try:
                    label_name(fields[col], names)
                except BadLabel as e:
                    return UserError(f"data file '{path}' ({split}) line {n}: {e}")
    return None


def check_fields(rows: list[dict], path: str, split: str, task: str, fields: tuple[str, ...],
                 labels: list[str] | None = None) -> None:
    """Flat JSONL rows: every field in `fields` present (the json reader fills a missing key with
    None) and, with `labels`, a valid 'label'; the first bad row is one line naming file and line."""
    for i, r in enumerate(rows):
        absent = [f for f in fields if r.get(f) is None]
        if absent:
            raise row_error(path, split, i, f"no {', '.join(repr(f) for f in absent)} (a {task} row needs "
                                            f"{', '.join(fields)})")
        if labels is not None:
            try:
                label_name(r["label"], labels)
            except BadLabel as e:
                raise row_error(path, split, i, str(e)) from None


def check_splits(task: str, splits: dict, why: str, may_be_empty: tuple[str, ...] = ()) -> dict:
    """`splits` unchanged, or one line naming the task, the first empty split and why (`why`)."""
    for name, rows in splits.items():
        if not rows and name not in may_be_empty:
            raise UserError(f"task {task}: the {name} split is empty ({why})")
    return splits


def appendix_c_rule(n_train: int, n_val: int, small_threshold: int = 10_000) -> str:
    """What iapt.txt Appendix C does with these sizes (the `why` of an empty split)."""
    if n_train < small_threshold:
        return (f"iapt.txt Appendix C: {n_train} training rows (< {small_threshold}), so the {n_val}-row "
                "validation set is halved into dev and test; it needs at least 2 rows")
    return f"iapt.txt Appendix C: 1000 of the {n_train} training rows are dev, the {n_val}-row validation set is test"


def carve_from_validation(val: list, seed: int, dev_fraction: float = 0.2) -> tuple[list, list, list]:
    """(train, dev, test) all taken from the original validation set, for local data without a train split.

    test is exactly the half that Appendix C's small-task rule makes the test set (same seed, same
    shuffle); the other half is divided into train (1 - dev_fraction) and dev (dev_fraction).
    NOT the papers' protocol: the task records `protocol = CARVED` and the flag sits in the config.
    """
    if not 0 < dev_fraction < 1:
        raise DataError(f"task.carve_dev_fraction={dev_fraction} must be in (0, 1)")
    rng = random.Random(seed)
    order = list(range(len(val)))
    rng.shuffle(order)
    half = len(val) // 2
    rest, test = order[:half], sorted(order[half:])
    n_dev = max(1, round(len(rest) * dev_fraction)) if rest else 0
    dev, train = sorted(rest[:n_dev]), sorted(rest[n_dev:])
    return [val[i] for i in train], [val[i] for i in dev], [val[i] for i in test]


@dataclass
class CarveConfig(TaskConfig):
    """Config fields of tasks whose local copy may lack a train split (see ../shared/data/README.md)."""

    carve_from_validation: bool = False  # opt-in: carve train/dev/test out of validation (NOT the papers' protocol)
    carve_dev_fraction: float = 0.2  # share of the non-test half of validation used as dev when carving


class BenchTask(Task):
    """A benchmark task: Appendix C splits, or carving when `cfg.carve_from_validation` is set.

    After `splits()`, `self.protocol` says which rule made them (PAPER or CARVED); a runner should store
    it with the results so carved numbers are never mistaken for the papers' protocol.
    """

    hub_id: str = ""  # the hub dataset (for docs and scripts/prefetch.py)

    def __init__(self, cfg):
        super().__init__(cfg)
        self.protocol = PAPER

    @property
    def carving(self) -> bool:
        return bool(getattr(self.cfg, "carve_from_validation", False))

    def raw_splits(self) -> tuple[str, ...]:
        """Original splits `load_raw` must return: no train split when carving from validation."""
        return ("validation",) if self.carving else ("train", "validation")

    def paper_split(self, train: list, val: list) -> tuple[list, list, list]:
        """iapt.txt Appendix C (tasks with their own rule, e.g. GSM8K, E2E, WikiSQL, override `splits`)."""
        return appendix_c_split(train, val, self.cfg.split_seed, self.small_threshold)

    def train_dev(self, data_dir: str | None = None) -> dict:
        """Just the train and dev splits (what a transfer target takes from its source task)."""
        out = self.splits(data_dir)
        return {"train": out["train"], "dev": out["dev"]}

    def splits(self, data_dir: str | None = None):
        raw = self.load_raw(data_dir)
        val = [self.to_example(r, i) for i, r in enumerate(raw["validation"])]
        if self.carving:
            self.protocol = CARVED
            log.warning("task %s: train/dev/test carved from the validation set: %s", self.cfg.name, CARVED)
            train, dev, test = carve_from_validation(val, self.cfg.split_seed, self.cfg.carve_dev_fraction)
            why = (f"carving {len(val)} validation rows: test takes half, dev task.carve_dev_fraction="
                   f"{self.cfg.carve_dev_fraction} of the rest (at least 1 row), train what remains")
        else:
            self.protocol = PAPER
            train = [self.to_example(r, i) for i, r in enumerate(raw.get("train", []))]
            why = appendix_c_rule(len(train), len(val), self.small_threshold)
            train, dev, test = self.paper_split(train, val)
        return check_splits(self.cfg.name, {"train": train, "dev": dev, "test": test}, why)


def transfer_splits(task: Task, data_dir: str | None, own_splits) -> dict:
    """Zero-shot transfer (id-spam.txt 3.4): train/dev of `task.cfg.source`, test of `task` itself.

    `own_splits(data_dir)` gives the task's own splits; the source task is built with the same
    template and split seed and reads its local files from `task.cfg.source_data_dir`.
    """
    from omegaconf import OmegaConf

    from tasks.registry import TASKS

    cfg = task.cfg
    source = getattr(cfg, "source", None) or cfg.name
    if source == cfg.name:
        return own_splits(data_dir)
    allowed = getattr(task, "transfer_sources", ())
    if source not in allowed:
        raise DataError(f"task.source='{source}' is not a transfer source of {cfg.name}; valid: {', '.join((cfg.name, *allowed))}")
    if data_dir is not None and getattr(cfg, "source_data_dir", None) is None:
        raise DataError(
            f"task {cfg.name} with source={source} reads local files: set task.source_data_dir= to the "
            f"folder of {source}'s files (data_dir= is {cfg.name}'s own folder)"
        )
    entry = TASKS.get(source)
    src_cfg = OmegaConf.structured(entry.schema)
    src_cfg.template, src_cfg.split_seed = cfg.template, cfg.split_seed
    if "source" in src_cfg:
        src_cfg.source = source  # the source trains on itself (IMDB's default source is SST-2)
    src = entry.obj(src_cfg)
    src_dir = getattr(cfg, "source_data_dir", None) if data_dir is not None else None
    src_splits = src.train_dev(src_dir) if hasattr(src, "train_dev") else src.splits(src_dir)
    own = own_splits(data_dir)
    task.protocol = f"zero-shot transfer: trained on {source}, tested on {cfg.name}"
    return {"train": src_splits["train"], "dev": src_splits["dev"], "test": own["test"]}
