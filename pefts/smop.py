"""SMoP (Choi et al., 2023, "Sparse Mixture-of-Prompts"): K short soft prompts and a linear router
that sends each input to one of them (top-1), from the mean of its instruction tokens' embeddings.

The router scores softmax(W x_mean + noise); noise ~ N(0, router_noise^2) in training mode only
(SMoP's router perturbation). The chosen prompt enters with the straight-through weight p_k / p_k
(value 1, gradient of p_k), so the router learns while the prompt keeps its scale (our choice where
the paper's weighting is not restated here; docs/deviations.md). Defaults: K = 4 prompts of
5 tokens. LLaMA-2 7B: 4 x 5 x 4096 + 4096 x 4 = 98,304.

    python run.py method=smop method.num_prompts=8
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pefts.blocks.common import any_weight, freeze, new_param
from pefts.blocks.poolers import mean_pool
from pefts.blocks.prompts import PromptInserter, vocab_init
from pefts.registry import Budget, MethodConfig, register_method


class PromptMixture(nn.Module):
    """Prompt source for `PromptInserter`: top-1 routing over `k` prompts of `n` tokens."""

    def __init__(self, k: int, n: int, d: int, ref: torch.Tensor, noise: float, init_from=None):
        super().__init__()
        self.noise = noise
        self.prompts_weight = (nn.Parameter(init_from.detach().clone().float().view(k, n, d))
                               if init_from is not None else new_param(ref, k, n, d, init="normal"))
        self.router = new_param(ref, k, d, init="normal", std=d ** -0.5)

    def route(self, embeds: torch.Tensor, instruction: torch.Tensor) -> torch.Tensor:
        """(B, k) routing probabilities (with perturbation in training mode)."""
        logits = mean_pool(embeds.float(), instruction) @ self.router.t()
        if self.training and self.noise > 0:
            logits = logits + torch.randn_like(logits) * self.noise
        return torch.softmax(logits, -1)

    def prompts(self, embeds: torch.Tensor, instruction: torch.Tensor) -> torch.Tensor:
        probs = self.route(embeds, instruction)
        top = probs.argmax(-1)
        p = probs.gather(1, top.unsqueeze(1))
        return self.prompts_weight[top] * (p / p.detach()).unsqueeze(-1)


@dataclass
class SmopConfig(MethodConfig):
    name: str = "smop"
    num_prompts: int = 4  # K prompts to route between; params = K x tokens x d + d x K
    num_virtual_tokens: int = 5  # length of each short prompt
    # std of the Gaussian noise on router logits during training (router perturbation)
    router_noise: float = 1.0


@register_method("smop", SmopConfig, size_knob="num_prompts", budget=Budget(pinned=98_304))
def build(model, cfg: SmopConfig):
    assert cfg.num_prompts >= 1, f"smop needs num_prompts >= 1, got {cfg.num_prompts}"
    freeze(model)
    ref = any_weight(model.get_input_embeddings())
    init = vocab_init(model, cfg.num_prompts * cfg.num_virtual_tokens)
    source = PromptMixture(cfg.num_prompts, cfg.num_virtual_tokens, model.config.hidden_size, ref,
                           cfg.router_noise, init_from=init)
    return PromptInserter(cfg.num_virtual_tokens, source).install(model)
