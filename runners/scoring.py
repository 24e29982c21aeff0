"""Likelihood scoring of classification tasks (`runner.scoring=likelihood`), the lm-evaluation-harness way:
for every example, the label whose response tokens the model finds most likely given the prompt.

    preds = predict_likelihood(model, tok, examples, labels=["negative", "positive"], template="chat",
                               max_seq_len=256, batch_size=16, device="cpu")
    preds = predict_head(encoder, tok, examples, labels, max_seq_len=256, batch_size=16, device="cpu")

Each candidate is scored as the sum of the log-probabilities of its response tokens *including the EOS
that ends every training response* (tasks/base.py format_example), so "entailment" is scored as a whole
answer and not as the prefix of a longer one; the model projects only those columns onto the vocabulary
(runners/trainer.py `labelled_positions`: the same logits there). Cheaper than beam search (one forward pass per candidate, no
decoding) and meaningful for an untrained model that answers in sentences. The prediction is the label
word itself, scored by the task's own metric as a generated answer would be. Written by hand: neither
transformers nor lm-evaluation-harness (not a dependency) scores through an arbitrary nn.Module such as
the input-aware family's FamilyModel.

Encoders (`runner.scoring=head`, the ID-SPAM setting) answer with their classification head: the label of
the largest logit, again returned as the label word so the task's metric scores it unchanged.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from tqdm.auto import tqdm

from core.errors import UserError
from runners.data import ClassCollator, TrainCollator, encode_classification, encode_train
from runners.trainer import labelled_positions

SCORINGS = ("generate", "likelihood", "head")  # head: encoders' classification head (their only one)


def check_labels(task, examples, task_name: str) -> list[list[str]]:
    """Each example's answer choices (`task.labels_for`), refused in one line for tasks without a label set."""
    if not task.labels:
        raise UserError(f"runner.scoring=likelihood needs a classification task with a label set; task "
                        f"'{task_name}' has none (use runner.scoring=generate)")
    choices = [list(task.labels_for(ex)) for ex in examples]
    off = sorted({ex.response for ex, c in zip(examples, choices) if ex.response not in c})
    if off:
        raise UserError(f"runner.scoring=likelihood: task '{task_name}' has responses outside its labels "
                        f"{list(task.labels)}: {off[:3]}")
    return choices


@torch.no_grad()
def predict_likelihood(model, tok, examples, labels: list[str] | list[list[str]], template: str, max_seq_len: int,
                       batch_size: int, device: str, progress: bool = False, what: str = "") -> list[str]:
    """The most likely answer of every example among `labels` (one list for all, or one per example)."""
    model.eval()
    choices = labels if labels and isinstance(labels[0], list) else [list(labels)] * len(examples)
    owner = [(i, j) for i in range(len(examples)) for j in range(len(choices[i]))]
    rows = encode_train([replace(examples[i], response=choices[i][j]) for i, j in owner], tok, template, max_seq_len,
                        what=what)
    scores = [[float("-inf")] * len(c) for c in choices]
    collate = TrainCollator(tok.pad_token_id)
    order = sorted(range(len(rows)), key=lambda k: -len(rows[k]["input_ids"]))  # little padding per batch
    for start in tqdm(range(0, len(order), batch_size), desc="likelihood", unit="batch", disable=not progress,
                      leave=False):
        idx = order[start:start + batch_size]
        batch = {k: v.to(device) for k, v in collate([rows[k] for k in idx]).items()}
        cols = labelled_positions(batch["labels"])  # the answer columns' logits only, as training does
        logits = model(**batch, **cols).logits.float()  # labels tell a FamilyModel where the instruction ends
        target = cols["shift_labels"]
        keep = target != -100
        token_lp = torch.log_softmax(logits, dim=-1).gather(-1, target.clamp(min=0)[..., None])[..., 0] * keep
        for k, total in zip(idx, token_lp.sum(-1).cpu()):
            i, j = owner[k]
            scores[i][j] = float(total)
    return [c[max(range(len(c)), key=s.__getitem__)] for c, s in zip(choices, scores)]


@torch.no_grad()
def predict_head(model, tok, examples, labels: list[str], max_seq_len: int, batch_size: int, device: str,
                 progress: bool = False, what: str = "", task: str = "") -> list[str]:
    """An encoder's answers: the label word of the head's largest logit, in the order of `examples`."""
    model.eval()
    rows = encode_classification(examples, tok, labels, max_seq_len, what=what, task=task)
    collate = ClassCollator(tok.pad_token_id)
    out = [""] * len(rows)
    order = sorted(range(len(rows)), key=lambda k: -len(rows[k]["input_ids"]))
    for start in tqdm(range(0, len(order), batch_size), desc="classify", unit="batch", disable=not progress,
                      leave=False):
        idx = order[start:start + batch_size]
        batch = collate([rows[k] for k in idx])
        logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits
        for k, j in zip(idx, logits.argmax(-1).tolist()):
            out[k] = labels[j]
    return out
