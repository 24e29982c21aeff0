"""E2E NLG (iapt.txt C.3): meaning representation -> restaurant description, scored by ROUGE-L.

Hub `tuetschek/e2e_nlg` (its Parquet export), or local files via `data_dir=` in either original format:
  - csv:  trainset.csv, devset.csv, testset_w_refs.csv with columns `mr,ref` (tuetschek/e2e-dataset);
  - lora: train.txt, valid.txt, test.txt with lines `name : value | ... ||reference` (microsoft/LoRA),
          looked up in `data_dir` or its `lora_format/` subfolder.
Splits are E2E's own train/dev/test (42,061 / 4,672 / 4,693 references). Training uses every
(MR, reference) pair; dev and test have one example per distinct MR whose references are all of that
MR's references (ROUGE-L takes the best one), as in the E2E challenge evaluation.

    python run.py task=e2e data_dir=../shared/data/e2e            # finds lora_format/ (trainset.csv is missing)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from tasks.base import DataError, Example, TaskConfig, local_file
from tasks.common import BenchTask, load_hub, load_local, row_error
from tasks.metrics import rouge_l
from tasks.registry import register_task

CSV_FILES = {"train": "trainset.csv", "validation": "devset.csv", "test": "testset_w_refs.csv"}
LORA_FILES = {"train": "train.txt", "validation": "valid.txt", "test": "test.txt"}


@dataclass
class E2eConfig(TaskConfig):
    name: str = "e2e"
    local_dir: str | None = "e2e"  # its original files under data_root (../shared/data layout)
    max_new_tokens: int = 128  # the longest references are about 70 words
    # which original file format data_dir holds: auto (csv if trainset.csv exists, else LoRA's train.txt in
    # data_dir or data_dir/lora_format) | csv | lora
    local_format: str = "auto"
    group_references: bool = True  # dev/test: one example per MR with all its references (E2E protocol)
    # inherited split_seed is unused: E2E keeps its own train/dev/test


@register_task("e2e", E2eConfig)
class E2e(BenchTask):
    hub_id = "tuetschek/e2e_nlg"

    def local_layout(self, data_dir: str) -> tuple[str, str]:
        """(format, folder) of the local files: csv when trainset.csv is there, else LoRA's text format."""
        fmt = self.cfg.local_format
        if fmt not in ("auto", "csv", "lora"):
            raise DataError(f"task.local_format='{fmt}' is not one of auto, csv, lora")
        if fmt in ("auto", "csv") and os.path.exists(os.path.join(data_dir, CSV_FILES["train"])):
            return "csv", data_dir
        if fmt in ("auto", "lora"):
            for folder in (data_dir, os.path.join(data_dir, "lora_format")):
                if os.path.exists(os.path.join(folder, LORA_FILES["train"])):
                    return "lora", folder
        if fmt == "lora":
            local_file(data_dir, LORA_FILES["train"])  # raises, naming the missing file
        local_file(data_dir, CSV_FILES["train"])  # raises, naming the missing file
        raise AssertionError("unreachable")

    def load_raw(self, data_dir):
        """Rows {'mr', 'ref'} per split (train, validation, test)."""
        if data_dir is None:
            raw = load_hub(self.hub_id, None, ("train", "validation", "test"))
            return {s: [{"mr": r["meaning_representation"], "ref": r["human_reference"]} for r in rows]
                    for s, rows in raw.items()}
        fmt, folder = self.local_layout(data_dir)
        names = CSV_FILES if fmt == "csv" else LORA_FILES
        files = {s: local_file(folder, n) for s, n in names.items()}
        if fmt == "csv":
            raw = load_local("csv", files, keep_default_na=False)
            return {s: [{"mr": r["mr"], "ref": r["ref"]} for r in rows] for s, rows in raw.items()}
        raw = load_local("text", files)
        out = {}
        for s, rows in raw.items():
            pairs = [r["text"].split("||", 1) for r in rows if r["text"].strip()]
            bad = [i for i, p in enumerate(pairs) if len(p) != 2]
            if bad:
                raise row_error(files[s], s, bad[0], "no '||' between the meaning representation and the reference")
            out[s] = [{"mr": mr.strip(), "ref": ref.strip()} for mr, ref in pairs]
        return out

    def to_example(self, row, idx):
        refs = row.get("refs") or [row["ref"]]
        return Example(id=str(row.get("id", idx)), query=self.query(row["mr"]), response=refs[0], references=refs)

    @staticmethod
    def query(mr: str) -> str:
        return f"Reference:\n{mr}\nGenerate a customer review following the given reference."

    def grouped(self, rows: list[dict]) -> list[Example]:
        """One example per distinct MR (first-seen order), references = all of that MR's references."""
        refs: dict[str, list[str]] = {}
        for r in rows:
            refs.setdefault(r["mr"], []).append(r["ref"])
        return [self.to_example({"mr": mr, "refs": rs, "id": f"mr{i}"}, i) for i, (mr, rs) in enumerate(refs.items())]

    def per_reference(self, rows: list[dict]) -> list[Example]:
        """One example per (MR, reference) row; its references are still all of that MR's references."""
        refs: dict[str, list[str]] = {}
        for r in rows:
            refs.setdefault(r["mr"], []).append(r["ref"])
        return [self.to_example({"mr": r["mr"], "refs": [r["ref"], *[x for x in refs[r["mr"]] if x != r["ref"]]]}, i)
                for i, r in enumerate(rows)]

    def splits(self, data_dir=None):
        raw = self.load_raw(data_dir)
        train = [self.to_example(r, i) for i, r in enumerate(raw["train"])]
        if self.cfg.group_references:
            dev, test = self.grouped(raw["validation"]), self.grouped(raw["test"])
        else:
            dev, test = self.per_reference(raw["validation"]), self.per_reference(raw["test"])
        return {"train": train, "dev": dev, "test": test}

    def score(self, predictions, examples):
        return rouge_l(predictions, [e.references for e in examples])
