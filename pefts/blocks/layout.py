"""The soft-prompt layout: instruction masks, positions, and soft positions inserted into a batch.

One machine for every method with soft tokens in the sequence: the input-aware family
(`SoftPromptInjector`, pefts/blocks/injectors.py) and the prompt baselines' placeholders
(`PromptInserter`, pefts/blocks/prompts.py) both insert with `insert_soft_positions`, wherever each
row's padding is.

    lay = insert_soft_positions(ids, mask, None, instruction_mask(mask), 4, "prepend", fill_id=0)
    out = model(input_ids=lay.input_ids, attention_mask=lay.attention_mask, position_ids=lay.position_ids)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

POSITIONS = ("prepend", "append", "after_first")  # where soft positions go, relative to the instruction


def instruction_mask(attention_mask: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Instruction (prompt) tokens, by masks only (no padding side assumed): attended tokens before the
    first supervised label when `labels` are given (training rows: prompt + response); all attended tokens
    otherwise (generation prefill)."""
    instr = attention_mask.bool()
    if labels is not None:
        before_first = (labels != -100).long().cumsum(1) == 0
        instr = instr & before_first
    assert bool(instr.any(1).all()), "every row needs at least one instruction token (attended, label -100)"
    return instr


@dataclass
class SoftLayout:
    """A batch with `n` soft positions inserted per row (all tensors in expanded coordinates except `src`)."""

    input_ids: torch.Tensor  # [B, T+n], placeholder id at soft positions
    attention_mask: torch.Tensor  # [B, T+n], 1 at soft positions
    labels: torch.Tensor | None  # [B, T+n], -100 at soft positions
    position_ids: torch.Tensor  # [B, T+n]
    instr: torch.Tensor  # [B, T+n] bool, instruction tokens (soft positions excluded)
    start: torch.Tensor  # [B] first soft position
    src: torch.Tensor  # [B, T] expanded position whose logits predict the token after original token t

    @property
    def n(self) -> int:
        """Soft positions per row."""
        return self.input_ids.shape[1] - self.src.shape[1]

    def soft(self) -> torch.Tensor:
        """[B, T+n] bool, True at the soft positions."""
        col = torch.arange(self.input_ids.shape[1], device=self.input_ids.device)[None]
        return (col >= self.start[:, None]) & (col < self.start[:, None] + self.n)


def insert_soft_positions(input_ids, attention_mask, labels, instr, n: int, position: str, fill_id: int,
                          occupy_positions: bool = True) -> SoftLayout:
    """Insert `n` positions per row before the first instruction token ("prepend"), right after the
    last one ("append"), or right after the first one ("after_first": behind an encoder's [CLS]/<s>,
    which its classification head reads), wherever each row's padding is. Positions (`position_ids`): with
    `occupy_positions` the soft tokens count like real tokens (cumulative sum of the expanded mask, as HF
    `generate` computes them); otherwise (absolute learned positions, GPT-2) real tokens keep their
    original positions and soft tokens repeat the preceding token's."""
    assert position in POSITIONS, f"position must be one of {POSITIONS}, got '{position}'"
    B, T = input_ids.shape
    dev = input_ids.device
    ar = torch.arange(T, device=dev).expand(B, T)
    if position in ("prepend", "after_first"):
        at = torch.where(instr, ar, T).amin(1) + (position == "after_first")
    else:
        at = torch.where(instr, ar, -1).amax(1) + 1
    newpos = ar + n * (ar >= at[:, None])  # where original token t goes
    soft = at[:, None] + torch.arange(n, device=dev)  # [B, n]

    def spread(x, fill):
        out = x.new_full((B, T + n), fill)
        return out.scatter(1, newpos, x)

    ids = spread(input_ids, fill_id)
    mask = spread(attention_mask.long(), 0).scatter(1, soft, 1)
    lab = spread(labels, -100) if labels is not None else None
    instr_x = spread(instr, False)
    if occupy_positions:
        pos = (mask.cumsum(1) - 1).masked_fill(mask == 0, 0)
    else:
        real = spread(attention_mask.long(), 0)
        pos = (real.cumsum(1) - 1).clamp(min=0).masked_fill(mask == 0, 0)
    src = newpos + n * (ar == (at - 1)[:, None])  # the token just before the block reads the last soft token
    return SoftLayout(ids, mask.to(attention_mask.dtype), lab, pos, instr_x, at, src)


def plain_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids from the mask (as HF `generate` computes them), so any padding side gives each row
    the positions it would have alone."""
    m = attention_mask.long()
    return (m.cumsum(1) - 1).masked_fill(m == 0, 0)


def left_align(input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """Move every row's padding to the left (stable, keeps token order): generation needs prompts that
    end at the last column, whatever padding side the caller used."""
    order = torch.sort(attention_mask.long(), dim=1, stable=True).indices
    return input_ids.gather(1, order), attention_mask.gather(1, order)
