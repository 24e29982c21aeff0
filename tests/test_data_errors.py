"""Bad data input is one line (a UserError or FileNotFoundError: exit code 2, no traceback) naming the file,
the line and what was expected, raised before any model is loaded; over-long examples are truncated with one
warning that counts them (issue #10, data input).

    .venv/bin/python -m pytest tests/test_data_errors.py -q
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys

os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

import pytest  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from core.errors import UserError, one_line  # noqa: E402
from tasks.registry import TASKS  # noqa: E402
from tests.conftest import ROOT, compose  # noqa: E402

FIX = os.path.join(ROOT, "tests", "fixtures")


def make(name: str, **over):
    entry = TASKS.get(name)
    cfg = OmegaConf.structured(entry.schema)
    for k, v in over.items():
        cfg[k] = v
    return entry.obj(cfg)


def copy_fixture(tmp_path, folder: str):
    dest = tmp_path / folder
    shutil.copytree(os.path.join(FIX, folder), dest)
    return dest


def append(path, text: str):
    with open(path, "a") as f:
        f.write(text)


def one_line_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg.strip(), msg
    return msg


# --- 1. a label outside the task's label set ------------------------------------------------------
BAD_LABELS = [  # task, fixture folder, file, appended row, bad value as printed, valid labels as printed
    ("sst2", "sst2", "train.tsv", "a bad film .\t7\n", "'7'", "negative, positive (or their class ids 0-1)"),
    ("rte", "rte", "train.tsv", "9\tA man.\tA woman.\tmaybe\n", "'maybe'",
     "entailment, not_entailment (or their class ids 0-1)"),
    ("mrpc", "mrpc", "train.tsv", "2\t1\t2\tA.\tB.\n", "'2'", "not_equivalent, equivalent (or their class ids 0-1)"),
    ("boolq", "boolq", "train.jsonl", '{"question": "q", "passage": "p", "idx": 9, "label": "x"}\n', "'x'",
     "no, yes (or their class ids 0-1)"),
    ("cb", "cb", "train.jsonl", '{"premise": "p", "hypothesis": "h", "idx": 9, "label": "maybe"}\n', "'maybe'",
     "entailment, contradiction, neutral (or their class ids 0-2)"),
    ("imdb", "imdb", "imdb_train.jsonl", '{"id": "x", "text": "t", "label": 2, "rating": 1}\n', "2",
     "negative, positive (or their class ids 0-1)"),
    ("multirc", "multirc", "train.jsonl",
     '{"idx": 9, "passage": {"text": "T", "questions": [{"question": "Q", "idx": 0, '
     '"answers": [{"text": "A", "idx": 0, "label": 3}]}]}}\n', "3", "no, yes (or their class ids 0-1)"),
]


@pytest.mark.parametrize("case", BAD_LABELS, ids=[c[0] for c in BAD_LABELS])
def test_bad_label_names_file_line_value_and_valid_labels(tmp_path, case):
    name, folder, file, row, value, valid = case
    d = copy_fixture(tmp_path, folder)
    path = d / file
    line = sum(1 for ln in open(path) if ln.strip()) + 1
    append(path, row)
    with pytest.raises(UserError) as e:
        make(name, **({"source": "imdb"} if name == "imdb" else {})).splits(str(d))
    assert one_line_error(e) == f"data file '{path}' (train) line {line}: label {value} is not one of {valid}"


def test_bad_label_in_a_long_tsv_is_still_named(tmp_path):
    """Past the csv reader's first chunk a text label breaks the integer column's type: still its line."""
    d = copy_fixture(tmp_path, "sst2")
    rows = "".join(f"film number {i} .\t{i % 2}\n" for i in range(12_000))
    (d / "train.tsv").write_text("sentence\tlabel\n" + rows + "a bad film .\tgood\n")
    with pytest.raises(UserError, match=re.escape(f"'{d / 'train.tsv'}' (train) line 12002: label 'good' is not one "
                                                  "of negative, positive")):
        make("sst2").splits(str(d))


def test_label_name_is_strict():
    from tasks.common import BadLabel, label_name

    assert [label_name(v, ["no", "yes"]) for v in (0, 1, "1", " 0 ", True, False, 1.0, "yes", "no ")] == [
        "no", "yes", "yes", "no", "yes", "no", "yes", "yes", "no"]
    for bad in (2, -1, "2", "maybe", "", None, 0.5, True):
        with pytest.raises(BadLabel, match="is not one of"):
            label_name(bad, ["a", "b", "c"] if bad is True else ["no", "yes"])


# --- 2. a short row -------------------------------------------------------------------------------
def test_short_tsv_row_names_line_and_columns(tmp_path):
    d = copy_fixture(tmp_path, "rte")
    append(d / "train.tsv", "9\tA man.\tA woman.\n")
    with pytest.raises(UserError) as e:
        make("rte").splits(str(d))
    assert one_line_error(e) == (f"data file '{d / 'train.tsv'}' (train) line 8 has 3 of the 4 tab-separated "
                                 "fields of its header (index, sentence1, sentence2, label); missing: label")


def test_short_tsv_row_missing_a_text_column_is_named(tmp_path):
    """MRPC's last column is a sentence, not the label: a short row would otherwise pass with an empty one."""
    d = copy_fixture(tmp_path, "mrpc")
    append(d / "dev.tsv", "1\t7\t8\tOnly one sentence .\n")
    with pytest.raises(UserError, match=re.escape(f"'{d / 'dev.tsv'}' (validation) line 6 has 4 of the 5 "
                                                  "tab-separated fields of its header (Quality, #1 ID, #2 ID, "
                                                  "#1 String, #2 String); missing: #2 String")):
        make("mrpc").splits(str(d))


def test_short_row_in_a_long_tsv(tmp_path):
    d = copy_fixture(tmp_path, "sst2")
    rows = "".join(f"film number {i} .\t{i % 2}\n" for i in range(12_000))
    (d / "train.tsv").write_text("sentence\tlabel\n" + rows + "a film without a label .\n")
    with pytest.raises(UserError, match=r"line 12002 has 1 of the 2 tab-separated fields .*; missing: label$"):
        make("sst2").splits(str(d))


def test_jsonl_row_without_a_field(tmp_path):
    d = copy_fixture(tmp_path, "boolq")
    append(d / "val.jsonl", '{"question": "q", "idx": 9, "label": true}\n')
    with pytest.raises(UserError) as e:
        make("boolq").splits(str(d))
    assert one_line_error(e) == (f"data file '{d / 'val.jsonl'}' (validation) line 5: no 'passage' "
                                 "(a boolq row needs question, passage, label)")


def test_nested_jsonl_row_of_the_wrong_shape(tmp_path):
    d = copy_fixture(tmp_path, "record")
    append(d / "train.jsonl", '{"idx": 9, "passage": {"text": "T"}}\n')
    with pytest.raises(UserError, match=r"train.jsonl' \(train\) line 4: not an original record row "
                                        r"\(no 'source', 'qas'\); expected the nested SuperGLUE .jsonl format"):
        make("record").splits(str(d))


# --- 3. an empty split ----------------------------------------------------------------------------
def test_header_only_and_empty_files(tmp_path):
    d = copy_fixture(tmp_path, "sst2")
    (d / "train.tsv").write_text("sentence\tlabel\n")
    with pytest.raises(UserError) as e:
        make("sst2").splits(str(d))
    assert one_line_error(e) == f"data file '{d / 'train.tsv'}' (train) has no data rows"
    b = copy_fixture(tmp_path, "boolq")
    (b / "val.jsonl").write_text("")
    with pytest.raises(UserError, match=re.escape(f"data file '{b / 'val.jsonl'}' (validation) has no")):
        make("boolq").splits(str(b))


def test_split_emptied_by_the_split_rule_says_why(tmp_path):
    d = copy_fixture(tmp_path, "rte")
    lines = open(d / "dev.tsv").readlines()
    (d / "dev.tsv").write_text("".join(lines[:2]))  # header + 1 row: Appendix C's halving leaves dev empty
    with pytest.raises(UserError) as e:
        make("rte").splits(str(d))
    assert one_line_error(e) == ("task rte: the dev split is empty (iapt.txt Appendix C: 6 training rows (< 10000), "
                                 "so the 1-row validation set is halved into dev and test; it needs at least 2 rows)")
    b = tmp_path / "BoolQ"
    b.mkdir()
    (b / "val.jsonl").write_text("".join(open(os.path.join(FIX, "boolq", "val.jsonl")).readlines()[:3]))
    with pytest.raises(UserError, match=re.escape(
            "task boolq: the train split is empty (carving 3 validation rows: test takes half, dev "
            "task.carve_dev_fraction=0.2 of the rest (at least 1 row), train what remains)")):
        make("boolq", carve_from_validation=True).splits(str(b))


def test_held_out_dev_emptying_train_says_why():
    with pytest.raises(UserError, match=re.escape("task gsm8k: the train split is empty (task.dev_size=500 of the "
                                                  "6 training problems are held out as dev)")):
        make("gsm8k").splits(os.path.join(FIX, "gsm8k"))
    with pytest.raises(UserError, match=re.escape("task ultrachat: the dev split is empty (6 of the 6 conversations "
                                                  "have an assistant answer; task.dev_fraction=0.01")):
        make("ultrachat", mt_bench_dir=os.path.join(FIX, "mt_bench")).splits(os.path.join(FIX, "ultrachat"))


# --- 5. a data_dir without the expected files ------------------------------------------------------
def test_data_dir_without_the_files_names_all_missing(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        make("rte").splits(str(tmp_path))
    assert one_line_error(e) == (f"task rte: data_dir='{tmp_path}' has no 'train.tsv', 'dev.tsv' (expected the "
                                 "original published files); found: nothing")
    (tmp_path / "val.jsonl").write_text("{}\n")
    with pytest.raises(FileNotFoundError, match=re.escape("task boolq: data_dir=") + ".*has no 'train.jsonl' "
                       r"\(expected the original published file\); found: val.jsonl$"):
        make("boolq").splits(str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"has no 'train.tsv', 'dev_mismatched.tsv' .*the folder does not exist"):
        make("mnli", validation="mismatched").splits(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match=r"task imdb: .*has no 'imdb_train.jsonl', 'imdb_test.jsonl'"):
        make("imdb", source="imdb").splits(str(tmp_path))


# --- through the runner: before the model, one line, exit code 2 -----------------------------------
def test_bad_data_fails_before_the_model_is_loaded(tmp_results, tmp_path, monkeypatch):
    import runners.train

    d = copy_fixture(tmp_path, "rte")
    append(d / "train.tsv", "9\tA man.\tA woman.\tmaybe\n")
    monkeypatch.setattr(runners.train, "load_backbone", lambda *a, **k: pytest.fail("loaded a model"))
    with pytest.raises(UserError, match="line 8: label 'maybe' is not one of entailment, not_entailment"):
        runners.train.run(compose("method=lora", "task=rte", f"data_dir={d}", "seed=0"))
    with pytest.raises(FileNotFoundError, match="has no 'train.tsv', 'dev.tsv'"):
        runners.train.run(compose("method=lora", "task=rte", f"data_dir={tmp_path / 'empty'}", "seed=0"))


def test_run_py_prints_one_line_and_exits_2(tmp_path):
    d = copy_fixture(tmp_path, "sst2")
    append(d / "train.tsv", "a bad film .\t7\n")
    env = dict(os.environ, HARNESS_RESULTS=str(tmp_path / "runs"), CI="true")
    cmd = [sys.executable, "run.py", "backbone=tiny", "runner=debug", "logger=none", "print_table=false",
           "method=lora", "task=sst2", f"data_dir={d}", "seed=0"]
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    errors = [ln for ln in run.stderr.splitlines() if ln.startswith("error:")]
    assert errors == [f"error: data file '{d / 'train.tsv'}' (train) line 8: label '7' is not one of negative, "
                      "positive (or their class ids 0-1)"], run.stderr[-2000:]


def test_one_line_keeps_the_whole_message():
    e = UserError("data file 'x' (train) line 3: label 'maybe' is not one of a, b (or their class ids 0-1)")
    assert one_line(e) == f"error: {e}"


# --- 4. over-long sequences: truncated, counted once ------------------------------------------------
def test_truncation_is_counted_in_one_warning(caplog):
    from runners.backbones import byte_tokenizer
    from runners.data import encode_train, prompt_batches
    from tasks.base import format_example

    tok = byte_tokenizer()  # the tiny backbone's tokenizer: one token per byte
    examples = make("sst2").splits(os.path.join(FIX, "sst2"))["train"]
    lengths = sorted(sum(map(len, format_example(tok, e.query, e.response, "llama2"))) for e in examples)
    max_len = lengths[len(lengths) // 2]  # a tiny runner.max_seq_len that cuts some of them
    long = sum(n > max_len for n in lengths)
    assert 0 < long < len(examples)
    with caplog.at_level(logging.WARNING, logger="runners.data"):
        rows = encode_train(examples, tok, "llama2", max_len, what="sst2 train")
    assert all(len(r["input_ids"]) <= max_len for r in rows)
    assert all(r["input_ids"][0] == tok.bos_token_id for r in rows), "the prompt keeps its first token"
    assert all(r["labels"][-1] == tok.eos_token_id for r in rows), "the response is kept whole"
    warnings = [r.getMessage() for r in caplog.records if r.name == "runners.data"]
    assert warnings == [f"sst2 train: {long} of {len(examples)} examples longer than max_seq_len={max_len} tokens "
                        "were truncated (the prompt is cut from the left, keeping its first token)"]

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="runners.data"):
        encode_train(examples, tok, "plain", 4, what="sst2 dev")
    assert caplog.records[-1].getMessage().endswith(
        f"{len(examples)} also lost response tokens from the right)")

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="runners.data"):
        rows = encode_train(examples, tok, "llama2", 4096, what="sst2 train")
        batches = list(prompt_batches(examples, tok, "llama2", 50, batch_size=4, what="sst2 test"))
    assert sum(len(idx) for *_, idx in batches) == len(examples) and all(ids.shape[1] <= 50 for ids, *_ in batches)
    warnings = [r.getMessage() for r in caplog.records if r.name == "runners.data"]
    assert warnings == [f"sst2 test: {len(examples)} of {len(examples)} prompts longer than 50 tokens "
                        "(runner.max_seq_len minus task.max_new_tokens) were cut from the left, keeping their "
                        "first token"]


def test_a_run_with_a_tiny_max_seq_len_reports_truncation_once_per_split(tmp_results, caplog):
    from runners.train import run

    cfg = compose("method=lora", "task=sst2", f"data_dir={os.path.join(FIX, 'sst2')}", "runner.max_seq_len=48",
                  "runner.max_steps=2", "runner.eval_steps=1", "runner.zero_shot=false", "seed=0")
    with caplog.at_level(logging.WARNING, logger="runners.data"):
        rec = run(cfg)
    assert rec["status"] == "ok"
    warnings = [r.getMessage() for r in caplog.records if r.name == "runners.data"]
    # llama2 prompts of the fixture are all longer than 48 bytes: train (6) and dev (2) rows, then the dev and the
    # test prompts (2 each) for generation, each warning naming its task and split
    assert warnings[:2] == [f"sst2 {split}: {n} of {n} examples longer than max_seq_len=48 tokens were truncated (the "
                            "prompt is cut from the left, keeping its first token)"
                            for split, n in (("train", 6), ("dev", 2))], warnings
    assert warnings[2:] == [f"sst2 {split} generation: 2 of 2 prompts longer than 44 tokens (runner.max_seq_len minus "
                            "task.max_new_tokens) were cut from the left, keeping their first token"
                            for split in ("dev", "test")], warnings
