"""Offline metrics shared by tasks. Nothing here downloads anything."""

from __future__ import annotations

import re
import string


def normalize_label(text: str) -> str:
    """Lower-case, drop punctuation and surrounding space, keep the first line: 'Entailment.' -> 'entailment'."""
    text = (text or "").strip().split("\n")[0].lower()
    text = text.translate(str.maketrans("", "", string.punctuation.replace("_", "")))
    return re.sub(r"\s+", " ", text).strip()


def accuracy(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    """Percentage of predictions whose normalized text equals a normalized gold answer."""
    assert len(predictions) == len(references), f"{len(predictions)} predictions vs {len(references)} references"
    if not predictions:
        return {"acc": 0.0}
    hits = sum(normalize_label(p) in {normalize_label(r) for r in refs} for p, refs in zip(predictions, references))
    return {"acc": 100.0 * hits / len(predictions)}
