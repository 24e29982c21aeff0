"""Examples -> token ids: training rows (loss on response tokens only) and left-padded prompt batches.

    rows = encode_train(examples, tok, template="llama2", max_seq_len=2048)
    batch = TrainCollator(tok.pad_token_id)(rows)        # right-padded, labels -100 on prompt/pad
    for ids, mask, chunk in prompt_batches(examples, tok, "llama2", 2048, batch_size=16): ...
    rows = encode_classification(examples, tok, labels=["entailment", "not entailment"], max_seq_len=256)
    batch = ClassCollator(tok.pad_token_id)(rows)         # encoders: class-id labels [B]
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from tasks.base import DataError, Example, format_example

log = logging.getLogger(__name__)


def _fit(prompt: list[int], resp: list[int], max_len: int) -> tuple[list[int], list[int]]:
    """Truncate to max_len: the prompt loses tokens from its left (keeping its first token, e.g. BOS),
    then the response from its right."""
    room = max_len - len(resp)
    if len(prompt) > max(room, 1):
        keep = max(room, 1)
        prompt = prompt[:1] + prompt[len(prompt) - keep + 1 :] if keep > 1 else prompt[-1:]
    return prompt, resp[: max_len - len(prompt)]


def encode_train(examples: list[Example], tok, template: str, max_seq_len: int, what: str = "") -> list[dict]:
    """Training rows; examples longer than `max_seq_len` are truncated by `_fit`, counted and reported
    in one warning (`what` names them there, e.g. 'sst2 train')."""
    rows, cut, resp_cut = [], 0, 0
    for ex in examples:
        full_prompt, full_resp = format_example(tok, ex.query, ex.response, template)
        prompt, resp = _fit(full_prompt, full_resp, max_seq_len)
        cut += len(full_prompt) + len(full_resp) > max_seq_len
        resp_cut += len(resp) < len(full_resp)
        rows.append({"input_ids": prompt + resp, "labels": [-100] * len(prompt) + resp})
    if cut:
        log.warning("%s%d of %d examples longer than max_seq_len=%d tokens were truncated (the prompt is cut "
                    "from the left, keeping its first token%s)", f"{what}: " if what else "", cut, len(examples),
                    max_seq_len, f"; {resp_cut} also lost response tokens from the right" if resp_cut else "")
    return rows


def right_pad(seqs: list[list[int]], value: int) -> torch.Tensor:
    """[B, longest] tensor of `seqs`, filled on the right with `value`."""
    out = torch.full((len(seqs), max(len(s) for s in seqs)), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out


@dataclass
class TrainCollator:
    """Right-pads `input_ids`/`labels` into tensors with an attention mask."""

    pad_token_id: int

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        ids = [r["input_ids"] for r in rows]
        return {"input_ids": right_pad(ids, self.pad_token_id), "attention_mask": right_pad([[1] * len(i) for i in ids], 0),
                "labels": right_pad([r["labels"] for r in rows], -100)}


def left_pad(seqs: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s) :] = torch.tensor(s)
            mask[i, width - len(s) :] = 1
    return ids, mask


def prompt_batches(examples: list[Example], tok, template: str, max_prompt_len: int, batch_size: int,
                   what: str = ""):
    """Yield (input_ids, attention_mask, examples) left-padded for generation, longest prompts first
    within the order of the input (stable) so padding waste stays small. Prompts longer than
    `max_prompt_len` are cut from the left (keeping the first token), counted in one warning."""
    full = [format_example(tok, ex.query, None, template)[0] for ex in examples]
    prompts = [_fit(p, [], max_prompt_len)[0] for p in full]
    cut = sum(len(p) > max_prompt_len for p in full)
    if cut:
        log.warning("%s%d of %d prompts longer than %d tokens (runner.max_seq_len minus task.max_new_tokens) were "
                    "cut from the left, keeping their first token", f"{what}: " if what else "", cut, len(examples),
                    max_prompt_len)
    order = sorted(range(len(examples)), key=lambda i: -len(prompts[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        ids, mask = left_pad([prompts[i] for i in idx], tok.pad_token_id)
        yield ids, mask, idx


def encode_classification(examples: list[Example], tok, labels: list[str], max_seq_len: int, what: str = "",
                          task: str = "") -> list[dict]:
    """Encoder rows: the example's raw segments (`Example.text`, one sentence or a pair) through the
    tokenizer's own framing (RoBERTa: <s> a </s></s> b </s>), truncated longest-first to `max_seq_len`
    (counted in one warning), with the class id of its label in `labels` order (the head's classes)."""
    if examples and not examples[0].text:
        raise DataError(f"task '{task}' gives no encoder input (Example.text): encoder backbones train on the GLUE "
                        "tasks, IMDB, BoolQ, CB and MultiRC; use a decoder backbone for this task")
    rows, cut = [], 0
    for ex in examples:
        if ex.label not in labels:
            raise DataError(f"{what or task}: example {ex.id} has label {ex.label!r}, not one of {labels}")
        full = tok(*ex.text, truncation=False)["input_ids"]
        ids = full if len(full) <= max_seq_len else tok(*ex.text, truncation=True, max_length=max_seq_len)["input_ids"]
        cut += len(full) > max_seq_len
        rows.append({"input_ids": ids, "labels": labels.index(ex.label)})
    if cut:
        log.warning("%s%d of %d examples longer than max_seq_len=%d tokens were truncated (longest segment first)",
                    f"{what}: " if what else "", cut, len(examples), max_seq_len)
    return rows


@dataclass
class ClassCollator:
    """Right-pads encoder rows into tensors; `labels` are class ids [B] (the head's cross-entropy)."""

    pad_token_id: int

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        ids = [r["input_ids"] for r in rows]
        return {"input_ids": right_pad(ids, self.pad_token_id), "attention_mask": right_pad([[1] * len(i) for i in ids], 0),
                "labels": torch.tensor([r["labels"] for r in rows], dtype=torch.long)}
