"""Tests of the training-throughput benchmark (scripts/bench/train.py) on the tiny backbone with real SST-2 rows:
it runs end to end through the harness's own stages and writes a well-formed record, the independent loop
replays exactly the harness LoRA cell's batches, bad options exit 2. No timing is asserted.

    .venv/bin/python -m pytest tests/test_bench_train.py -q
"""

from __future__ import annotations

import json
import os

import pytest

from core.errors import exit_on_user_error
from scripts.bench.__main__ import main
from scripts.bench.options import parse
from tests.conftest import shared_data

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_train_mode_runs_end_to_end(tmp_path):
    shared_data("glue", "SST-2")
    main(["train", "backbone=tiny", "quick=true", "methods=lora,iapt", "tasks=sst2", "dtypes=float32",
          f"out={tmp_path}", "steps=2", "rounds=2", "warmup=1", "loss_positions=labelled,all"])
    res = json.load(open(os.path.join(tmp_path, "train_tiny_quick.json")))
    every = {(c["method"], c["task"], c["dtype"], c["loss_positions"]): c for c in res["cells"]}
    assert set(every) == {(m, "sst2", "float32", p) for m in ("lora", "iapt", "loop") for p in ("labelled", "all")}
    # labelled positions: fewer FLOPs counted in a step (the vocabulary projection of the answer columns only)
    for m in ("lora", "iapt", "loop"):
        assert every[m, "sst2", "float32", "labelled"]["flops_per_step"] < every[m, "sst2", "float32", "all"]["flops_per_step"]
    cells = {k[:3]: c for k, c in every.items() if k[3] == "labelled"}
    for c in cells.values():
        assert len(c["rounds"]) == 2 and all(r["steps"] == 2 for r in c["rounds"]), c["rounds"]
        assert 0 < c["real_tokens_per_step"] and 0 <= c["padding_share"] < 1
        assert c["tokens_per_s"]["median"] > 0 and c["mfu"]["median"] > 0 and c["flops_per_step"] > 0
    # the loop replays the harness LoRA cell's batches: the same real and padded tokens in every round
    assert [(r["real_tokens"], r["padded_tokens"]) for r in cells["loop", "sst2", "float32"]["rounds"]] == \
        [(r["real_tokens"], r["padded_tokens"]) for r in cells["lora", "sst2", "float32"]["rounds"]]
    assert cells["iapt", "sst2", "float32"]["vs_loop"]["n"] == 2
    assert res["peak_flops"]["float32"] > 0
    md = open(os.path.join(tmp_path, "train_tiny_quick.md")).read()
    assert "| sst2 | float32 | labelled | loop |" in md and "| sst2 | float32 | all | loop |" in md and "reference" in md and "Training throughput" in md


@pytest.mark.parametrize("arg, says", [
    ("dtypes=float16", "dtypes: 'float16' is not valid in train mode; valid options: float32, bfloat16"),
    ("tasks=boolq", "tasks: 'boolq' is not valid in train mode; valid options: sst2, rte, mrpc, cb"),
    ("methods=lora,nope", "methods: 'nope' is not valid in train mode"),
    ("steps=0", "steps=0 must be a positive integer"),
    ("loss_positions=some", "loss_positions: 'some' is not valid in train mode; valid options: labelled, all"),
    ("loop=maybe", "loop='maybe' is not valid; valid options: true, false"),
    ("data_root=/nonexistent", "data_root='/nonexistent' is not a folder"),
])
def test_bad_train_options_give_one_line(arg, says, capsys):
    with pytest.raises(SystemExit) as e:
        exit_on_user_error(parse, ["train", "backbone=tiny", arg])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err, err


def test_a_compiled_cell_asks_the_trainer_for_its_own_compile(tmp_path):
    """harness_cell(compile=True) (results/bench/train_compile) sets TrainingArguments.torch_compile and keeps its
    Trainer on the cell; the default builds an eager one. Nothing is trained or compiled here."""
    from scripts.bench.train import harness_cell

    shared_data("glue", "SST-2")
    o = parse(["train", "backbone=tiny", "quick=true", "tasks=sst2", "dtypes=float32"])
    for compile in (False, True):
        cell, _ = harness_cell(o, "lora", "sst2", "float32", "labelled", "cpu", str(tmp_path / str(compile)),
                               compile=compile)
        assert cell.trainer.args.torch_compile is compile
