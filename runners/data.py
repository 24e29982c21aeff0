"""Examples -> token ids: training rows (loss on response tokens only) and left-padded prompt batches.

    rows = encode_train(examples, tok, template="llama2", max_seq_len=2048)
    batch = TrainCollator(tok.pad_token_id)(rows)        # right-padded, labels -100 on prompt/pad
    for ids, mask, chunk in prompt_batches(examples, tok, "llama2", 2048, batch_size=16): ...
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tasks.base import Example, format_example


def _fit(prompt: list[int], resp: list[int], max_len: int) -> tuple[list[int], list[int]]:
    """Truncate to max_len: the prompt loses tokens from its left (keeping its first token, e.g. BOS),
    then the response from its right."""
    room = max_len - len(resp)
    if len(prompt) > max(room, 1):
        keep = max(room, 1)
        prompt = prompt[:1] + prompt[len(prompt) - keep + 1 :] if keep > 1 else prompt[-1:]
    return prompt, resp[: max_len - len(prompt)]


def encode_train(examples: list[Example], tok, template: str, max_seq_len: int) -> list[dict]:
    rows = []
    for ex in examples:
        prompt, resp = _fit(*format_example(tok, ex.query, ex.response, template), max_seq_len)
        rows.append({"input_ids": prompt + resp, "labels": [-100] * len(prompt) + resp})
    return rows


@dataclass
class TrainCollator:
    """Right-pads `input_ids`/`labels` into tensors with an attention mask."""

    pad_token_id: int

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n] = torch.tensor(r["input_ids"])
            labels[i, :n] = torch.tensor(r["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def left_pad(seqs: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s) :] = torch.tensor(s)
            mask[i, width - len(s) :] = 1
    return ids, mask


def prompt_batches(examples: list[Example], tok, template: str, max_prompt_len: int, batch_size: int):
    """Yield (input_ids, attention_mask, examples) left-padded for generation, longest prompts first
    within the order of the input (stable) so padding waste stays small."""
    prompts = [_fit(format_example(tok, ex.query, None, template)[0], [], max_prompt_len)[0] for ex in examples]
    order = sorted(range(len(examples)), key=lambda i: -len(prompts[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        ids, mask = left_pad([prompts[i] for i in idx], tok.pad_token_id)
        yield ids, mask, idx
