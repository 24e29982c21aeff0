"""The Mean column of a paper table and the paper's numbers per backbone (runners/tables.py): the mean of
the task medians from small hand-made records, and the two-backbone tables' sections against the papers'
texts."""

from __future__ import annotations

import math
import os
import re
from dataclasses import replace

import pytest
from omegaconf import OmegaConf

from runners.tables import MEAN, TableSpec, paper_numbers, render, section_backbone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPERS = os.path.abspath(os.path.join(ROOT, "..", "shared", "papers"))

SCORES = {  # (task, cell) -> per-seed accuracy; parade has no rte result
    ("sst2", "iapt"): [80.0, 82.0, 90.0],
    ("sst2", "lora"): [85.0, 87.0, 88.0],
    ("sst2", "parade"): [70.0, 71.0, 72.0],
    ("rte", "iapt"): [60.0, 61.0, 62.0],
    ("rte", "lora"): [55.0, 65.0],  # only two seeds
}
RECORDS = [{"backbone": "smollm2-135m", "task": t, "cell": c, "seed": s, "metrics": {"acc": v}}
           for (t, c), vals in SCORES.items() for s, v in enumerate(vals)]
SPEC = TableSpec(paper="iapt", table=1, tasks=["sst2", "rte"], cells=["lora", "parade", "iapt"], proposed="iapt")


def _lines(md: str) -> dict[str, str]:
    return {line.split(" | ")[0].strip("| "): line for line in md.splitlines() if line.startswith("| ")}


def test_mean_of_task_medians_with_paper_mean_marks_and_missing():
    df, md = render(SPEC, RECORDS, [], {("sst2", "lora"): 86.0, (MEAN, "lora"): 72.0, (MEAN, "parade"): 70.0})
    mean = df[df.task == MEAN].set_index("cell")
    assert mean.loc["lora", "median"] == pytest.approx((87.0 + 60.0) / 2), "lora: sst2 median 87, rte median 60"
    assert mean.loc["iapt", "median"] == pytest.approx((82.0 + 61.0) / 2)
    assert mean.loc["lora", "paper"] == 72.0 and mean.loc["lora", "diff"] == pytest.approx(1.5)
    assert (mean.loc["lora", "n"], mean.loc["lora", "seeds"]) == (2, "0,1"), "fewest seeds; seeds with every task"
    assert math.isnan(mean.loc["parade", "median"]) and mean.loc["parade", "problems"] == "no result for rte"
    # paired on per-seed means over the tasks, seeds 0 and 1: lora 70, 76 vs iapt 70, 71.5
    assert mean.loc["lora", "vs_n_pairs"] == 2 and mean.loc["lora", "vs_mean_diff"] == pytest.approx(2.25)
    head = next(line for line in md.splitlines() if line.startswith("| method"))
    assert head == "| method | sst2 | rte | mean |"
    lines = _lines(md)
    assert lines["lora"].endswith("| **73.5** (of 2 task medians); paper 72.0 (+1.5); vs iapt +2.2 [-26.3, 30.8] p=1.00 |")
    assert lines["iapt"].endswith("| <u>71.5</u> (of 2 task medians) |"), "second best underlined, no paper Mean"
    assert lines["parade"].endswith("| missing (no result for rte); paper 70.0 |")
    assert "mean: the mean of the cell's task medians" in md


def test_mean_of_averages_the_named_columns_only():
    """mean_of (the CPU Table 1: its single tasks, not the mixture): the Mean averages those columns alone,
    and a cell is not missing for lacking another column; a mean_of that names no column is one line."""
    from core.errors import UserError
    from runners.tables import columns

    spec = replace(SPEC, mean=True, mean_of=["sst2"])
    df, md = render(spec, RECORDS, [])
    mean = df[df.task == MEAN].set_index("cell")
    assert mean.loc["parade", "median"] == pytest.approx(71.0), "parade lacks rte, which the Mean leaves out"
    assert mean.loc["lora", "median"] == pytest.approx(87.0) and "(of 1 task medians)" in md
    assert "mean: the mean of the cell's task medians over sst2 " in md
    cfg = OmegaConf.create({"columns": None, "mean_of": ["sst2", "mixture"]})
    with pytest.raises(UserError, match=r"mean_of \['mixture'\] names no column of the table; its columns: sst2, rte"):
        columns(cfg, ["sst2", "rte"])


def test_mean_column_follows_the_paper_unless_the_spec_says():
    df, md = render(SPEC, RECORDS, [], {("sst2", "lora"): 86.0})
    assert MEAN not in set(df.task) and "| mean |" not in md, "no paper Mean: no column by default"
    df, md = render(replace(SPEC, mean=True), RECORDS, [])
    assert set(df[df.task == MEAN].cell) == set(SPEC.cells) and md.splitlines()[2].endswith("| rte | mean |")
    df, _ = render(replace(SPEC, mean=False), RECORDS, [], {(MEAN, "lora"): 72.0})
    assert MEAN not in set(df.task)


def test_paper_mean_only_where_the_paper_averages_the_same_tasks():
    tasks = ["cb", "copa", "multirc", "boolq"]
    spec = TableSpec(paper="idspam", table=4, tasks=tasks, cells=["lpt", "idspam"], proposed="idspam",
                     backbone="roberta-base")
    numbers = paper_numbers(spec)
    assert numbers[(MEAN, "idspam")] == 71.1 and numbers[(MEAN, "prompt_tuning")] == 64.8  # id-spam.txt Table 4
    assert numbers[("cb", "idspam")] == 83.9
    part = paper_numbers(replace(spec, tasks=["cb", "copa"]))
    assert not any(t == MEAN for t, _ in part), "the paper's Mean is over 4 tasks, ours over 2"
    records = [{"backbone": "roberta-base", "task": t, "cell": "idspam", "seed": 0, "metrics": {"acc": 70.0}}
               for t in tasks]
    _, md = render(spec, records, [], numbers)
    lines = _lines(md)
    assert lines["idspam"].endswith("| **70.0** (of 4 task medians); paper 71.1 (-1.1) |")
    assert lines["lpt"].endswith("| missing (no result for cb, copa, multirc, boolq); paper 69.2 |")


# -- per-backbone paper numbers ------------------------------------------------------------------------------
def _paper_row(paper_file: str, table: int, section: str, label: str) -> list[float]:
    """The numbers of the first row `label` after the section line `section` of Table `table` in the text."""
    lines = open(os.path.join(PAPERS, paper_file), encoding="utf-8").read().splitlines()
    caption = next(i for i, line in enumerate(lines) if line.startswith(f"Table {table}:"))
    start = next(i for i in range(caption - 1, max(caption - 60, 0), -1) if section in lines[i])
    for line in lines[start + 1:caption]:
        cells = [re.sub(r"<[^>]+>", "", c).strip() for c in re.split(r"\t|\|", line)]
        cells = [c for c in cells if c]
        if cells and cells[0] == label:
            return [float(re.search(r"\d+(?:\.\d+)?", c).group()) for c in cells[1:]]
    raise AssertionError(f"{label!r} not under {section!r} in {paper_file} Table {table}")


TWO_BACKBONES = [  # (paper, table, file, tasks in the paper's column order, cell, row label, {backbone: section})
    ("iapt", 8, "iapt.txt", ["boolq", "e2e", "squad"], "lpt", "LPT",
     {"gpt2-large": "Results for GPT-2 large", "pythia-1.4b": "Results for Pythia-1.4b large"}),
    ("parade", 7, "parade.txt", ["boolq", "e2e", "squad"], "ia3_proj", "$(IA)^3$",
     {"gpt2-large": "Results for GPT-2 large", "pythia-1.4b": "Results for Pythia-1.4b large"}),
    ("para", 5, "para.txt", ["boolq", "squad"], "ia3_proj", "(IA) ³",
     {"llama2-13b": "Results for LLaMA-2 13B model", "gemma-2b": "Results for Gemma 2B"}),
    ("idspam", 2, "id-spam.txt", ["mnli", "qnli", "sst2", "mrpc", "rte", "qqp", MEAN], "full", "Fine-tuning",
     {"roberta-base": "GLUE (RoBERTa-BASE Backbone)", "roberta-large": "GLUE (RoBERTa-LARGE Backbone)"}),
]


@pytest.mark.parametrize("paper,table,file,tasks,cell,label,sections", TWO_BACKBONES,
                         ids=[f"{p}{t}" for p, t, *_ in TWO_BACKBONES])
def test_two_backbone_tables_give_each_backbone_its_own_numbers(paper, table, file, tasks, cell, label, sections):
    experiment = OmegaConf.load(os.path.join(ROOT, "conf", "experiment", f"{paper}_table{table}.yaml"))
    assert experiment.hydra.sweeper.params.backbone.split(",") == list(sections), "the grid's backbone axis"
    columns = [t for t in tasks if t != MEAN]
    seen = []
    for backbone, section in sections.items():
        numbers = paper_numbers(TableSpec(paper=paper, table=table, tasks=columns, cells=[cell], proposed=cell,
                                          backbone=backbone))
        text = _paper_row(file, table, section, label)
        assert [numbers[(t, cell)] for t in tasks] == text, f"{backbone}: the first row under {section!r}"
        with open(os.path.join(ROOT, "results", "paper", f"{paper}_table{table}.csv"), encoding="utf-8") as f:
            in_section = sum(line.split(",")[2].startswith(f"{section} / ") for line in f)
        assert len(numbers) == in_section and numbers not in seen, "this section's numbers, every one"
        seen.append(numbers)
    other = paper_numbers(TableSpec(paper=paper, table=table, tasks=columns, cells=[cell], proposed=cell))
    assert other == {}, "a backbone the table has no section for gets none (not another backbone's)"


def test_section_labels_name_the_backbones():
    assert section_backbone("Results for GPT-2 large / LoRA") == ("gpt2-large", "LoRA")
    assert section_backbone("Results for Pythia-1.4b large / IAPT") == ("pythia-1.4b", "IAPT")
    assert section_backbone("Results for LLaMA-2 13B model / PARA") == ("llama2-13b", "PARA")
    assert section_backbone("Results for Gemma 2B / (IA) ³") == ("gemma-2b", "(IA) ³")
    assert section_backbone("GLUE (RoBERTa-LARGE Backbone) / LPT") == ("roberta-large", "LPT")
    assert section_backbone("LoRA / 1") == (None, "LoRA / 1"), "method / beam size: no section"
    assert section_backbone("MRPC / QQP / LPT") == (None, "MRPC / QQP / LPT")
    assert section_backbone("LoRA") == (None, "LoRA")


def test_single_backbone_tables_ignore_the_backbone():
    spec = TableSpec(paper="iapt", table=1, tasks=["sst2", "rte"], cells=["lora"], proposed="iapt")
    numbers = paper_numbers(spec)
    assert numbers[("sst2", "lora")] == 93.6
    assert paper_numbers(replace(spec, backbone="llama2-7b")) == numbers
