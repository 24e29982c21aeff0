"""Benchmark tasks: registry/config parity, Appendix D templates, split rules and metrics on the small
fixtures in tests/fixtures/<task>/ (original formats), split sizes on ../shared/data where present
(compared with iapt.txt Table 5), and runners/score.py.

    .venv/bin/python -m pytest tests/test_tasks.py -q
"""

from __future__ import annotations

import glob
import json
import logging
import os
import subprocess
import sys

os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

import pytest  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from tasks import metrics  # noqa: E402
from tasks.common import CARVED, PAPER, carve_from_validation  # noqa: E402
from tasks.registry import TASKS, build_task  # noqa: E402
from tests.conftest import ROOT, compose, shared_data  # noqa: E402

FIX = os.path.join(ROOT, "tests", "fixtures")


def make(name: str, **over):
    """A task with its default (schema) config plus overrides."""
    entry = TASKS.get(name)
    cfg = OmegaConf.structured(entry.schema)
    for k, v in over.items():
        cfg[k] = v
    return entry.obj(cfg)


# (task, fixture folder, config overrides, expected train/dev/test sizes, first training query, its response)
CASES = [
    ("rte", "rte", {}, (6, 2, 2),
     "sentence 1: The cat sat on the mat.\nsentence 2: A cat is sitting.\n"
     "Are sentence 1 and sentence 2 have entailment relation or not?", "entailment"),
    ("qnli", "qnli", {}, (6, 2, 2),
     "sentence 1: Who wrote the letter?\nsentence 2: The letter was written by Maria.\n"
     "Are sentence 1 and sentence 2 have entailment relation or not?", "entailment"),
    ("sst2", "sst2", {}, (6, 2, 2), "a warm and funny film .\nThe sentiment of the given sentence is:", "positive"),
    ("mnli", "mnli", {}, (6, 2, 2),
     "sentence 1: The band played all night.\nsentence 2: Music was played.\n"
     "Are sentence 1 and sentence 2 have entailment, neutral or contradiction relation?", "entailment"),
    ("mrpc", "mrpc", {}, (6, 2, 2),
     "sentence 1: He said the plan was good .\nsentence 2: The plan is good , he said .\n"
     "Are sentence 1 and sentence 2 equivalent or not?", "equivalent"),
    ("qqp", "qqp", {}, (6, 2, 2),
     "sentence 1: How do I learn Python?\nsentence 2: What is the best way to learn Python?\n"
     "Are sentence 1 and sentence 2 equivalent or not?", "equivalent"),
    ("boolq", "boolq", {}, (6, 2, 2),
     "Reference document:\nSun -- The Sun is the star at the centre of the Solar System.\nQuestion:\nis the sun a star", "yes"),
    ("copa", "copa", {}, (6, 2, 2),
     "Premise:\nThe glass fell.\nChoice 1: It broke.\nChoice 2: It sang.\nQuestion:\nWhat happened as a result?", "1"),
    ("cb", "cb", {}, (6, 2, 2),
     "sentence 1: The band played all night.\nsentence 2: Music was played.\n"
     "Are sentence 1 and sentence 2 have entailment, neutral or contradiction relation?", "entailment"),
    ("multirc", "multirc", {}, (8, 2, 2),
     "Reference document:\n<b>Sent 1: </b>Lena has two cats.<br><b>Sent 2: </b>Both cats are black.<br>\n"
     "Question:\nHow many cats does Lena have?\nCandidate answer: Two\nIs the candidate answer correct?", "yes"),
    ("record", "record", {}, (6, 2, 2),
     "Context:\nBerlin (CNN) -- Angela visited the Berlin zoo with Max.\n- Angela and Max saw pandas\n"
     "Question:\n@placeholder is the capital of Germany.", "Berlin"),
    ("squad", "squad", {}, (6, 1, 2),
     "Context:\nThe Eiffel Tower is in Paris. It was finished in 1889 and is 330 metres tall.\n"
     "Question:\nWhere is the Eiffel Tower?", "Paris"),
    ("e2e", "e2e", {}, (6, 2, 2),
     "Reference:\nname[The Mill], eatType[pub], area[riverside]\nGenerate a customer review following the given reference.",
     "The Mill is a pub by the riverside."),
    ("e2e", "e2e_lora", {}, (6, 2, 2),
     "Reference:\nname : The Mill | Type : pub | area : riverside\nGenerate a customer review following the given reference.",
     "The Mill is a pub by the riverside ."),
    ("gsm8k", "gsm8k", {"dev_size": 2}, (4, 2, 3),
     "Answer the following math question:\nTom has 3 apples and buys 4 more. How many apples does he have?\n"
     "Instruction: please think step by step.", "Tom has 3 + 4 = <<3+4=7>>7 apples.\n#### 7"),
    ("wikisql", "wikisql", {}, (5, 2, 3),
     "Answer the following query by writing a SQL query on the given table:\n"
     "What position does the player from butler cc (ks) play?\nTable information:\n"
     'table "table", columns: "Player" (text), "No." (real), "Position" (text), "School/Club Team" (text).',
     "SELECT \"Position\" FROM \"table\" WHERE \"School/Club Team\" = 'Butler CC (KS)'"),
    ("imdb", "imdb", {"source": "imdb"}, (6, 2, 2),
     "A moving story with great acting. Loved it.\nThe sentiment of the given sentence is:", "positive"),
    ("alpaca", "alpaca", {"dev_size": 2, "mt_bench_dir": os.path.join(FIX, "mt_bench")}, (4, 2, 4),
     "Give a synonym of word number 0.\nword 0", "Synonym 0."),
    ("ultrachat", "ultrachat", {"dev_fraction": 0.2, "mt_bench_dir": os.path.join(FIX, "mt_bench")}, (5, 1, 4),
     "Tell me fact 0.", "Fact 0 is true."),
    ("mmlu", "mmlu", {"source": "mmlu"}, (0, 2, 3),
     "What orbits the Earth?\nA. The Moon\nB. Mars\nC. The Sun\nD. Venus\nAnswer:", "A"),
]
IDS = [f"{c[0]}-{c[1]}" for c in CASES]
_SPLITS: dict[str, dict] = {}


def fixture_splits(case) -> tuple:
    name, folder, over = case[:3]
    key = f"{name}-{folder}"
    if key not in _SPLITS:
        task = make(name, **over)
        _SPLITS[key] = (task, task.splits(os.path.join(FIX, folder)))
    return _SPLITS[key]


# --- registry / config parity --------------------------------------------------------------------
def test_registered_tasks_equal_conf_files():
    stems = {os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(ROOT, "conf", "task", "*.yaml"))}
    assert set(TASKS.names()) == stems, f"registered only: {set(TASKS.names()) - stems}; yaml only: {stems - set(TASKS.names())}"
    covered = {c[0] for c in CASES} | {"synth-compare", "mixture"}  # mixture: tests/test_mixture.py (its members' files)
    assert covered == stems, f"tasks without a fixture test: {stems - covered}"


def test_every_task_config_composes_and_comments_its_values():
    for path in sorted(glob.glob(os.path.join(ROOT, "conf", "task", "*.yaml"))):
        stem = os.path.splitext(os.path.basename(path))[0]
        cfg = compose(f"task={stem}")
        assert type(build_task(cfg.task)).__name__, stem
        with open(path) as f:
            lines = [ln for ln in f if ln.strip() and not ln.lstrip().startswith(("#", "-", "defaults:"))]
        bare = [ln.strip() for ln in lines if "#" not in ln]
        assert not bare, f"{path}: values without a comment on their effect: {bare}"


def test_unknown_task_option_fails_at_composition():
    with pytest.raises(Exception, match="carve_from_validation"):
        compose("task=rte", "task.carve_from_validation=true")


def test_classification_label_words():
    from tasks.glue import GLUE_LABELS

    for name in ("sst2", "rte", "qnli", "mnli", "mrpc", "qqp"):
        cls = TASKS.get(name).obj
        assert cls.labels == [cls.words[n] for n in GLUE_LABELS[cls.hub_config]], name
    assert TASKS.get("rte").obj.labels == ["entailment", "not entailment"]
    assert TASKS.get("sst2").obj.labels == ["negative", "positive"]
    assert TASKS.get("boolq").obj.labels == ["no", "yes"]
    assert TASKS.get("copa").obj.labels == ["1", "2"]


# --- per task, on the fixtures ---------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_template_and_split_sizes(case):
    task, splits = fixture_splits(case)
    sizes, query, response = case[3], case[4], case[5]
    assert tuple(len(splits[k]) for k in ("train", "dev", "test")) == sizes
    first = splits["train"][0] if splits["train"] else splits["dev"][0]
    assert first.query == query
    assert first.response == response
    assert task.protocol.startswith((PAPER, "zero-shot")), task.protocol
    for split in splits.values():
        assert len({e.id for e in split}) == len(split), "example ids must be unique within a split"


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_perfect_scores_100_and_garbage_scores_0(case):
    task, splits = fixture_splits(case)
    test = [e for e in splits["test"] if any(e.references)]
    assert test, "the fixture's test split needs references"
    perfect = task.score([e.references[-1] for e in test], test)
    main = next(iter(perfect))
    assert perfect[main] == pytest.approx(100.0), perfect
    for bad in ("", "zzz )( ;DROP TABLE x", "\n\n"):
        assert task.score([bad] * len(test), test)[main] == pytest.approx(0.0), (bad, main)
    assert task.score([], [])[main] == 0.0


def test_carving_is_opt_in_and_recorded(tmp_path):
    only_val = tmp_path / "BoolQ"
    only_val.mkdir()
    (only_val / "val.jsonl").write_text(open(os.path.join(FIX, "boolq", "val.jsonl")).read() * 3)
    with pytest.raises(FileNotFoundError, match="train.jsonl"):
        make("boolq").splits(str(only_val))
    task = make("boolq", carve_from_validation=True)
    s = task.splits(str(only_val))
    assert task.protocol == CARVED and "NOT the papers' protocol" in task.protocol
    assert (len(s["train"]), len(s["dev"]), len(s["test"])) == (5, 1, 6)
    # the carved test half is exactly Appendix C's test half of the same validation set
    from tasks.base import appendix_c_split

    val = list(range(12))
    assert carve_from_validation(val, 42)[2] == appendix_c_split([], val, 42)[2]
    assert sorted(sum(carve_from_validation(val, 42), [])) == val


def test_transfer_uses_source_train_and_own_test():
    imdb = make("imdb", source_data_dir=os.path.join(FIX, "sst2"))
    s = imdb.splits(os.path.join(FIX, "imdb"))
    assert s["train"][0].query == "a warm and funny film .\nThe sentiment of the given sentence is:"
    assert s["test"][0].id.startswith("test_") and "zero-shot transfer" in imdb.protocol
    sst2 = make("sst2", source="imdb", source_data_dir=os.path.join(FIX, "imdb"))
    s = sst2.splits(os.path.join(FIX, "sst2"))
    assert s["train"][0].id.startswith("train_") and s["test"][0].query.endswith("is:")
    with pytest.raises(ValueError, match="source_data_dir"):
        make("mrpc", source="qqp").splits(os.path.join(FIX, "mrpc"))
    with pytest.raises(ValueError, match="valid: mrpc, qqp"):
        make("mrpc", source="rte").splits(os.path.join(FIX, "mrpc"))
    mrpc = make("mrpc", source="qqp", source_data_dir=os.path.join(FIX, "qqp"))
    assert mrpc.splits(os.path.join(FIX, "mrpc"))["train"][0].query.startswith("sentence 1: How do I learn Python?")


def test_e2e_references_grouped_per_meaning_representation():
    task, splits = fixture_splits(CASES[IDS.index("e2e-e2e")])
    zizzi = splits["test"][1]
    assert len(zizzi.references) == 3 and zizzi.response == "Zizzi is cheap."
    assert task.score(["You can eat cheaply at Zizzi."], [zizzi])["rouge-l"] == pytest.approx(100.0)
    flat = make("e2e", group_references=False).splits(os.path.join(FIX, "e2e"))
    assert len(flat["test"]) == 4 and all(len(e.references) == 3 for e in flat["test"][1:])
    with pytest.raises(FileNotFoundError, match="trainset.csv"):
        make("e2e", local_format="csv").splits(os.path.join(FIX, "e2e_lora"))


def test_wikisql_local_without_tables_says_what_is_missing(tmp_path):
    for f in ("dev.jsonl", "test.jsonl"):
        (tmp_path / f).write_text(open(os.path.join(FIX, "wikisql", f)).read())
    with pytest.raises(FileNotFoundError, match=r"train.jsonl, train.tables.jsonl, dev.tables.jsonl, test.tables.jsonl"):
        make("wikisql").splits(str(tmp_path))
    from tasks.base import Example

    with pytest.raises(ValueError, match="needs each question's table"):
        make("wikisql").score(["SELECT 1"], [Example(id="x", query="", response="SELECT 1")])


def test_mt_bench_references_and_judge(monkeypatch, caplog):
    from tasks import instruct

    task, splits = fixture_splits(CASES[IDS.index("alpaca-alpaca")])
    test = splits["test"]
    assert [e.id for e in test] == ["mt-bench-81", "mt-bench-82", "mt-bench-83", "mt-bench-84"]
    assert test[0].query == "Question 0: writing?" and test[1].references == ["The answer to 82 is forty two."]
    monkeypatch.delenv("HARNESS_JUDGE_URL", raising=False)
    with caplog.at_level(logging.WARNING):
        out = task.score(["x"] * 4, test)
    assert set(out) == {"rouge-l"} and "judge skipped" in caplog.text
    prompts = []

    def fake_judge(url, model, key, prompt, timeout=300):
        prompts.append(prompt)
        return "Review ... Assistant 1: 8/10. Assistant 2 scores 6 out of 10."

    monkeypatch.setattr(instruct, "call_judge", fake_judge)
    monkeypatch.setenv("HARNESS_JUDGE_URL", "http://127.0.0.1:9/v1")
    out = task.score(["ours"] * 4, test)
    assert next(iter(out)) == "rouge-l" and out["gpt4-score"] == 8.0 and out["gpt4-score-baseline"] == 6.0
    assert out["judged"] == 2.0  # only the questions with a GPT-4 answer to compare against
    assert prompts[0].startswith("Task Introduction\nyou will be given a query") and "Response 2 from assistant 2:\n" in prompts[0]
    assert instruct.parse_judge_scores("no numbers") is None


# --- metrics -------------------------------------------------------------------------------------
def test_squad_metric_official_normalization():
    out = metrics.squad_f1_em(["The Eiffel  tower!", "in 1889"], [["Eiffel Tower"], ["1889", "in 1889"]])
    assert out == {"f1-em": 100.0, "f1": 100.0, "em": 100.0}
    out = metrics.squad_f1_em(["Paris France"], [["Paris"]])
    assert out["em"] == 0.0 and out["f1"] == pytest.approx(100 * 2 / 3)


def test_rouge_l_takes_best_reference():
    assert metrics.rouge_l(["the cat sat"], [["a dog", "the cat sat"]])["rouge-l"] == pytest.approx(100.0)
    assert 0 < metrics.rouge_l(["the cat"], [["the cat sat"]])["rouge-l"] < 100


def test_gsm8k_numbers():
    gold = [["steps\n#### 1,000"]]
    assert metrics.gsm8k_accuracy(["so 1000 hens"], gold)["acc"] == 100.0
    assert metrics.gsm8k_accuracy(["#### 1,000.0"], gold)["acc"] == 100.0
    assert metrics.gsm8k_accuracy(["it is 1000, no wait 999"], gold)["acc"] == 0.0
    assert metrics.gsm8k_accuracy(["-3 degrees"], [["#### -3"]])["acc"] == 100.0
    assert metrics.gsm8k_accuracy(["no number"], gold)["acc"] == 0.0
    assert metrics.gsm8k_gold("no marker") is None


def test_wikisql_execution_accuracy_on_a_fixture_table():
    table = json.loads(open(os.path.join(FIX, "wikisql", "test.tables.jsonl")).readline())
    gold = "SELECT \"Player\" FROM \"table\" WHERE \"No.\" > 10"
    ok = [
        gold,
        "select player from \"table\" where \"No.\" > 10.0;",  # same result, different text
        "SELECT \"Player\" FROM \"table\" WHERE \"School/Club Team\" = 'duke'",  # case-insensitive, same rows
    ]
    wrong = ["", "SELECT", "SELECT \"Position\" FROM \"table\"", "DROP TABLE \"table\"", "SELECT 1; SELECT 2",
             "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c", "garbage )(", None]
    for p in ok:
        assert metrics.execution_accuracy([p], [gold], [table])["acc"] == 100.0, p
    for p in wrong:
        assert metrics.execution_accuracy([p], [gold], [table])["acc"] == 0.0, p
    count = "SELECT COUNT(\"Player\") FROM \"table\" WHERE \"School/Club Team\" = 'Duke'"
    assert metrics.execution_accuracy(["SELECT 2"], [count], [table])["acc"] == 100.0  # results, not text


def test_acc_f1_and_multirc_em():
    out = metrics.acc_f1(["yes", "no", "maybe"], [["yes"], ["yes"], ["no"]], ["no", "yes"])
    assert out["acc"] == pytest.approx(100 / 3) and out["acc-f1"] == pytest.approx((out["acc"] + out["f1"]) / 2)
    from tasks.base import Example

    gold = {"0-0-0": "yes", "0-0-1": "no", "0-1-2": "yes", "0-1-3": "no"}  # 2 questions x 2 answer options
    test = [Example(id=i, query="", response=g) for i, g in gold.items()]
    out = make("multirc").score(["yes", "no", "yes", "yes"], test)  # question 0-1 has one option wrong
    assert out["em"] == 50.0 and out["f1a"] == pytest.approx(100 * 2 * 2 / (2 * 2 + 1)) and out["acc"] == 75.0


# --- ../shared/data: split sizes next to iapt.txt Table 5 --------------------------------------------
SHARED = [  # task, folder under ../shared/data, overrides, expected (train, dev, test); Table 5 in the comment
    ("rte", "glue/RTE", {}, (2490, 138, 139)),  # 2.5k / 0.1k / 0.1k
    ("sst2", "glue/SST-2", {}, (66349, 1000, 872)),  # 66k / 1k / 0.8k
    ("mrpc", "glue/MRPC", {}, (3668, 204, 204)),  # id-spam.txt: 3,668 train / 408 dev
    ("qnli", "glue/QNLI", {"carve_from_validation": True}, (2185, 546, 2732)),  # 104k / 1k / 5.4k (no local train)
    ("boolq", "superglue/BoolQ", {"carve_from_validation": True}, (1308, 327, 1635)),  # 9.4k / 1.6k / 1.6k
    ("copa", "superglue/COPA", {"carve_from_validation": True}, (40, 10, 50)),  # 0.4k / 0.05k / 0.05k
    ("cb", "superglue/CB", {}, (250, 28, 28)),  # id-spam.txt: 250 train / 56 val
    ("multirc", "superglue/MultiRC", {"carve_from_validation": True}, (1939, 485, 2424)),
    ("squad", "squad", {"carve_from_validation": True}, (4228, 1057, 5285)),  # 87k / 1k / 5.9k (no local train)
    ("e2e", "e2e", {}, (42061, 547, 630)),  # 42k / 4.6k / 4.6k references (547 / 630 distinct MRs)
    ("e2e", "e2e", {"group_references": False}, (42061, 4672, 4693)),
    ("gsm8k", "gsm8k", {}, (6973, 500, 1319)),  # 7K / 0.5K / 1K
    ("imdb", "imdb", {"source": "imdb"}, (24000, 1000, 25000)),  # id-spam.txt SST-2 -> IMDB test: 25k
]


@pytest.mark.parametrize("case", SHARED, ids=[f"{c[0]}-{c[1]}-{len(c[2])}" for c in SHARED])
def test_shared_data_split_sizes(case):
    name, folder, over, expected = case
    task = make(name, **over)
    s = task.splits(shared_data(*folder.split("/")))
    assert (len(s["train"]), len(s["dev"]), len(s["test"])) == expected
    assert task.protocol == (CARVED if over.get("carve_from_validation") else PAPER)


def test_shared_mt_bench_and_wikisql():
    from tasks.instruct import mt_bench_examples

    test = mt_bench_examples(shared_data("mt_bench"))
    assert len(test) == 80 and sum(bool(e.references[0]) for e in test) == 30
    with pytest.raises(FileNotFoundError, match="tables"):
        make("wikisql").splits(shared_data("wikisql"))


# --- runners/score.py ------------------------------------------------------------------------------
def test_score_cli_perfect_file_and_lookup_by_id(tmp_path, capsys):
    from runners.score import main

    rows = [{"id": "a", "prediction": "Paris", "reference": ["Paris", "in Paris"]},
            {"id": "b", "prediction": "1889", "reference": "1889"}]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    main(["task=squad", f"predictions={path}"])
    assert json.loads(capsys.readouterr().out) == {"f1-em": 100.0, "f1": 100.0, "em": 100.0}
    _, splits = fixture_splits(CASES[0])
    path.write_text("".join(json.dumps({"id": e.id, "prediction": e.response, "reference": "ignored"}) + "\n"
                            for e in splits["test"]))
    main(["task=rte", f"predictions={path}", f"data_dir={os.path.join(FIX, 'rte')}"])
    assert json.loads(capsys.readouterr().out)["acc"] == 100.0


def test_score_cli_bad_input_exits_2_with_one_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": "a", "prediction": "x", "reference": "x"}\n')
    run = subprocess.run([sys.executable, "-m", "runners.score", "task=sqad", f"predictions={path}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown task 'sqad'" in lines[0] and "squad" in lines[0] and "valid:" in lines[0]
    from core.errors import exit_on_user_error
    from runners.score import main

    path.write_text('{"id": "a", "prediction": "x", "reference": 3}\n')
    with pytest.raises(SystemExit) as e:
        exit_on_user_error(main, ["task=squad", f"predictions={path}"])
    assert e.value.code == 2


# --- hub row shapes (the hub is unreachable here: load_hub is replaced by rows of the hub's schema) -----
HUB_ROWS = {
    ("nyu-mll/glue", "mnli"): {"train": [{"premise": "p", "hypothesis": "h", "label": 2, "idx": 0}],
                               "validation_matched": [{"premise": "p", "hypothesis": "h", "label": 1, "idx": 5}]},
    ("aps/super_glue", "multirc"): {s: [{"paragraph": "P", "question": "Q", "answer": "A", "label": 1,
                                         "idx": {"paragraph": 0, "question": 1, "answer": 2}}] for s in ("train", "validation")},
    ("aps/super_glue", "record"): {s: [{"passage": "P", "query": "@placeholder won.", "entities": ["X"], "entity_spans": {},
                                        "answers": ["X", "X"], "idx": {"passage": 3, "query": 4}}] for s in ("train", "validation")},
    ("rajpurkar/squad", "plain_text"): {s: [{"id": "q", "title": "t", "context": "C", "question": "Q",
                                             "answers": {"text": ["a", "a"], "answer_start": [0, 0]}}] for s in ("train", "validation")},
    ("tuetschek/e2e_nlg", None): {s: [{"meaning_representation": "name[X]", "human_reference": "X."}] for s in ("train", "validation", "test")},
    ("Salesforce/wikisql", None): {s: [{"phase": 1, "question": "Who?", "table": {"header": ["A", "B"], "types": ["text", "real"],
                                        "rows": [["x", "1"]], "id": "t1", "name": "n", "page_title": "", "page_id": "",
                                        "section_title": "", "caption": ""},
                                        "sql": {"human_readable": "", "sel": 0, "agg": 0,
                                                "conds": {"column_index": [1], "operator_index": [0], "condition": ["1"]}}}]
                                   for s in ("train", "validation", "test")},
    ("cais/mmlu", "all"): {s: [{"question": "Q?", "subject": "law", "choices": ["a", "b", "c", "d"], "answer": 3}]
                           for s in ("validation", "test")},
    ("HuggingFaceH4/ultrachat_200k", None): {"train_sft": [{"prompt": "hi", "prompt_id": "p", "messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}] * 3},
}


def test_hub_rows_become_examples(monkeypatch):
    def fake_load_hub(repo, config=None, splits=None):
        rows = HUB_ROWS[(repo, config)]
        return {s: rows[s] for s in (splits or rows)}

    for module in ("glue", "superglue", "squad", "e2e", "wikisql", "instruct"):
        monkeypatch.setattr(f"tasks.{module}.load_hub", fake_load_hub)
    got = {}
    for name in ("mnli", "multirc", "record", "squad", "e2e", "wikisql", "mmlu"):
        task = make(name, **({"source": "mmlu"} if name == "mmlu" else {}))
        raw = task.load_raw(None)
        got[name] = [task.to_example(r, i) for i, r in enumerate(raw[next(iter(raw))])][0]
    assert (got["mnli"].response, got["mnli"].id) == ("contradiction", "0")
    assert (got["multirc"].id, got["multirc"].response) == ("0-1-2", "yes")
    assert (got["record"].id, got["record"].references) == ("3-4", ["X"])
    assert got["squad"].references == ["a"] and got["e2e"].query.startswith("Reference:\nname[X]")
    assert got["wikisql"].response == 'SELECT "A" FROM "table" WHERE "B" = 1'
    assert make("wikisql").score([got["wikisql"].response], [got["wikisql"]])["acc"] == 100.0
    assert got["mmlu"].query.endswith("D. d\nAnswer:") and got["mmlu"].response == "D"
    ultra = make("ultrachat").train_dev(None)
    assert ultra["train"][0].query == "hi" and ultra["train"][0].response == "hello"
