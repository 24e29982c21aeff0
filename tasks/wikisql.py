"""WikiSQL (iapt.txt C.5): question + table schema -> SQL; execution accuracy against the gold query.

Hub `Salesforce/wikisql` (its Parquet export, tables included), or the original release files via
`data_dir=`: {train,dev,test}.jsonl (questions + structured SQL) AND {train,dev,test}.tables.jsonl
(the tables). Splits are WikiSQL's own train/dev/test. The gold structured SQL is rendered as SQLite
over a table named "table" (identifiers double-quoted); scoring builds each question's table in an
in-memory SQLite DB and counts a prediction right iff it executes and returns the gold result.

    python run.py task=wikisql
    python run.py task=wikisql data_dir=path/to/WikiSQL/data   # needs the *.tables.jsonl files
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from tasks.base import DataError, Example, MissingDataFile, TaskConfig
from tasks.common import BenchTask, load_hub, load_local
from tasks.metrics import execution_accuracy, to_number
from tasks.registry import register_task

AGG_OPS = ["", "MAX", "MIN", "COUNT", "SUM", "AVG"]
COND_OPS = ["=", ">", "<", "OP"]
SPLIT_FILES = {"train": "train", "validation": "dev", "test": "test"}


@dataclass
class SqlExample(Example):
    table: dict | None = None  # {'id', 'header', 'types', 'rows'}: needed by the execution metric


def quote_ident(name: str) -> str:
    return '"' + str(name).replace('"', '""') + '"'


def sql_literal(value, kind: str) -> str:
    if kind == "real":
        number = value if isinstance(value, (int, float)) else to_number(str(value))
        if number is not None:
            return repr(float(number)) if float(number) != int(float(number)) else str(int(float(number)))
    return "'" + str(value).replace("'", "''") + "'"


def render_sql(sql: dict, table: dict) -> str:
    """WikiSQL's structured query {'sel', 'agg', 'conds': [[col, op, value], ...]} as executable SQLite."""
    header, types = table["header"], table.get("types") or ["text"] * len(table["header"])
    col = quote_ident(header[sql["sel"]])
    agg = AGG_OPS[sql["agg"]]
    out = f'SELECT {f"{agg}({col})" if agg else col} FROM "table"'
    conds = [f"{quote_ident(header[c])} {COND_OPS[o]} {sql_literal(v, types[c])}" for c, o, v in sql["conds"]]
    return out + (" WHERE " + " AND ".join(conds) if conds else "")


def table_info(table: dict) -> str:
    """The prompt's [table_info]: table name and typed columns."""
    types = table.get("types") or ["text"] * len(table["header"])
    return 'table "table", columns: ' + ", ".join(f"{quote_ident(h)} ({t})" for h, t in zip(table["header"], types))


@dataclass
class WikisqlConfig(TaskConfig):
    name: str = "wikisql"
    local_dir: str | None = "wikisql"  # its original files under data_root (../shared/data layout)
    max_new_tokens: int = 96  # one SELECT with a few conditions
    # inherited split_seed is unused: WikiSQL keeps its own train/dev/test


@register_task("wikisql", WikisqlConfig)
class Wikisql(BenchTask):
    hub_id = "Salesforce/wikisql"

    def load_raw(self, data_dir):
        """Rows {'question', 'table': {...}, 'sql': {'sel', 'agg', 'conds': [[c, o, v], ...]}} per split."""
        if data_dir is None:
            raw = load_hub(self.hub_id, None, tuple(SPLIT_FILES))
            return {s: [self.from_hub(r) for r in rows] for s, rows in raw.items()}
        needed = [f"{n}{ext}" for n in SPLIT_FILES.values() for ext in (".jsonl", ".tables.jsonl")]
        missing = [f for f in needed if not os.path.exists(os.path.join(data_dir, f))]
        if missing:
            present = sorted(os.listdir(data_dir)) if os.path.isdir(data_dir) else []
            raise MissingDataFile(
                f"data_dir='{data_dir}' lacks {', '.join(missing)}: WikiSQL needs every split's questions AND "
                f"tables (the prompt's table information and execution accuracy); found: "
                f"{', '.join(present) or 'nothing'}. Use the original release (salesforce/WikiSQL data.tar.bz2) "
                "or the hub (leave data_dir unset)"
            )
        out = {}
        for split, stem in SPLIT_FILES.items():
            rows = load_local("json", {split: os.path.join(data_dir, f"{stem}.jsonl")})[split]
            tables = load_local("json", {split: os.path.join(data_dir, f"{stem}.tables.jsonl")})[split]
            by_id = {t["id"]: t for t in tables}
            lost = sorted({r["table_id"] for r in rows} - set(by_id))
            if lost:
                raise DataError(f"{stem}.tables.jsonl lacks {len(lost)} table(s) its questions use, e.g. {lost[0]}")
            out[split] = [{"question": r["question"], "table": by_id[r["table_id"]], "sql": r["sql"]} for r in rows]
        return out

    @staticmethod
    def from_hub(r: dict) -> dict:
        c = r["sql"]["conds"]
        conds = [list(x) for x in zip(c["column_index"], c["operator_index"], c["condition"])]
        return {"question": r["question"], "table": r["table"],
                "sql": {"sel": r["sql"]["sel"], "agg": r["sql"]["agg"], "conds": conds}}

    def to_example(self, row, idx):
        table = {k: row["table"][k] for k in ("header", "types", "rows") if k in row["table"]}
        table["id"] = row["table"].get("id", "")
        query = (
            "Answer the following query by writing a SQL query on the given table:\n"
            f"{row['question']}\nTable information:\n{table_info(table)}."
        )
        return SqlExample(id=str(idx), query=query, response=render_sql(row["sql"], table), table=table)

    def splits(self, data_dir=None):
        raw = self.load_raw(data_dir)
        out = {}
        for split, key in (("train", "train"), ("validation", "dev"), ("test", "test")):
            out[key] = [self.to_example(r, f"{SPLIT_FILES[split]}-{i}") for i, r in enumerate(raw[split])]
        return out

    def score(self, predictions, examples):
        tables = [getattr(e, "table", None) for e in examples]
        if any(t is None for t in tables):
            raise ValueError(
                "wikisql execution accuracy needs each question's table: score examples built by the task "
                "(runners/score.py: pass data_dir= or data_dir=hub)"
            )
        return execution_accuracy(predictions, [e.references[0] for e in examples], tables)
