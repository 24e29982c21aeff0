"""Offline metrics shared by tasks (all in percent). Nothing here downloads anything.

    accuracy(preds, refs)            exact match of normalized labels                   {'acc'}
    acc_f1(preds, refs, labels)      mean of accuracy and macro-F1 (id-spam.txt 3.2)    {'acc-f1', 'acc', 'f1'}
    squad_f1_em(preds, refs)         SQuAD v1.1 official F1/EM, max over gold answers   {'f1-em', 'f1', 'em'}
    rouge_l(preds, refs)             ROUGE-L F1 (rouge_score), max over references      {'rouge-l'}
    gsm8k_accuracy(preds, refs)      last number of the prediction vs the gold '#### n' {'acc'}
    execution_accuracy(preds, golds, tables)  WikiSQL: same SQLite result as the gold  {'acc'}

`refs` is one list of gold strings per prediction. Empty or garbage predictions score 0, never raise.
"""

from __future__ import annotations

import collections
import math
import re
import sqlite3
import string
import time


def normalize_label(text: str) -> str:
    """Lower-case, drop punctuation and surrounding space, keep the first line: 'Entailment.' -> 'entailment'."""
    text = (text or "").strip().split("\n")[0].lower()
    text = text.translate(str.maketrans("", "", string.punctuation.replace("_", "")))
    return re.sub(r"\s+", " ", text).strip()


def _check(predictions, references):
    assert len(predictions) == len(references), f"{len(predictions)} predictions vs {len(references)} references"


def accuracy(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    """Percentage of predictions whose normalized text equals a normalized gold answer."""
    _check(predictions, references)
    if not predictions:
        return {"acc": 0.0}
    hits = sum(normalize_label(p) in {normalize_label(r) for r in refs} for p, refs in zip(predictions, references))
    return {"acc": 100.0 * hits / len(predictions)}


def macro_f1(predictions: list[str], golds: list[str], labels: list[str]) -> float:
    """Macro-averaged F1 (percent) over the `labels` that occur in the golds or the predictions (as
    scikit-learn's default); a prediction that is no label is a miss for its gold class."""
    assert len(predictions) == len(golds), f"{len(predictions)} predictions vs {len(golds)} golds"
    pred = [normalize_label(p) for p in predictions]
    gold = [normalize_label(g) for g in golds]
    seen = set(pred) | set(gold)
    f1s = []
    for lab in (x for x in dict.fromkeys(normalize_label(x) for x in labels) if x in seen):
        tp = sum(p == lab and g == lab for p, g in zip(pred, gold))
        fp = sum(p == lab and g != lab for p, g in zip(pred, gold))
        fn = sum(p != lab and g == lab for p, g in zip(pred, gold))
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return 100.0 * sum(f1s) / len(f1s) if f1s else 0.0


def acc_f1(predictions: list[str], references: list[list[str]], labels: list[str]) -> dict[str, float]:
    """id-spam.txt's score for MRPC/QQP/transfer (and SuperGLUE's for CB): mean of accuracy and macro-F1."""
    _check(predictions, references)
    acc = accuracy(predictions, references)["acc"]
    f1 = macro_f1(predictions, [r[0] for r in references], labels) if predictions else 0.0
    return {"acc-f1": (acc + f1) / 2, "acc": acc, "f1": f1}


# --- SQuAD v1.1 (official evaluate-v1.1.py normalization) -----------------------------------------
def squad_normalize(text: str) -> str:
    """Lower-case, remove punctuation, articles (a/an/the) and extra whitespace."""
    text = (text or "").lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def squad_f1(prediction: str, gold: str) -> float:
    pred, ref = squad_normalize(prediction).split(), squad_normalize(gold).split()
    common = collections.Counter(pred) & collections.Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def squad_f1_em(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    """SQuAD v1.1 / ReCoRD: F1 and exact match, each the max over gold answers; 'f1-em' is their mean."""
    _check(predictions, references)
    if not predictions:
        return {"f1-em": 0.0, "f1": 0.0, "em": 0.0}
    f1 = em = 0.0
    for p, refs in zip(predictions, references):
        f1 += max((squad_f1(p, r) for r in refs), default=0.0)
        em += max((float(squad_normalize(p) == squad_normalize(r)) for r in refs), default=0.0)
    f1, em = 100.0 * f1 / len(predictions), 100.0 * em / len(predictions)
    return {"f1-em": (f1 + em) / 2, "f1": f1, "em": em}


# --- ROUGE-L ----------------------------------------------------------------------------------------
_ROUGE = None


def rouge_l(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    """Mean sentence-level ROUGE-L F-measure (`rouge_score`'s 'rougeL', no stemming: the defaults of the
    HF Evaluate 'rouge' metric cited by iapt.txt C.7), each prediction scored against its best reference."""
    global _ROUGE
    _check(predictions, references)
    if not predictions:
        return {"rouge-l": 0.0}
    if _ROUGE is None:
        from rouge_score import rouge_scorer

        _ROUGE = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    total = 0.0
    for p, refs in zip(predictions, references):
        refs = [r for r in refs if r] or [""]
        total += _ROUGE.score_multi(refs, p or "")["rougeL"].fmeasure
    return {"rouge-l": 100.0 * total / len(predictions)}


# --- GSM8K ------------------------------------------------------------------------------------------
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def to_number(text: str) -> float | None:
    try:
        value = float(text.replace(",", "").rstrip("."))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def gsm8k_gold(answer: str) -> float | None:
    """The number after the final '####' of a GSM8K answer."""
    tail = (answer or "").rsplit("####", 1)[1].split() if "####" in (answer or "") else []
    return to_number(tail[0]) if tail else None


def last_number(text: str) -> float | None:
    """The last number in a free-text prediction ('... #### 1,234' -> 1234.0); None if there is none."""
    found = _NUMBER.findall(text or "")
    for tok in reversed(found):
        value = to_number(tok)
        if value is not None:
            return value
    return None


def gsm8k_accuracy(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    """Percentage of predictions whose last number equals (numerically) the gold final answer."""
    _check(predictions, references)
    if not predictions:
        return {"acc": 0.0}
    hits = 0
    for p, refs in zip(predictions, references):
        gold, pred = gsm8k_gold(refs[0]), last_number(p)
        hits += gold is not None and pred is not None and math.isclose(pred, gold, rel_tol=0, abs_tol=1e-6)
    return {"acc": 100.0 * hits / len(predictions)}


# --- WikiSQL execution accuracy ----------------------------------------------------------------------
def _sqlite_value(value, kind: str):
    if kind == "real":
        number = to_number(str(value)) if not isinstance(value, (int, float)) else float(value)
        return number if number is not None else str(value)
    return str(value)


def build_table(table: dict) -> sqlite3.Connection:
    """An in-memory, read-only SQLite DB holding one WikiSQL table named "table".

    `table` has 'header' (column names), 'types' ('text'/'real') and 'rows'. Text columns compare
    case-insensitively (WikiSQL's own evaluator lower-cases text values). Queries go through run_sql,
    which allows reads only."""
    header, types, rows = table["header"], table.get("types") or ["text"] * len(table["header"]), table["rows"]
    assert len(header) == len(types), f"table has {len(header)} columns but {len(types)} types"
    conn = sqlite3.connect(":memory:")
    cols = ", ".join(
        f'"{h.replace(chr(34), chr(34) * 2)}" ' + ("REAL" if t == "real" else "TEXT COLLATE NOCASE")
        for h, t in zip(header, types)
    )
    conn.execute(f'CREATE TABLE "table" ({cols})')
    marks = ", ".join("?" * len(header))
    conn.executemany(
        f'INSERT INTO "table" VALUES ({marks})', [[_sqlite_value(v, t) for v, t in zip(r, types)] for r in rows]
    )
    conn.commit()
    conn.execute("PRAGMA query_only = ON")  # a predicted DROP/DELETE/UPDATE cannot alter the table
    return conn


# What a query may do (sqlite3.Connection.set_authorizer): read. Everything else (ATTACH/DETACH, which
# would create a database file at any writable path, PRAGMA, writes, schema changes, transactions) is denied.
_READ_ONLY = frozenset(  # SQLITE_RECURSIVE: WITH RECURSIVE (a read; bounded by run_sql's budget and deadline)
    getattr(sqlite3, name) for name in ("SQLITE_SELECT", "SQLITE_READ", "SQLITE_FUNCTION", "SQLITE_RECURSIVE")
    if hasattr(sqlite3, name)
)
MAX_VALUE_BYTES = 1_000_000  # longest string/blob a query may build (randomblob(1e9) is one slow opcode)


def _authorize(action, *_):
    return sqlite3.SQLITE_OK if action in _READ_ONLY else sqlite3.SQLITE_DENY


def run_sql(conn: sqlite3.Connection, sql: str, max_steps: int = 2_000_000, timeout_s: float = 2.0):
    """Sorted result rows of one read-only statement, or None if it does not parse/execute, is not a read
    (ATTACH, PRAGMA, writes: denied), or runs past `max_steps` VM operations or `timeout_s` wall seconds."""
    sql = (sql or "").strip().rstrip(";").strip()
    if not sql:
        return None
    steps = [0]
    deadline = time.monotonic() + timeout_s

    def budget():
        steps[0] += 1
        return steps[0] > max_steps // 1000 or time.monotonic() > deadline  # non-zero aborts the query

    length = conn.getlimit(sqlite3.SQLITE_LIMIT_LENGTH) if hasattr(conn, "getlimit") else None
    if length is not None:
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)
    conn.set_progress_handler(budget, 1000)
    conn.set_authorizer(_authorize)
    try:
        rows = conn.execute(sql).fetchall()
    except Exception:  # any SQL error, non-SQL text, several statements, a denied or interrupted query: wrong
        return None
    finally:
        conn.set_authorizer(None)
        conn.set_progress_handler(None, 1000)
        if length is not None:
            conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, length)

    def norm(v):
        if isinstance(v, float):
            return round(v, 6)
        if isinstance(v, str):
            n = to_number(v)
            return round(n, 6) if n is not None else v.strip().lower()
        return v

    return sorted((tuple(norm(v) for v in r) for r in rows), key=repr)


def execution_accuracy(predictions: list[str], golds: list[str], tables: list[dict], max_steps: int = 2_000_000,
                       timeout_s: float = 2.0) -> dict[str, float]:
    """WikiSQL (iapt.txt C.7): a prediction is correct iff it executes and returns the gold query's result.
    Each query gets `max_steps` VM operations and `timeout_s` wall seconds (see run_sql)."""
    assert len(predictions) == len(golds) == len(tables), "predictions, gold queries and tables differ in length"
    if not predictions:
        return {"acc": 0.0}
    hits = 0
    for pred, gold, table in zip(predictions, golds, tables):
        conn = build_table(table)
        try:
            want = run_sql(conn, gold, max_steps, timeout_s)
            assert want is not None, f"gold SQL does not execute on its table: {gold!r}"
            hits += run_sql(conn, pred, max_steps, timeout_s) == want
        finally:
            conn.close()
    return {"acc": 100.0 * hits / len(predictions)}
