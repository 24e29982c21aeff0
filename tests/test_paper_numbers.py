"""The papers' reported numbers in results/paper/*.csv match the papers' texts cell by cell.

Each CSV (``<paper>_table<N>.csv``, columns paper,table,row,column,value,text) holds one table of one
paper in long form. The test finds that table in ../shared/papers/<paper>.txt (the block of table
lines right above the line ``Table N: ...``), turns it into a grid and asserts, for every CSV row,
that the grid cell at (row, column) is exactly ``text``; that ``value`` is the number in ``text``; and
that every numeric cell of the paper's table is in the CSV (nothing left out). See
results/paper/README.md for the conventions (row labels, headers, OCR fixes).
"""

from __future__ import annotations

import csv
import functools
import glob
import math
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER_DIR = os.path.abspath(os.path.join(ROOT, "..", "shared", "papers"))
RESULTS = os.path.join(ROOT, "results", "paper")
COLUMNS = ["paper", "table", "row", "column", "value", "text"]
PAPER_FILES = {"iapt": "iapt.txt", "parade": "parade.txt", "para": "para.txt", "idspam": "id-spam.txt"}

# How each covered table is laid out in the text.
#   header_rows: how many lines make the header (markdown |---| lines are not counted);
#   header_join: " / " for a two-level header, " " for one header wrapped over two lines;
#   key_cols:    how many leading columns name a row (joined with " / " into the CSV's `row`);
#   key_fixes:   {data-row index: {column index: text}} for label cells the text extraction lost
#                (never used on a number that the CSV records);
#   rows:        "method" (default) when the row labels name methods (names.csv must list them).
TABLES: dict[tuple[str, int], dict] = {
    ("iapt", 1): {},
    ("iapt", 2): {},
    ("iapt", 3): {},
    ("iapt", 4): {"key_cols": 2},
    ("iapt", 6): {},
    ("iapt", 7): {},
    ("iapt", 8): {},
    ("parade", 1): {"header_rows": 2, "header_join": " "},
    ("parade", 2): {},
    ("parade", 3): {},
    # OCR lost the "1" in the Beam size cell of the first PARADE row (beam sizes alternate 1, 3).
    ("parade", 4): {"key_cols": 2, "key_fixes": {4: {1: "1"}}},
    ("parade", 6): {"header_rows": 2, "header_join": " "},
    ("parade", 7): {},
    ("para", 2): {},
    ("para", 3): {"header_rows": 2, "header_join": " / "},
    ("para", 4): {"key_cols": 2},
    ("para", 5): {},
    ("idspam", 2): {},
    ("idspam", 3): {},
    ("idspam", 4): {},
    ("idspam", 5): {},
    ("idspam", 6): {},
    ("idspam", 8): {},
    ("idspam", 9): {},
    ("idspam", 10): {},
    ("idspam", 11): {"key_cols": 3},
    # appendix D/E: trainable parameters, timing and LoRA's training loss (rows are not all methods)
    ("idspam", 12): {"rows": "backbone"},
    ("idspam", 13): {"rows": "backbone"},
    ("idspam", 14): {"key_cols": 2},
    ("idspam", 15): {},
    ("idspam", 16): {"rows": "epoch"},
}

# Tables deliberately not in results/paper (not numeric results of methods).
NOT_COVERED = {
    ("iapt", 5): "dataset statistics",
    ("iapt", 9): "a qualitative example (text answers), one GPT-4 score per answer",
    ("parade", 5): "dataset statistics",
    ("parade", 8): "a qualitative example (text answers)",
    ("para", 1): "dataset statistics",
    ("idspam", 1): "dataset statistics",
    ("idspam", 7): "hyper-parameter search grid",
}

# OCR damage to method names in parade.txt, mapped back to the name the paper prints elsewhere.
# Applied to label cells only; numbers are always compared verbatim.
LABEL_ALIASES = {
    "parade": {"PĀRĀDĒ": "PARADE", "LOKA": "LoRA", "(IA)°": "(IA) ³"},
}

_SUP = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")


def norm(cell: str) -> str:
    """A cell as the CSVs write it: HTML markup dropped (<sup>3</sup> -> ³), whitespace collapsed."""
    cell = re.sub(r"<sup>\s*(\d+)\s*</sup>", lambda m: m.group(1).translate(_SUP), cell)
    cell = re.sub(r"</?[a-zA-Z][^>]*>", "", cell)
    return " ".join(cell.split())


_NUM = re.compile(r"(\d+(?:,\d{3})*(?:\.\d+)?)\s*([KMB](?![A-Za-z]))?(?![\d.,])")
_SCALE = {None: 1.0, "K": 1e3, "M": 1e6, "B": 1e9}


def number(text: str) -> float | None:
    """The number a cell reports: the first one in it (before a ±/subscript stddev), K/M/B scaled."""
    m = _NUM.search(text)
    return None if m is None else float(m.group(1).replace(",", "")) * _SCALE[m.group(2)]


def split_cells(line: str) -> list[str]:
    if line.lstrip().startswith("|"):
        body = line.strip()
        body = body[1:-1] if body.endswith("|") and len(body) > 1 else body[1:]
        return body.split("|")
    return line.split("\t")


def _is_table_line(line: str) -> bool:
    return "\t" in line or line.lstrip().startswith("|")


def _is_md_rule(line: str) -> bool:
    return bool(re.fullmatch(r"\s*\|?[\s|:-]*-[\s|:-]*\|?\s*", line))


@functools.cache
def paper_lines(paper: str) -> tuple[str, ...]:
    path = os.path.join(PAPER_DIR, PAPER_FILES[paper])
    if not os.path.exists(path):
        pytest.skip(f"paper text not present: {path}")
    with open(path, encoding="utf-8") as f:
        return tuple(f.read().split("\n"))


def caption(paper: str, table: int) -> tuple[int, str]:
    lines = paper_lines(paper)
    hits = [i for i, ln in enumerate(lines) if re.match(rf"Table {table}:", ln)]
    assert len(hits) == 1, f"{paper}: expected one caption line 'Table {table}:', found {len(hits)}"
    return hits[0], lines[hits[0]]


def table_block(paper: str, table: int) -> list[str]:
    """The table lines right above the caption of `table` (blank lines between are skipped)."""
    lines = paper_lines(paper)
    i = caption(paper, table)[0] - 1
    while i >= 0 and not lines[i].strip():
        i -= 1
    end = i + 1
    while i >= 0 and lines[i].strip() and _is_table_line(lines[i]):
        i -= 1
    block = list(lines[i + 1 : end])
    assert block, f"{paper} Table {table}: no table lines above its caption"
    return block


class Grid:
    """A paper table: cells[(row label, column header)] = (position, cell text).

    A row is registered under its label and, below a section line (e.g. "Results for GPT-2 large"),
    also under "section / label"; a label used twice in one table is ambiguous unless qualified.
    """

    def __init__(self, paper: str, table: int):
        spec = TABLES[(paper, table)]
        header_rows = spec.get("header_rows", 1)
        join = spec.get("header_join", " / ")
        key_cols = spec.get("key_cols", 1)
        fixes = spec.get("key_fixes", {})
        aliases = LABEL_ALIASES.get(paper, {})
        rows = [split_cells(ln) for ln in table_block(paper, table) if not _is_md_rule(ln)]
        head, body = rows[:header_rows], rows[header_rows:]
        width = max(len(r) for r in rows)
        self.headers = [
            join.join(p for p in (norm(h[j]) if j < len(h) else "" for h in head) if p)
            for j in range(width)
        ]
        self.rows: dict[str, dict[str, tuple[tuple[int, int], str]] | None] = {}
        self.numeric: set[tuple[int, int]] = set()  # positions of every cell holding a digit
        section, prev_keys = "", [""] * key_cols
        for r, raw in enumerate(body):
            cells = [norm(c) for c in raw] + [""] * (width - len(raw))
            for j, fix in fixes.get(r, {}).items():
                assert not cells[j], f"{paper} T{table} key_fix on a non-empty cell {cells[j]!r}"
                cells[j] = fix
            keys, values = cells[:key_cols], cells[key_cols:]
            if key_cols == 1 and (not keys[0] or not any(values)):
                section = " ".join(c for c in cells if c)  # a section line, not a data row
                continue
            if key_cols > 1 and not keys[0]:
                keys[0] = prev_keys[0]  # continuation line: the method named on the line above
            prev_keys = keys
            label = " / ".join(aliases.get(k, k) for k in keys)
            entry = {
                self.headers[j]: ((r, j), cells[j]) for j in range(key_cols, width) if self.headers[j]
            }
            self.numeric |= {pos for pos, txt in entry.values() if re.search(r"\d", txt)}
            for name in [label] + ([f"{section} / {label}"] if section else []):
                self.rows[name] = None if name in self.rows else entry

    def cell(self, row: str, column: str) -> tuple[tuple[int, int], str]:
        if row not in self.rows:
            raise KeyError(f"no row {row!r}; rows: {sorted(k for k in self.rows)}")
        entry = self.rows[row]
        if entry is None:
            raise KeyError(f"row label {row!r} is ambiguous here; qualify it with its section")
        if column not in entry:
            raise KeyError(f"no column {column!r}; columns: {list(entry)}")
        return entry[column]


@functools.cache
def grid(paper: str, table: int) -> Grid:
    return Grid(paper, table)


def check_rows(paper: str, table: int, rows: list[dict]) -> list[str]:
    """Every problem with these CSV rows against the paper's table (empty when all match)."""
    g = grid(paper, table)
    problems, seen = [], {}
    for i, rec in enumerate(rows, start=2):  # line numbers in the CSV file
        where = f"{paper}_table{table}.csv line {i} ({rec['row']!r}, {rec['column']!r})"
        if rec["paper"] != paper or rec["table"] != str(table):
            problems.append(f"{where}: paper/table {rec['paper']!r}/{rec['table']!r}")
            continue
        try:
            pos, text = g.cell(rec["row"], rec["column"])
        except KeyError as e:
            problems.append(f"{where}: {e.args[0]}")
            continue
        if text != rec["text"]:
            problems.append(f"{where}: text {rec['text']!r} but the paper's cell is {text!r}")
        num = number(rec["text"])
        if num is None:
            if rec["value"] != "":
                problems.append(f"{where}: value {rec['value']!r} for a non-numeric cell")
        elif rec["value"] == "" or not math.isclose(float(rec["value"]), num, rel_tol=1e-9):
            problems.append(f"{where}: value {rec['value']!r} is not the cell's number {num!r}")
        if pos in seen:
            problems.append(f"{where}: the same cell as line {seen[pos]}")
        seen[pos] = i
    missing = g.numeric - set(seen)
    if missing:
        problems.append(f"{paper} Table {table}: {len(missing)} numeric cell(s) not in the CSV, "
                        f"e.g. (data row, column) {sorted(missing)[:5]}")
    return problems


def read_csv(path: str) -> tuple[list[str], list[dict]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def _table_files() -> list[str]:
    return sorted(glob.glob(os.path.join(RESULTS, "*_table*.csv")))


def _key(path: str) -> tuple[str, int]:
    m = re.fullmatch(r"([a-z]+)_table(\d+)\.csv", os.path.basename(path))
    assert m, f"bad file name {path}"
    return m.group(1), int(m.group(2))


def test_every_covered_table_has_a_file():
    assert {_key(p) for p in _table_files()} == set(TABLES)


@pytest.mark.parametrize("path", _table_files(), ids=os.path.basename)
def test_numbers_match_paper(path):
    paper, table = _key(path)
    fields, rows = read_csv(path)
    assert fields == COLUMNS
    assert rows, f"{path} is empty"
    problems = check_rows(paper, table, rows)
    assert not problems, "\n".join(problems)


def test_every_paper_table_is_covered_or_excused():
    """Each 'Table N:' caption of each paper is in TABLES (a CSV) or in NOT_COVERED (with a reason)."""
    for paper in PAPER_FILES:
        found = {int(m.group(1)) for ln in paper_lines(paper) if (m := re.match(r"Table (\d+):", ln))}
        known = {t for p, t in TABLES if p == paper} | {t for p, t in NOT_COVERED if p == paper}
        assert found == known, (paper, sorted(found ^ known))


def test_checker_catches_a_mistyped_number():
    """Corrupting one value, one text, or one column position in memory must be reported."""
    _, rows = read_csv(os.path.join(RESULTS, "iapt_table1.csv"))
    assert check_rows("iapt", 1, rows) == []
    rec = next(r for r in rows if r["row"] == "LoRA" and r["column"] == "RTE (acc)")

    wrong_text = [dict(r) for r in rows]
    i = rows.index(rec)
    wrong_text[i]["text"], wrong_text[i]["value"] = "82.7", "82.7"  # paper says 82.6
    assert any("text '82.7'" in p for p in check_rows("iapt", 1, wrong_text))

    wrong_value = [dict(r) for r in rows]
    wrong_value[i]["value"] = "86.2"
    assert any("is not the cell's number" in p for p in check_rows("iapt", 1, wrong_value))

    # the right number in the wrong column: 86.7 is LoRA's BoolQ, not its RTE
    wrong_col = [dict(r) for r in rows]
    wrong_col[i]["text"], wrong_col[i]["value"] = "86.7", "86.7"
    assert any("but the paper's cell is '82.6'" in p for p in check_rows("iapt", 1, wrong_col))

    # a dropped row is reported as a missing number
    assert any("not in the CSV" in p for p in check_rows("iapt", 1, rows[:-1]))


def test_index():
    fields, rows = read_csv(os.path.join(RESULTS, "index.csv"))
    assert fields == ["paper", "table", "file", "caption", "what"]
    assert {r["file"] for r in rows} == {os.path.basename(p) for p in _table_files()}
    for r in rows:
        assert r["file"] == f"{r['paper']}_table{r['table']}.csv"
        assert r["what"]
        _, line = caption(r["paper"], int(r["table"]))
        text = line[len(f"Table {r['table']}: "):]
        assert text.startswith(r["caption"]), (r["file"], r["caption"], text[:120])
        assert len(r["caption"]) >= 25, r["file"]


def test_names():
    """names.csv: harness names exist in conf/; paper names occur in the tables / the paper."""
    fields, rows = read_csv(os.path.join(RESULTS, "names.csv"))
    assert fields == ["paper", "kind", "paper_name", "harness_name"]
    conf = {k: {os.path.basename(p)[:-5] for p in glob.glob(os.path.join(ROOT, "conf", k, "*.yaml"))}
            for k in ("method", "task")}
    conf["method"] |= {os.path.basename(p)[:-5] for p in glob.glob(os.path.join(ROOT, "conf", "ablation", "*.yaml"))}
    labels: dict[str, set[str]] = {}
    for path in _table_files():
        paper, table = _key(path)
        if TABLES[(paper, table)].get("rows", "method") != "method":
            continue
        for r in read_csv(path)[1]:
            labels.setdefault(paper, set()).update(r["row"].split(" / "))
    seen = set()
    for r in rows:
        key = (r["paper"], r["kind"], r["paper_name"])
        assert key not in seen, key
        seen.add(key)
        assert r["kind"] in conf, r
        if r["harness_name"]:
            assert r["harness_name"].partition(":")[0] in conf[r["kind"]], r  # a task or task:metric
        if r["kind"] == "method":
            assert r["paper_name"] in labels[r["paper"]], r
        else:
            assert r["paper_name"] in "\n".join(paper_lines(r["paper"])), r
    # every method a table reports has a row (row-label parts that are sections, tasks or beam sizes aside)
    named = {(r["paper"], r["paper_name"]) for r in rows}
    for paper, parts in labels.items():
        for part in parts:
            if part.startswith(("Results for ", "GLUE (")) or part.isdigit():
                continue
            assert (paper, part) in named, f"names.csv lacks {paper} {part!r}"
