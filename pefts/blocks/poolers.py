"""Poolers: summarise the hidden states of the instruction tokens into a fixed number of vectors.

Every pooler has the signature `forward(x: [B, T, d], mask: [B, T]) -> [B, n_out, d_out]` where
`mask` is 1 (True) exactly at instruction tokens; padding may sit on either side (or anywhere).
Padded positions never influence the output: their values are zeroed before any arithmetic and
they get exactly zero weight, so left and right padding give the same result. A row with no
instruction token at all gives zeros (never NaN). Each pooler exposes `n_out` and `out_dim`.

    MeanPooler(), MaxPooler(), LastTokenPooler()                  # n_out = 1, out_dim = d
    AttentionPooler(dim, n_queries)                               # IAPT eq. 2, n_out = n_queries
    CapsulePooler(dim, num_capsules)                              # PARADE eqs. 7-10, n_out = 1
    SelfAttentionMeanPooler(dim)                                  # ID-SPAM eq. 1, n_out = 1
    make_pooler("attention", dim=256, n_queries=4)
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _check(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Check shapes; return the boolean mask [B, T]."""
    assert x.dim() == 3, f"pooler input must be [B, T, d], got shape {tuple(x.shape)}"
    assert mask.shape == x.shape[:2], f"mask must be [B, T] = {tuple(x.shape[:2])}, got {tuple(mask.shape)}"
    return mask.bool()


def _prepare(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Check shapes; return (x with padded positions zeroed, boolean mask [B, T])."""
    m = _check(x, mask)
    return x.masked_fill(~m[..., None], 0.0), m


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """Softmax of `scores` along `dim` over positions where `mask` (broadcastable) is True.

    Masked positions get weight exactly 0; a slice with no True position gets all zeros."""
    mask = mask.expand_as(scores)
    w = torch.softmax(scores.masked_fill(~mask, torch.finfo(scores.dtype).min), dim=dim)
    return w * mask.to(w.dtype)


def mean_pool(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `x` [B, T, d] over the positions where `mask` [B, T] is true: [B, d], zero when none
    (`MeanPooler`, SMoP's router input)."""
    m = mask.bool()
    x = x.masked_fill(~m[..., None], 0.0)
    count = m.sum(dim=1, keepdim=True).clamp(min=1).to(x.dtype)  # [B, 1]
    return x.sum(dim=1) / count


class MeanPooler(nn.Module):
    """Average of the instruction tokens' states (IAPT's ablation IAPT-1, ID-SPAM's 'mean-pooling')."""

    n_out = 1

    def __init__(self, dim: int | None = None):
        super().__init__()
        self.out_dim = dim

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return mean_pool(x, _check(x, mask))[:, None, :]  # mean_pool zeroes the masked positions itself


class MaxPooler(nn.Module):
    """Element-wise max over the instruction tokens' states (IAPT section 3.4's 'max pooling')."""

    n_out = 1

    def __init__(self, dim: int | None = None):
        super().__init__()
        self.out_dim = dim

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = _check(x, mask)  # masked positions are overwritten with the minimum (no zeroed copy first)
        out = x.masked_fill(~m[..., None], torch.finfo(x.dtype).min).amax(dim=1)
        return torch.where(m.any(dim=1, keepdim=True), out, torch.zeros_like(out))[:, None, :]


class LastTokenPooler(nn.Module):
    """State of the last instruction token: the last position where mask == 1, wherever the padding
    is (PARA section 3: "the vector representation corresponding to the final token in the prompt";
    PARADE's ablation PARADE-1)."""

    n_out = 1

    def __init__(self, dim: int | None = None):
        super().__init__()
        self.out_dim = dim

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # no zeroed copy of x: the gathered position is an instruction token (or the row's output is zeros)
        m = _check(x, mask)
        pos = torch.arange(x.shape[1], device=x.device).expand_as(m)
        last = torch.where(m, pos, -1).amax(dim=1)  # [B], -1 for an empty row
        out = x[torch.arange(x.shape[0], device=x.device), last.clamp(min=0)]
        return torch.where((last >= 0)[:, None], out, torch.zeros_like(out))[:, None, :]


class AttentionPooler(nn.Module):
    """IAPT's self-attention pooler (iapt.txt eq. 2): U = h W_sa, A = Softmax over tokens (U), p = A^T h.

    dim: m, the width of h (IAPT pools *after* the down-projection); n_queries: l_sp, one learnable
    query column of W_sa in R^{m x l_sp} per soft token. No 1/sqrt(m) scaling (the paper has none).
    init_std: W_sa ~ N(0, init_std) (not given in the paper). Output [B, n_queries, dim].
    """

    def __init__(self, dim: int, n_queries: int, init_std: float = 0.02):
        super().__init__()
        assert dim > 0 and n_queries > 0, f"dim and n_queries must be positive, got {dim}, {n_queries}"
        self.n_out, self.out_dim = n_queries, dim
        self.weight = nn.Parameter(torch.empty(dim, n_queries))  # W_sa
        nn.init.normal_(self.weight, std=init_std)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x, m = _prepare(x, mask)
        u = x @ self.weight.to(x.dtype)  # [B, T, l_sp]
        a = masked_softmax(u, m[..., None], dim=1)  # over tokens
        return a.transpose(1, 2) @ x  # [B, l_sp, m]

    def pool_projected(self, x: torch.Tensor, mask: torch.Tensor, down: nn.Linear,
                       queries: tuple | None = None) -> torch.Tensor:
        """`self(down(x), mask)` without projecting every token (IAPT's inference path; `pool_projected`).
        queries: `projected_queries(down, self)` when the caller has them (computed for several layers at once)."""
        assert x.dim() == 3 and mask.shape == x.shape[:2], (
            f"pooler input must be [B, T, d] with mask [B, T], got {tuple(x.shape)} and {tuple(mask.shape)}")
        return pool_projected(x, mask.bool(), down.weight.to(x.dtype), self.weight.to(x.dtype),
                              None if down.bias is None else down.bias.to(x.dtype), queries)


def projected_queries(w: torch.Tensor, q: torch.Tensor, b: torch.Tensor | None) -> tuple:
    """((W^T W_sa)^T [(B,) l_sp, in], b W_sa [(B,) 1, l_sp] or None): what `pool_projected` needs of the weights
    alone. The query columns of several poolers that share one W (IAPT's L_s layers) may be concatenated in q
    and the result split, one matmul for all of them (`GeneratorBank`, once per batch)."""
    return q.transpose(-1, -2) @ w, None if b is None else b.unsqueeze(-2) @ q


def pool_projected(x: torch.Tensor, m: torch.Tensor, w: torch.Tensor, q: torch.Tensor,
                   b: torch.Tensor | None, queries: tuple | None = None) -> torch.Tensor:
    """`AttentionPooler` after a down-projection h = x W^T + b, without projecting every token: the scores
    are h W_sa = x (W^T W_sa) + b W_sa and the pool is A^T h = (A^T x) W^T + (sum_t A_t) b, so the
    [T, in] x [in, m] projection of all tokens becomes [in, m] x [m, l_sp] plus l_sp projected vectors.
    x [B, T, in], m [B, T] bool; w [m, in], q (W_sa) [m, l_sp], b [m] for one generator, or [B, m, in],
    [B, m, l_sp], [B, m] with row b's own (the tenant-per-row path): one implementation for both. Equal to
    the plain path up to float rounding (reassociated sums); positions outside `m` get weight exactly 0; a
    row without any instruction token gives zeros (sum_t A_t = 0).

    Inference runs it once per layer at prefill, so it avoids whole-[B, T, in] passes where the result is
    the same bit for bit: the scores of masked positions are overwritten, not computed from a zeroed copy of
    x; the weights are multiplied by the mask only when some row has no instruction token (elsewhere the
    softmax already gives masked positions exactly exp(finfo.min - max) = 0); and x's masked positions are
    zeroed (so that 0 x NaN cannot reach the pool) only when the pool came out non-finite, on CPU, where
    that check costs no device sync; other devices always zero them. queries: `projected_queries(w, q, b)`
    when the caller has them."""
    keep = m[..., None]
    cpu = x.device.type == "cpu"
    if not cpu:
        x = x.masked_fill(~keep, 0.0)
    wq, bq = projected_queries(w, q, b) if queries is None else (queries[0].to(x.dtype),
                                                                 None if queries[1] is None else queries[1].to(x.dtype))
    u = x @ wq.transpose(-1, -2)  # [B, T, l_sp]
    if bq is not None:
        u = u + bq
    u = u.masked_fill_(~keep, torch.finfo(u.dtype).min)
    a = torch.softmax(u, dim=1)  # over tokens
    if not cpu or not bool(m.any(1).all()):
        a = a * keep.to(a.dtype)  # rows without instruction tokens: zeros
    at = a.transpose(1, 2)
    p = at @ x
    if cpu and not bool(p.sum().isfinite()):  # a non-finite state at a masked position (0 x inf = NaN)
        p = at @ x.masked_fill(~keep, 0.0)
    p = p @ w.transpose(-1, -2)  # [B, l_sp, m]
    if b is not None:
        p = p + a.sum(1)[..., None] * b.unsqueeze(-2)
    return p


class CapsulePooler(nn.Module):
    """PARADE's attentional capsule pooler (parade.txt eqs. 7-10).

    Input capsules h'_j (the down-projected instruction states, width `dim`); K output capsules:
      eq. 7   m_{j->k} = h'_j W_k^cap                        (W_k^cap in R^{dim x d_cap})
      eq. 9   logits_{j,k} = v_k^T h'_j, n_{j,k} = Softmax_j(logits)   (attention-initialised routing)
      eq. 8   s_k = sum_j n_{j,k} m_{j->k},  c_k = squash(s_k) = |s_k|^2 / (1 + |s_k|^2) * s_k / |s_k|
      eq. 10  logits_{j,k} += c_k^T m_{j->k}; n = Softmax_j(logits); recompute s_k, c_k
    `routing_iters` (default 1, the paper's "one iteration step") repeats eq. 10. The agreement term
    uses the prediction m_{j->k} (width d_cap), as in dynamic routing (Sabour et al. 2017): the paper's
    c_k^T h'_j mixes widths d_cap and dim (see docs/deviations.md). Output: the K capsules
    concatenated, [B, 1, K * d_cap]; d_cap defaults to dim // K (PARADE: d_cap = d / K).
    init: W^cap and v ~ Uniform with mean 0 and std `init_std` (PARADE section 4.3 gives this for W^cap).
    routing_init: "attention" (eq. 9, PARADE) or "uniform": routing logits start at 0 and there is no v_k
    (the dynamic-routing capsule pooler of Zhang et al. 2018, PARADE's ablation PARADE-2).
    """

    n_out = 1

    def __init__(
        self,
        dim: int,
        num_capsules: int = 4,
        capsule_dim: int | None = None,
        routing_iters: int = 1,
        init_std: float = 0.02,
        eps: float = 1e-8,
        routing_init: str = "attention",
    ):
        super().__init__()
        assert routing_init in ("attention", "uniform"), (
            f"routing_init must be 'attention' or 'uniform', got '{routing_init}'")
        capsule_dim = dim // num_capsules if capsule_dim is None else capsule_dim
        assert num_capsules > 0 and capsule_dim > 0, (
            f"need num_capsules, capsule_dim > 0, got {num_capsules}, {capsule_dim}"
        )
        assert routing_iters >= 0, f"routing_iters must be >= 0, got {routing_iters}"
        self.num_capsules, self.capsule_dim, self.routing_iters, self.eps = (
            num_capsules,
            capsule_dim,
            routing_iters,
            eps,
        )
        self.out_dim = num_capsules * capsule_dim
        self.weight = nn.Parameter(torch.empty(num_capsules, dim, capsule_dim))  # W_k^cap
        bound = init_std * math.sqrt(3.0)  # Uniform(-b, b) has std b / sqrt(3)
        nn.init.uniform_(self.weight, -bound, bound)
        self.routing_query = None
        if routing_init == "attention":
            self.routing_query = nn.Parameter(torch.empty(num_capsules, dim))  # v_k
            nn.init.uniform_(self.routing_query, -bound, bound)

    def squash(self, s: torch.Tensor) -> torch.Tensor:
        """|s|^2 / (1 + |s|^2) * s / |s| along the last dim (eq. 8), safe at s = 0."""
        sq = (s * s).sum(dim=-1, keepdim=True)
        return s * (sq / (1.0 + sq)) / torch.sqrt(sq + self.eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # eqs. 7-10 as one matmul and elementwise reductions rather than einsums: einsum expands into
        # permutes, copies and bmm calls, which dominate on a narrow (down-projected) input at inference
        x, m = _prepare(x, mask)
        K, C = self.num_capsules, self.capsule_dim
        w = self.weight.to(x.dtype)  # [K, d, d_cap]
        pred = (x @ w.permute(1, 0, 2).reshape(w.shape[1], K * C)).view(*x.shape[:2], K, C)  # m_{j->k}
        if self.routing_query is None:  # dynamic routing: uniform coupling to start
            logits = pred.new_zeros(pred.shape[:3])
        else:
            logits = x @ self.routing_query.to(x.dtype).t()  # [B, T, K] (eq. 9)
        valid = m[..., None]  # [B, T, 1]
        caps = None
        for step in range(self.routing_iters + 1):
            if step > 0:
                logits = logits + (pred * caps[:, None]).sum(-1)  # eq. 10: c_k^T m_{j->k}
            n = masked_softmax(logits, valid, dim=1)  # over tokens j
            caps = self.squash((n[..., None] * pred).sum(1))  # eq. 8: [B, K, d_cap]
        return caps.reshape(x.shape[0], 1, self.out_dim)


class SelfAttentionMeanPooler(nn.Module):
    """ID-SPAM's pooler (id-spam.txt eq. 1): A = mean_t { softmax((E W_Q)(E W_K)^T / sqrt(d_k)) (E W_V) }.

    One learnable single-head self-attention layer over the instruction tokens (keys *and* queries
    restricted to instruction tokens), then the mean of its outputs over the instruction tokens.
    dim: width of E (ID-SPAM applies it to the input embeddings, before any down-projection);
    attn_dim: d_k (default dim); out_dim: width of W_V's output (default dim). The paper's parameter
    counts fit W_Q, W_K, W_V in R^{dim x dim} without biases (docs/deviations.md), hence the
    defaults. Weights use nn.Linear's default init (the paper does not give one). Output [B, 1, out_dim].
    """

    n_out = 1

    def __init__(self, dim: int, attn_dim: int | None = None, out_dim: int | None = None, bias: bool = False):
        super().__init__()
        attn_dim = dim if attn_dim is None else attn_dim
        self.out_dim = dim if out_dim is None else out_dim
        self.q = nn.Linear(dim, attn_dim, bias=bias)
        self.k = nn.Linear(dim, attn_dim, bias=bias)
        self.v = nn.Linear(dim, self.out_dim, bias=bias)
        self.scale = 1.0 / math.sqrt(attn_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x, m = _prepare(x, mask)
        scores = self.q(x) @ self.k(x).transpose(1, 2) * self.scale  # [B, T(query), T(key)]
        att = masked_softmax(scores, m[:, None, :], dim=-1)  # keys: instruction tokens only
        out = att @ self.v(x)  # [B, T, out_dim]
        count = m.sum(dim=1, keepdim=True).clamp(min=1).to(out.dtype)
        return ((out * m[..., None].to(out.dtype)).sum(dim=1) / count)[:, None, :]  # mean over queries


def self_attention_mean(x: torch.Tensor, m: torch.Tensor, wq: torch.Tensor, bq: torch.Tensor | None, wk: torch.Tensor,
                        bk: torch.Tensor | None, wv: torch.Tensor, bv: torch.Tensor | None, scale: float) -> torch.Tensor:
    """`SelfAttentionMeanPooler` for inference, with the mean over queries taken before the value projection:
    mean_t (A (E W_V^T + b_V))_t = (w E) W_V^T + (sum_j w_j) b_V with w = the mean of A's instruction rows,
    so the values of every token are never projected (a third of the pooler's matmul work; equal up to float
    rounding). Weights [out, in] and biases [out] for one pooler, or [B, out, in] and [B, out] with row b's own
    (the tenant-per-row path): one implementation for both. x [B, T, d], m [B, T] bool -> [B, 1, out_dim]."""
    keep = m[..., None]
    x = x.masked_fill(~keep, 0.0)

    def linear(w, b):
        y = x @ w.transpose(-1, -2)
        return y if b is None else y + b.unsqueeze(-2)

    scores = linear(wq, bq) @ linear(wk, bk).transpose(1, 2) * scale  # [B, T(query), T(key)]
    att = masked_softmax(scores, m[:, None, :], dim=-1)  # keys: instruction tokens only
    count = m.sum(dim=1, keepdim=True).clamp(min=1).to(att.dtype)  # [B, 1]
    w = (att * keep.to(att.dtype)).sum(dim=1, keepdim=True) / count[..., None]  # [B, 1, T]: mean over queries
    out = (w @ x) @ wv.transpose(-1, -2)  # [B, 1, out_dim]
    return out if bv is None else out + w.sum(-1, keepdim=True) * bv.unsqueeze(-2)


_POOLERS = {
    "attention": AttentionPooler,
    "capsule": CapsulePooler,
    "last": LastTokenPooler,
    "max": MaxPooler,
    "mean": MeanPooler,
    "self_attention": SelfAttentionMeanPooler,
}


def make_pooler(name: str, dim: int, **kw) -> nn.Module:
    """A fresh pooler over inputs of width `dim`: 'mean', 'max', 'last' (no parameters), 'attention'
    (IAPT, needs n_queries=), 'capsule' (PARADE), 'self_attention' (ID-SPAM). `kw` go to the class."""
    if name not in _POOLERS:
        raise ValueError(f"unknown pooler {name!r}; valid options: {', '.join(sorted(_POOLERS))}")
    return _POOLERS[name](dim, **kw)
