"""What a task is: examples in prompt -> response form, the papers' splits, and a metric.

A task subclasses `Task` and implements `load_raw` (original splits, from the hub or `data_dir`),
`to_example` (one raw row -> `Example`) and `score`. `splits()` applies iapt.txt Appendix C:
  - fewer than 10k training rows: the original validation set is halved into dev and test;
  - otherwise: 1k training rows are held out as dev and the original validation set is the test.
The carving uses `cfg.split_seed`, which is NOT the run seed, so all seeds see the same splits.

Templates (`cfg.template`):
  - `llama2`: iapt.txt Appendix D verbatim, `<s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{query}[/INST]{response}</s>`,
    where `<s>`/`</s>` are the backbone tokenizer's BOS/EOS tokens (so SmolLM2 and GPT-2 work too);
  - `chat`: the backbone tokenizer's own chat template (SmolLM2 has one);
  - `plain`: `{query}\n` then `{response}` + EOS (for the synthetic task's short sequences).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

from core.errors import UserError

LLAMA2_SYSTEM = "You are a helpful, respectful and honest assistant."
TEMPLATES = ("llama2", "chat", "plain")


class DataError(UserError, ValueError):
    """Bad task data or a bad task setting: one line and exit code 2 (run.py; runners/train.py passes
    UserErrors on unwrapped); still a ValueError for callers that catch those."""


class MissingDataFile(UserError, FileNotFoundError):
    """A required data file or folder is missing: one line and exit code 2; still a FileNotFoundError."""


@dataclass
class TaskConfig:
    """Fields every task config has; a task's own dataclass may add more."""

    name: str = "???"
    # prompt wrapper: llama2 = the task's iapt.txt Appendix D (or Appendix-D-style) prompt in the LLaMA-2
    # chat wrapper | chat = the backbone tokenizer's chat template | plain = query, newline, response
    template: str = "llama2"
    max_new_tokens: int = 8  # generation budget for a prediction
    # seed of the split carving (Appendix C halving or 1k hold-out, a task's own dev hold-out, the source
    # task's with `source`, opt-in carving); fixed across run seeds, so every seed sees the same splits
    split_seed: int = 42
    # folder of the task's original files under a data root laid out like ../shared/data (e.g. glue/SST-2):
    # with `data_root=` and no `data_dir=`, the run reads <data_root>/<local_dir>; null = none published here
    local_dir: str | None = None


@dataclass
class Example:
    id: str
    query: str  # the filled Appendix D prompt template (user turn)
    response: str  # the training target
    references: list[str] = field(default_factory=list)  # gold answers for scoring; [response] if empty
    label: str | None = None  # class label name, for classification tasks (encoder heads)
    # the raw input segments an encoder's classification head reads: (sentence,) or (sentence 1, sentence 2),
    # tokenized as the backbone's pair (`tok(a, b)`: RoBERTa's <s> a </s></s> b </s>); () = no encoder input
    text: tuple[str, ...] = ()

    def __post_init__(self):
        if not self.references:
            self.references = [self.response]


class Task:
    """Base of every task. Subclasses set `labels` for classification tasks."""

    labels: list[str] | None = None
    small_threshold = 10_000  # Appendix C: below this many training rows, halve validation
    protocol: str = "paper"  # which split rule made `splits()` (tasks/common.py PAPER / CARVED); stored in records

    @property
    def chance(self) -> float | None:
        """The main metric of a uniform guess among the answer choices (percent), None when there are none."""
        return 100.0 / len(self.labels) if self.labels else None

    def labels_for(self, example: Example) -> list[str] | None:
        """The answers an example chooses among (likelihood scoring): the task's labels; a mixture's rows
        each have their own task's (tasks/mixture.py)."""
        return self.labels

    def __init__(self, cfg):
        self.cfg = cfg
        if cfg.template not in TEMPLATES:
            raise DataError(f"task.template='{cfg.template}' is not one of {', '.join(TEMPLATES)}")

    # --- to implement -------------------------------------------------------------------------
    def load_raw(self, data_dir: str | None) -> dict[str, list[dict]]:
        """Original splits as lists of rows: keys 'train', 'validation' (and 'test' if labelled)."""
        raise NotImplementedError

    def to_example(self, row: dict, idx: int) -> Example:
        raise NotImplementedError

    def score(self, predictions: list[str], examples: list[Example]) -> dict[str, float]:
        raise NotImplementedError

    # --- shared --------------------------------------------------------------------------------
    def splits(self, data_dir: str | None = None) -> dict[str, list[Example]]:
        raw = self.load_raw(data_dir)
        train = [self.to_example(r, i) for i, r in enumerate(raw["train"])]
        val = [self.to_example(r, i) for i, r in enumerate(raw["validation"])]
        train, dev, test = appendix_c_split(train, val, self.cfg.split_seed, self.small_threshold)
        return {"train": train, "dev": dev, "test": test}


def appendix_c_split(train: list, val: list, seed: int, small_threshold: int = 10_000, dev_size: int = 1000):
    """iapt.txt Appendix C. Returns (train, dev, test); deterministic in `seed`."""
    rng = random.Random(seed)
    if len(train) < small_threshold:
        order = list(range(len(val)))
        rng.shuffle(order)
        half = len(val) // 2
        return list(train), [val[i] for i in sorted(order[:half])], [val[i] for i in sorted(order[half:])]
    order = list(range(len(train)))
    rng.shuffle(order)
    held = set(order[:dev_size])
    return [t for i, t in enumerate(train) if i not in held], [train[i] for i in sorted(held)], list(val)


def local_file(data_dir: str, name: str) -> str:
    """Path of a required file under `data_dir`; a missing one is a clear error naming it."""
    return local_files(data_dir, [name])[name]


def local_files(data_dir: str, names, task: str | None = None) -> dict[str, str]:
    """Paths of the required files `names` under `data_dir` (name -> path); if any is missing, one
    line names every missing file and what the folder holds."""
    paths = {n: os.path.join(os.path.expanduser(data_dir), n) for n in names}
    missing = [n for n, p in paths.items() if not os.path.exists(p)]
    if missing:
        present = sorted(os.listdir(data_dir)) if os.path.isdir(data_dir) else []
        where = "nothing (the folder does not exist)" if not os.path.isdir(data_dir) else ", ".join(present) or "nothing"
        raise MissingDataFile(
            f"{f'task {task}: ' if task else ''}data_dir='{data_dir}' has no {', '.join(repr(n) for n in missing)} "
            f"(expected the original published file{'s' if len(missing) > 1 else ''}); found: {where}"
        )
    return paths


def format_example(tokenizer, query: str, response: str | None, template: str) -> tuple[list[int], list[int]]:
    """Token ids of (prompt, response) under `template`; response ids end with EOS.

    The prompt and the response are tokenized separately, so the loss mask is exact.
    """
    if template == "llama2":
        body = f"[INST] <<SYS>>\n{LLAMA2_SYSTEM}\n<</SYS>>\n\n{query}[/INST]"
        bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        prompt = bos + tokenizer(body, add_special_tokens=False)["input_ids"]
    elif template == "chat":
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": query}], add_generation_prompt=True, tokenize=True
        )
        if isinstance(prompt, dict) or hasattr(prompt, "keys"):
            prompt = prompt["input_ids"]
        prompt = list(prompt)
    elif template == "plain":
        prompt = tokenizer(query + "\n", add_special_tokens=False)["input_ids"]
    else:
        raise ValueError(f"template='{template}' is not one of {', '.join(TEMPLATES)}")
    resp = [] if response is None else tokenizer(response, add_special_tokens=False)["input_ids"]
    if response is not None and tokenizer.eos_token_id is not None:
        resp = resp + [tokenizer.eos_token_id]
    return prompt, resp
