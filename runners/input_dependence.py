"""How input-aware an input-aware method is: the spread of what its generator makes across test inputs.

For a `FamilyModel` (pefts/family.py: IAPT, PARADE, PARA, ID-SPAM, LPT, IDPG) the default generator's output at
every chosen layer is taken for the first `rows` test inputs (soft prompts [n_tokens, d], or scaling vectors),
flattened per input, and two numbers are kept per layer:
- `cosine`: the mean pairwise cosine similarity across inputs (1.0 = one output for every input: a static prompt);
- `spread`: the mean distance of an input's output from the inputs' mean output, over that mean's norm
  (0.0 = static). A prompt can have cosine 0.99 from a large shared part and still a spread of a few percent.
The run record keeps them (`input_dependence`), the CPU tables print their means (runners/tables.py).

    measure({layer: outputs [N, ...]}) -> {"rows": N, "layers": {layer: {"cosine", "spread"}}, "cosine", "spread"}
"""

from __future__ import annotations

import statistics

import torch

from pefts.family import FamilyModel
from runners.data import prompt_batches

ROWS = 64  # test inputs measured (the first ones, in test order)


def measure(per_layer: dict[int, torch.Tensor]) -> dict:
    """The per-layer and mean cosine / spread of generator outputs [N, ...] (N >= 2 inputs)."""
    layers = {}
    for layer, x in sorted(per_layer.items()):
        v = x.reshape(x.shape[0], -1).double()
        assert v.shape[0] >= 2, "input dependence needs at least two inputs"
        unit = torch.nn.functional.normalize(v, dim=1)
        sim = unit @ unit.T
        n = v.shape[0]
        cosine = float((sim.sum() - sim.diagonal().sum()) / (n * (n - 1)))
        mean = v.mean(0)
        spread = float((v - mean).norm(dim=1).mean() / mean.norm().clamp_min(1e-12))
        layers[int(layer)] = {"cosine": round(cosine, 6), "spread": round(spread, 6)}
    return {"rows": int(next(iter(per_layer.values())).shape[0]), "layers": layers,
            "cosine": round(statistics.fmean(v["cosine"] for v in layers.values()), 6),
            "spread": round(statistics.fmean(v["spread"] for v in layers.values()), 6)}


def of_run(model, tok, examples, template: str, max_prompt_len: int, batch_size: int, device: str,
           rows: int = ROWS) -> dict | None:
    """`measure` of a decoder FamilyModel's generator over the first `rows` examples' prompts (the answer
    prompts of test scoring); None for any other model (nothing is generated per input)."""
    if not isinstance(model, FamilyModel) or not model.causal or len(examples) < 2:
        return None
    parts: dict[int, list[torch.Tensor]] = {}
    for ids, mask, _ in prompt_batches(examples[:rows], tok, template, max_prompt_len, batch_size):
        for layer, out in model.generated(ids.to(device), mask.to(device)).items():
            parts.setdefault(layer, []).append(out.cpu())
    return measure({layer: torch.cat(xs) for layer, xs in parts.items()})
