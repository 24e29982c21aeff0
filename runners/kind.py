"""The backbone's kind, decided once per run: a decoder (causal LM) or an encoder (a classifier).

Everything of a run that differs between the two is asked of one `Kind` object, made from the backbone
config by `Kind.of` (the one place that reads the architecture table for it), and handed to each stage:

| | decoder | encoder (the ID-SPAM setting) |
|---|---|---|
| training rows | template prompt + response tokens, loss on the response (`encode_train`) | the raw sentence (pair) with its class id (`encode_classification`) |
| collator | `TrainCollator` (right-padded, -100 outside the response) | `ClassCollator` (right-padded, class ids) |
| test answers | `generate` (beam search) or `likelihood` | `head`: the argmax of a new classification head |
| head | none | `Arch.head`, trainable with every method and saved with it |
| tokenizer padding | left (generation) | right (runners/backbones.py) |

    kind = Kind.of(cfg.backbone)
    cfg.runner.scoring = kind.scoring(cfg.runner.scoring)
    rows = kind.encode(examples, tok, cfg.task, labels, max_seq_len=256, what="rte train")
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from core.errors import UserError
from pefts.blocks.arch import arch_for, is_encoder
from runners.data import ClassCollator, TrainCollator, encode_classification, encode_train

ENCODER_BACKBONES = "roberta-base, roberta-large, tiny-roberta"  # named in the scoring=head message


@dataclass(frozen=True)
class Kind:
    """encoder: the backbone is a BERT-style encoder; backbone: its name (for messages); head: the name of
    its classification head module (`Arch.head`; None for decoders)."""

    encoder: bool
    backbone: str
    head: str | None = None

    @classmethod
    def of(cls, backbone_cfg) -> Kind:
        encoder = is_encoder(backbone_cfg.architecture)
        return cls(encoder, backbone_cfg.name, arch_for(backbone_cfg.architecture).head if encoder else None)

    def scoring(self, requested: str) -> str:
        """runner.scoring for this backbone: an encoder answers with its head (`generate` resolves to `head`);
        a decoder has no head. Resolved before the config is recorded."""
        if self.encoder and requested == "generate":
            return "head"
        if self.encoder and requested != "head":
            raise UserError(f"runner.scoring={requested}: backbone '{self.backbone}' is an encoder and answers "
                            "with its classification head (runner.scoring=head)")
        if not self.encoder and requested == "head":
            raise UserError(f"runner.scoring=head needs an encoder backbone ({ENCODER_BACKBONES}); "
                            f"'{self.backbone}' is a decoder: use generate or likelihood")
        return requested

    def labels(self, task, task_name: str) -> list[str] | None:
        """An encoder's classes: the task's label words in hub class-id order (one line for tasks without
        them); None for a decoder, which answers in words."""
        if not self.encoder:
            return None
        labels = list(getattr(task, "labels", None) or [])
        if not labels:
            raise UserError(f"backbone '{self.backbone}' is an encoder and trains a classification head; task "
                            f"'{task_name}' has no label set (encoders train on the GLUE tasks, IMDB, BoolQ, CB, "
                            "MultiRC)")
        return labels

    def encode(self, examples, tok, task_cfg, labels: list[str] | None, max_seq_len: int, what: str) -> list[dict]:
        """Training (or dev-loss) rows of one split."""
        if self.encoder:
            return encode_classification(examples, tok, labels, max_seq_len, what=what, task=task_cfg.name)
        return encode_train(examples, tok, task_cfg.template, max_seq_len, what=what)

    def collator(self, pad_token_id: int):
        return ClassCollator(pad_token_id) if self.encoder else TrainCollator(pad_token_id)

    def head_parameters(self, model: torch.nn.Module) -> list[torch.nn.Parameter]:
        """The parameters of an encoder's classification head, wherever a method wrapped it; [] for a decoder."""
        if not self.encoder:
            return []
        params = [p for n, p in model.named_parameters() if f".{self.head}." in f".{n}"]
        assert params, f"no '{self.head}' head parameters in {type(model).__name__}"
        return params

    def train_head(self, model: torch.nn.Module) -> list[torch.nn.Parameter]:
        """An encoder's new classification head, made trainable with every method unless the method already
        trains its own copy (peft's SEQ_CLS `modules_to_save`); returns the head parameters it unfroze."""
        params = self.head_parameters(model)
        if any(p.requires_grad for p in params):
            return []
        for p in params:
            p.requires_grad_(True)
        return params
