"""Generators: instruction hidden states -> soft prompts or scaling vectors (down, pool, act, up).

The order of pooling and down-projection follows each paper:

    IAPT   (iapt.txt eq. 1)    p = MLP_up(g(Pooler(MLP_down(h))))             pool_first=False
    PARADE (parade.txt eq. 6)  l = g(Pooler(h W_down)) W_up + b_up            pool_first=False
    PARA   (para.txt eq. 6)    l = g(Pooler(h) W_down) W_up + b_up            pool_first=True (last token)
    ID-SPAM (id-spam.txt eq. 2) S = resize(relu(W_up relu(W_down A)))         pool_first=True, out_activation=ReLU

`Generator` composes given modules (so layers can share them); `build_generator` builds one from
plain numbers; `GeneratorBank` builds one generator per layer with IAPT's cross-layer sharing
(section 3.6). Output: [B, n_tokens, out_dim] (n_tokens = l_sp soft tokens, or 1 for a scaling vector
of width out_dim, e.g. d_q + d_v + d_ffn, which the injector splits).

    bank = GeneratorBank(32, share_every=4, in_dim=4096, bottleneck=256, out_dim=4096, n_tokens=4,
                         pooler="attention", activation="rational")
    prompts = bank(layer_idx, hidden, mask)        # [B, 4, 4096]
    build_family(model, ..., generator_factory=bank_factory(share_every=4, bottleneck=256, ...))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from pefts.blocks.activations import Rational, make_activation, rational_by_powers
from pefts.blocks.poolers import (
    AttentionPooler,
    SelfAttentionMeanPooler,
    make_pooler,
    pool_projected,
    projected_queries,
    self_attention_mean,
)

INIT_MODES = ("default", "zero_up", "small_normal", "zero_up_ones_bias")


def init_generator_(
    down: nn.Linear, up: nn.Linear, mode: str = "default", std: float = 0.02, dist: str = "normal"
) -> None:
    """Initialise a generator's projections in place.

    'default': leave nn.Linear's own init. 'zero_up': W_up = 0, b_up = 0 (soft tokens start as zero
    vectors). 'small_normal': W_up ~ N(0, `std`), b_up = 0, down as nn.Linear (small, nonzero soft tokens:
    off RMSNorm's singular point at 0, see docs/deviations.md "IAPT initialisation"). 'zero_up_ones_bias' (PARA section 4.3, PARADE section 4.3):
    W_down ~ `dist` with mean 0 and std `std` ('normal': PARA; 'uniform': PARADE), down bias 0,
    W_up = 0 and b_up = 1, so a scaling-vector generator outputs exactly ones at step 0 and the
    model equals its frozen backbone."""
    if mode not in INIT_MODES:
        raise ValueError(f"unknown generator init {mode!r}; valid options: {', '.join(INIT_MODES)}")
    if mode == "default":
        return
    if mode == "zero_up":  # generated soft tokens start as zero vectors: the backbone is barely disturbed
        with torch.no_grad():
            up.weight.zero_()
            if up.bias is not None:
                up.bias.zero_()
        return
    if mode == "small_normal":
        with torch.no_grad():
            nn.init.normal_(up.weight, std=std)
            if up.bias is not None:
                up.bias.zero_()
        return
    assert up.bias is not None, "init 'zero_up_ones_bias' needs the up-projection bias (up_bias=True)"
    with torch.no_grad():
        if dist == "normal":
            nn.init.normal_(down.weight, std=std)
        elif dist == "uniform":
            bound = std * math.sqrt(3.0)
            nn.init.uniform_(down.weight, -bound, bound)
        else:
            raise ValueError(f"unknown init dist {dist!r}; valid options: normal, uniform")
        if down.bias is not None:
            down.bias.zero_()
        up.weight.zero_()
        up.bias.fill_(1.0)


class TiedUp(nn.Module):
    """An up-projection that reuses a down-projection's weight, transposed (W_up = W_down^T), with its own
    optional bias. IAPT's reproducing reading of its 8.4M budget (docs/deviations.md)."""

    def __init__(self, down: nn.Linear, bias: bool = True):
        super().__init__()
        self.down = [down]  # a plain list: the weight belongs to (and is counted with) the down-projection
        self.in_features, self.out_features = down.out_features, down.in_features
        self.bias = nn.Parameter(torch.zeros(down.in_features, device=down.weight.device)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.down[0].weight.t(), self.bias)


class Generator(nn.Module):
    """down -> pooler -> activation -> up (pool_first=False) or pooler -> down -> activation -> up.

    down: Linear(in_dim -> bottleneck); pooler: `forward(x, mask) -> [B, n_out, *]` over width
    bottleneck (pool_first=False) or in_dim (pool_first=True); activation: elementwise module;
    up: Linear(bottleneck -> n_tokens * out_dim / n_out). If the pooler gives n_out == n_tokens
    vectors, each is up-projected to one output token (IAPT); if it gives one vector and n_tokens > 1,
    the up-projection's output is reshaped into n_tokens tokens (ID-SPAM's "resize").
    out_activation: optional module applied last (ID-SPAM's outer ReLU in eq. 2). The modules are used
    as given, so passing the same module to several generators shares its parameters.
    """

    def __init__(
        self,
        down: nn.Linear,
        pooler: nn.Module,
        activation: nn.Module,
        up: nn.Linear,
        pool_first: bool = False,
        n_tokens: int = 1,
        out_activation: nn.Module | None = None,
        skip_first: bool = False,
    ):
        super().__init__()
        assert down.out_features == up.in_features, (
            f"down-projection width {down.out_features} != up-projection input {up.in_features}"
        )
        n_out = getattr(pooler, "n_out", 1)
        assert n_out in (1, n_tokens), f"pooler gives {n_out} vectors; need 1 or n_tokens={n_tokens}"
        assert up.out_features * n_out % n_tokens == 0, (
            f"up-projection width {up.out_features} x {n_out} pooled vectors does not split into {n_tokens} tokens"
        )
        self.down, self.pooler, self.activation, self.up = down, pooler, activation, up
        self.out_activation = out_activation
        self.pool_first, self.n_tokens, self.skip_first = pool_first, n_tokens, skip_first
        self.out_dim = up.out_features * n_out // n_tokens

    @staticmethod
    def skip_first_mask(mask: torch.Tensor) -> torch.Tensor:
        """The pooling mask under `skip_first`: each row's first instruction token dropped, unless it is
        the row's only one. A function of the mask alone, so a bank builds it once per batch."""
        mask = mask.bool()
        first = mask.float().argmax(1)
        several = mask.sum(1) > 1  # a one-token instruction keeps its token
        drop = torch.zeros_like(mask).scatter_(1, first[:, None], True) & several[:, None]
        return mask & ~drop

    def forward(self, x: torch.Tensor, mask: torch.Tensor, pool_mask: torch.Tensor | None = None,
                queries: tuple | None = None) -> torch.Tensor:
        """x: [B, T, in_dim] hidden states, mask: [B, T] (1 at instruction tokens) -> [B, n_tokens, out_dim].
        skip_first: the first instruction token of each row (BOS / a chat template's start, the attention
        sink whose massive activations otherwise dominate the pool) is left out of the pooler's mask.
        pool_mask: that pooling mask when the caller has it already (`skip_first_mask(mask)`; GeneratorBank
        builds it once for all its layers). Without autograd, down -> attention pooler runs as the
        attention pooler's `pool_projected`, and ID-SPAM's self-attention pooler as `self_attention_mean` (the
        same functions, reassociated; see there); `queries`: the attention pooler's `projected_queries` when
        the caller has them (GeneratorBank computes every layer's at once, per batch)."""
        if pool_mask is None:
            pool_mask = self.skip_first_mask(mask) if self.skip_first else mask
        if self.pool_first and not torch.is_grad_enabled() and type(self.pooler) is SelfAttentionMeanPooler:
            a = self.pooler
            z = self.down(self_attention_mean(x, pool_mask.bool(), a.q.weight, a.q.bias, a.k.weight, a.k.bias,
                                              a.v.weight, a.v.bias, a.scale))
        elif self.pool_first:
            z = self.down(self.pooler(x, pool_mask))
        elif (not torch.is_grad_enabled() and isinstance(self.pooler, AttentionPooler)
              and type(self.down) is nn.Linear):
            z = self.pooler.pool_projected(x, pool_mask, self.down, queries)
        else:
            z = self.pooler(self.down(x), pool_mask)
        y = self.up(self.activation(z))
        if self.out_activation is not None:
            y = self.out_activation(y)
        return y.reshape(x.shape[0], self.n_tokens, self.out_dim)


def _rational_rows(x: torch.Tensor, acts: Sequence[Rational], rows) -> torch.Tensor:
    """`Rational.forward` of x [B, ...] at inference with row b's coefficients from acts[bank of row b] (`rows`
    maps per-bank stacked tensors to rows): `rational_by_powers` with one coefficient matrix per row."""
    a0 = acts[0]
    ct = torch.promote_types(x.dtype, torch.float32)
    consts = [r._constants(ct, x.device, r.numerator.to(ct), r.denominator.to(ct)) for r in acts]
    pq, s = rows([c[2] for c in consts]), None  # [B, K, 2]
    if a0.bound is not None:
        s = rows([c[1] for c in consts])  # [B, 2]
        s = s.t().reshape(2, x.shape[0], *(1,) * (x.dim() - 1))
    return rational_by_powers(x.to(ct), pq, a0.bound, s).to(x.dtype)


def _iapt_structure(gens: Sequence[Generator]) -> bool:
    """Whether all tenants' generators have IAPT's structure with equal settings (`_iapt_rows`)."""
    g0 = gens[0]
    act = type(g0.activation)
    if not all(type(g) is Generator and not g.pool_first and type(g.pooler) is AttentionPooler
               and type(g.down) is nn.Linear and type(g.up) in (nn.Linear, TiedUp)
               and type(g.activation) is act and (g.down.bias is None) == (g0.down.bias is None)
               and (g.up.bias is None) == (g0.up.bias is None) and g.skip_first == g0.skip_first
               and g.n_tokens == g0.n_tokens and g.out_dim == g0.out_dim
               and type(g.out_activation) is type(g0.out_activation) for g in gens):
        return False
    if act is Rational:
        return len({(g.activation.bound, g.activation.numerator.numel(), g.activation.denominator.numel())
                    for g in gens}) == 1
    return _same_elementwise([g.activation for g in gens])


def _iapt_rows(gens: Sequence[Generator], x: torch.Tensor, pool_mask: torch.Tensor, rows) -> torch.Tensor:
    """IAPT's generator with row b's own weights (`rows`: per-bank tensors -> per row): the attention pool
    of the down-projection as `pool_projected` with per-row matrices, then batched matmuls."""
    g0 = gens[0]
    dt = g0.down.weight.dtype
    x = x.to(dt)
    z = pool_projected(x, pool_mask.bool(), rows([g.down.weight for g in gens]), rows([g.pooler.weight for g in gens]).to(dt),
                       rows([g.down.bias for g in gens]) if g0.down.bias is not None else None)  # [B, l_sp, m]
    if type(g0.activation) is Rational:
        z = _rational_rows(z, [g.activation for g in gens], rows)
    else:
        z = g0.activation(z)
    wu = rows([g.up.weight if type(g.up) is nn.Linear else g.up.down[0].weight.t() for g in gens])  # [B, out, m]
    y = torch.bmm(z, wu.transpose(1, 2))
    if g0.up.bias is not None:
        y = y + rows([g.up.bias for g in gens])[:, None, :]
    if g0.out_activation is not None:
        y = g0.out_activation(y)
    return y.reshape(x.shape[0], g0.n_tokens, g0.out_dim)


def _same_elementwise(acts: Sequence[nn.Module]) -> bool:
    """Whether all activations are the same parameter-free ReLU or GELU (the batched paths apply the first)."""
    t = type(acts[0])
    return all(type(a) is t for a in acts) and (
        t is nn.ReLU or (t is nn.GELU and len({a.approximate for a in acts}) == 1))


def _idspam_structure(gens: Sequence[Generator]) -> bool:
    """Whether all tenants' generators have ID-SPAM's structure with equal settings (`_idspam_rows`)."""
    g0 = gens[0]

    def biases(g):
        a = g.pooler
        return tuple(m.bias is None for m in (a.q, a.k, a.v, g.down, g.up))

    return all(type(g) is Generator and g.pool_first and type(g.pooler) is SelfAttentionMeanPooler
               and type(g.down) is nn.Linear and type(g.up) is nn.Linear and biases(g) == biases(g0)
               and g.pooler.scale == g0.pooler.scale and g.skip_first == g0.skip_first
               and g.n_tokens == g0.n_tokens and g.out_dim == g0.out_dim for g in gens) and (
        _same_elementwise([g.activation for g in gens])
        and (all(g.out_activation is None for g in gens) or _same_elementwise([g.out_activation for g in gens])))


def _idspam_rows(gens: Sequence[Generator], x: torch.Tensor, pool_mask: torch.Tensor, rows) -> torch.Tensor:
    """ID-SPAM's generator with row b's own weights: `self_attention_mean` with per-row matrices, then the
    down- and up-projections as batched matmuls (instead of `torch.func.vmap` over rows)."""
    g0 = gens[0]
    x = x.to(g0.down.weight.dtype)

    def w(get):
        return rows([get(g).weight for g in gens])

    def b(get):
        return None if get(g0).bias is None else rows([get(g).bias for g in gens])

    def linear(h, get):
        y = h @ w(get).transpose(1, 2)
        bias = b(get)
        return y if bias is None else y + bias[:, None, :]

    a = g0.pooler
    pooled = self_attention_mean(x, pool_mask.bool(), w(lambda g: g.pooler.q), b(lambda g: g.pooler.q),
                                 w(lambda g: g.pooler.k), b(lambda g: g.pooler.k), w(lambda g: g.pooler.v),
                                 b(lambda g: g.pooler.v), a.scale)  # [B, 1, in]
    y = linear(g0.activation(linear(pooled, lambda g: g.down)), lambda g: g.up)
    if g0.out_activation is not None:
        y = g0.out_activation(y)
    return y.reshape(x.shape[0], g0.n_tokens, g0.out_dim)


def _vmap_rows(gens: Sequence[Generator], x: torch.Tensor, mask: torch.Tensor, pool_mask: torch.Tensor,
               rows) -> torch.Tensor | None:
    """Any generator structure, row b with its own tenant's parameters and buffers: `torch.func.vmap` over
    the rows of one `functional_call` of the first tenant's generator (a library feature instead of a
    hand-batched copy of every pooler); None when the tenants' generators differ in structure."""
    from torch.func import functional_call, vmap

    def tensors(g):
        return {**dict(g.named_parameters(remove_duplicate=False)), **dict(g.named_buffers(remove_duplicate=False))}

    g0 = gens[0]
    per = [tensors(g) for g in gens]
    shapes = {k: (t.shape, t.dtype) for k, t in per[0].items()}
    if not all(type(g) is type(g0) and {k: (t.shape, t.dtype) for k, t in p.items()} == shapes
               for g, p in zip(gens, per)):
        return None
    state = {k: rows([p[k] for p in per]) for k in shapes}

    def one(st, xb, mb, pb):
        return functional_call(g0, st, (xb[None], mb[None], pb[None]), tie_weights=False, strict=True)[0]

    p = next((t for t in per[0].values() if t.is_floating_point()), None)
    return vmap(one)(state, x if p is None else x.to(p.dtype), mask, pool_mask)


def _pooler_kwargs(pooler: str, kw: dict | None, n_tokens: int) -> dict:
    kw = dict(kw or {})
    if pooler == "attention":
        kw.setdefault("n_queries", n_tokens)
    return kw


def build_generator(
    in_dim: int,
    bottleneck: int,
    out_dim: int,
    n_tokens: int = 1,
    pooler: str = "mean",
    pooler_kwargs: dict | None = None,
    activation: str = "gelu",
    activation_kwargs: dict | None = None,
    pool_first: bool = False,
    down_bias: bool = True,
    up_bias: bool = True,
    init: str = "default",
    init_std: float = 0.02,
    init_dist: str = "normal",
    out_activation: str | None = None,
) -> Generator:
    """One `Generator` from plain numbers and names (see `make_pooler`, `make_activation`).

    The pooler works at width `bottleneck` (pool_first=False) or `in_dim` (pool_first=True); the
    'attention' pooler gets n_queries=n_tokens unless given. The up-projection maps to out_dim per
    pooled vector, or to n_tokens * out_dim when the pooler gives a single vector."""
    bank = GeneratorBank(1, share_every=1, in_dim=in_dim, bottleneck=bottleneck, out_dim=out_dim, n_tokens=n_tokens,
                         pooler=pooler, pooler_kwargs=pooler_kwargs, activation=activation,
                         activation_kwargs=activation_kwargs, pool_first=pool_first, down_bias=down_bias,
                         up_bias=up_bias, init=init, init_std=init_std, init_dist=init_dist,
                         out_activation=out_activation)
    return bank.generators[0]


class GeneratorBank(nn.Module):
    """One generator per layer; every `share_every` consecutive layers share down, up and the
    activation but each layer keeps its own pooler (IAPT section 3.6, L_s = share_every).

    Generators [g * share_every, (g + 1) * share_every) form group g (the last group may be shorter);
    share_every=1 means no sharing. Shared parts are the *same module objects*, so `parameters()`
    (and `num_parameters()`) count them once. Other arguments as in `build_generator`.
    layer_ids: the model layer index each generator serves (default 0..num_layers-1), so the bank can
    serve a subset of layers, e.g. (12,) or (8, 9, ..., 31); groups follow this order.
    `bank(layer_idx, hidden, mask)` runs layer `layer_idx`'s generator: [B, n_tokens, out_dim]; this is
    the generator call of pefts/family.py (see `bank_factory`).
    """

    def __init__(
        self,
        num_layers: int,
        share_every: int,
        in_dim: int,
        bottleneck: int,
        out_dim: int,
        n_tokens: int = 1,
        pooler: str = "attention",
        pooler_kwargs: dict | None = None,
        activation: str = "rational",
        activation_kwargs: dict | None = None,
        pool_first: bool = False,
        down_bias: bool = True,
        up_bias: bool = True,
        init: str = "default",
        init_std: float = 0.02,
        init_dist: str = "normal",
        out_activation: str | None = None,
        layer_ids: Sequence[int] | None = None,
        tie_up_down: bool = False,
        up_bias_trainable: bool = True,
        pool_skip_first: bool = False,
    ):
        """Beyond `build_generator`'s arguments: `activation` may be a list of names that splits the layers
        into that many equal consecutive parts (IAPT-6: [relu, gelu] = ReLU in the lower half, GeLU in the
        upper); `tie_up_down` makes W_up = W_down^T (needs out_dim == in_dim, one token per pooled vector);
        `up_bias_trainable=False` keeps b_up at its init (ones for 'zero_up_ones_bias') as a constant;
        `pool_skip_first` leaves each row's first instruction token out of the poolers (see `Generator`)."""
        super().__init__()
        assert num_layers > 0, f"num_layers must be positive, got {num_layers}"
        assert share_every > 0, f"share_every (L_s) must be positive, got {share_every}"
        self.num_layers, self.share_every = num_layers, share_every
        self.layer_ids = tuple(range(num_layers)) if layer_ids is None else tuple(int(i) for i in layer_ids)
        assert len(self.layer_ids) == num_layers and len(set(self.layer_ids)) == num_layers, (
            f"layer_ids must be {num_layers} distinct indices, got {self.layer_ids}"
        )
        self._position = {lid: pos for pos, lid in enumerate(self.layer_ids)}
        pk = _pooler_kwargs(pooler, pooler_kwargs, n_tokens)
        acts = [activation] if isinstance(activation, str) else list(activation)
        assert acts, "activation list is empty"
        gens = []
        for layer in range(num_layers):
            pool = make_pooler(pooler, in_dim if pool_first else bottleneck, **pk)
            part = layer * len(acts) // num_layers  # which activation part this layer belongs to
            if layer % share_every == 0:  # first layer of a new group: fresh shared parts
                last = min(layer + share_every, num_layers) - 1
                assert last * len(acts) // num_layers == part, (
                    f"share_every={share_every} groups straddle the {len(acts)} activation parts {acts}")
                down = nn.Linear(in_dim, bottleneck, bias=down_bias)
                up_width = out_dim if pool.n_out == n_tokens else n_tokens * out_dim
                if tie_up_down:
                    assert up_width == in_dim, f"tie_up_down needs up width {up_width} == in_dim {in_dim}"
                    assert init == "default", (
                        f"tie_up_down needs init='default' (init='{init}' would zero the shared W_down too)")
                    up = TiedUp(down, bias=up_bias)
                else:
                    up = nn.Linear(bottleneck, up_width, bias=up_bias)
                    init_generator_(down, up, init, init_std, init_dist)
                if up.bias is not None and not up_bias_trainable:
                    up.bias.requires_grad_(False)
                act = make_activation(acts[part], **(activation_kwargs or {}))
                out_act = None if out_activation is None else make_activation(out_activation)
            gens.append(Generator(down, pool, act, up, pool_first, n_tokens, out_act, skip_first=pool_skip_first))
        self.generators = nn.ModuleList(gens)
        self._mask_cache = None  # (mask, its version, pooling mask): `_pool_mask`
        self._queries_cache = None  # (mask, (its version, weights' versions), {position: projected queries})
        self._query_tensors = None  # `_query_params`

    @property
    def num_groups(self) -> int:
        return -(-self.num_layers // self.share_every)

    def _pos(self, layer_idx: int) -> int:
        assert layer_idx in self._position, (
            f"layer_idx {layer_idx} is not served by this bank ({self.layer_ids})"
        )
        return self._position[layer_idx]

    def group_of(self, layer_idx: int) -> int:
        return self._pos(layer_idx) // self.share_every

    def generator(self, layer_idx: int) -> Generator:
        return self.generators[self._pos(layer_idx)]

    def forward(self, layer_idx: int, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        pos = self._pos(layer_idx)
        gen = self.generators[pos]
        queries = None if torch.is_grad_enabled() else self._queries(mask).get(pos)
        return gen(x, mask, self._pool_mask(mask) if gen.skip_first else mask, queries)

    def _query_params(self) -> list[torch.Tensor]:
        """The tensors `_queries` reads (the poolers' W_sa, MLP_down's weight and bias), listed once."""
        if self._query_tensors is None:
            self._query_tensors = [t for g in self.generators for t in (g.pooler.weight if type(g.pooler) is AttentionPooler
                                   else None, getattr(g.down, "weight", None), getattr(g.down, "bias", None))
                                   if t is not None]
        return self._query_tensors

    def _queries(self, mask: torch.Tensor) -> dict:
        """Without autograd: every attention-pooling layer's `projected_queries` (they depend on the weights
        alone), one matmul per group of layers sharing MLP_down instead of two small ones per layer at every
        prefill (issue #28). Kept for one batch, like `_pool_mask`: the injector passes one mask tensor to all
        layers of a backbone call and a new one to the next call; a direct caller that reuses a mask tensor
        gets them anew after any in-place write to the weights that bumps a version counter (optimizer steps,
        load_state_dict), not after a `.data` write."""
        w0 = self.generators[0].down.weight
        versions = (w0.dtype, w0.device, *(p._version for p in self._query_params()))
        c = self._queries_cache
        if c is not None and c[0] is mask and c[1] == (mask._version, versions):
            return c[2]
        out = {}
        for start in range(0, self.num_layers, self.share_every):
            gens = self.generators[start:start + self.share_every]
            down = gens[0].down
            if not all(type(g.pooler) is AttentionPooler and not g.pool_first and g.down is down
                       and type(down) is nn.Linear for g in gens):
                continue
            q = torch.cat([g.pooler.weight for g in gens], 1)  # [m, L_s * l_sp]: the group's query columns
            wq, bq = projected_queries(down.weight, q, down.bias)
            n = [g.pooler.weight.shape[1] for g in gens]
            for k, w_k, b_k in zip(range(start, start + len(gens)), wq.split(n, 0),
                                   bq.split(n, -1) if bq is not None else [None] * len(gens)):
                out[k] = (w_k, b_k)
        self._queries_cache = (mask, (mask._version, versions), out)
        return out

    def _pool_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """`Generator.skip_first_mask(mask)`, built once per batch: the injector passes the same mask
        tensor to every layer's generator call, so the last result is kept for that tensor (identity and
        in-place version checked; the strong reference keeps the identity from being reused)."""
        c = self._mask_cache
        if c is not None and c[0] is mask and c[1] == mask._version:
            return c[2]
        out = Generator.skip_first_mask(mask)
        self._mask_cache = (mask, mask._version, out)
        return out

    @staticmethod
    def forward_rows(banks: Sequence[GeneratorBank], layer_idx: int, x: torch.Tensor, mask: torch.Tensor,
                     bank_of_row: torch.Tensor, cache: dict | None = None) -> torch.Tensor | None:
        """Row b of `x` through `banks[bank_of_row[b]]` (several tenants' banks of one method) in one batched
        pass instead of one call per bank. Inference only (None with autograd on, and the caller loops).
        IAPT's structure (down: Linear, attention pooler after it, rational / GELU / ReLU, up: Linear or tied)
        runs as batched matmuls over the tenants' stacked weights (`_iapt_rows`), and so does ID-SPAM's
        (self-attention pooler first, `_idspam_rows`); any other generator whose
        tenants share one structure runs under `torch.func.vmap` over rows with each row's own parameters
        (`_vmap_rows`); None when the tenants' generators differ in structure. `cache`: a dict kept for one
        batch (the injector's per-call state): the per-row stacks are built once per batch for tensors that
        several layers share (IAPT's MLP_down / MLP_up / g across L_s layers). Equal to the per-bank calls
        up to float rounding."""
        if torch.is_grad_enabled():
            return None
        gens = [b.generator(layer_idx) for b in banks]
        cache = {} if cache is None else cache
        same = bank_of_row.numel() == len(gens) and bool(
            (bank_of_row == torch.arange(len(gens), device=bank_of_row.device)).all())

        def rows(ts):  # per-bank tensors -> stacked per row, once per batch for the same tensors
            key = tuple(id(t) for t in ts)
            hit = cache.get(key)
            if hit is None or hit[0] != tuple(t._version for t in ts):
                t = torch.stack(ts)
                hit = cache[key] = (tuple(t_._version for t_ in ts), t if same else t.index_select(0, bank_of_row),
                                    ts)  # `ts` held: the ids in the key stay theirs while the entry lives
            return hit[1]

        pool_mask = banks[0]._pool_mask(mask) if gens[0].skip_first else mask
        if _iapt_structure(gens):
            return _iapt_rows(gens, x, pool_mask, rows)
        if _idspam_structure(gens):
            return _idspam_rows(gens, x, pool_mask, rows)
        return _vmap_rows(gens, x, mask, pool_mask, rows)

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Parameter count with shared modules counted once."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def architecture_parameters(self) -> list[nn.Parameter]:
        """The learnable activations' coefficients (IAPT's Θ for bi-level optimisation, Appendix B),
        each shared tensor once; empty unless activation='rational'."""
        seen, out = set(), []
        for mod in self.modules():
            if isinstance(mod, Rational):
                for p in mod.parameters():
                    if id(p) not in seen:
                        seen.add(id(p))
                        out.append(p)
        return out


def bank_factory(**bank_kwargs) -> Callable[..., GeneratorBank]:
    """A `generator_factory` for `pefts.family.build_family`: called as
    `factory(in_features=d, out_features=o, n_tokens=n, layers=(...))`, it returns
    `GeneratorBank(len(layers), in_dim=d, out_dim=o, n_tokens=n, layer_ids=layers, **bank_kwargs)`;
    `bank_kwargs` must include share_every and bottleneck."""

    def factory(in_features: int, out_features: int, n_tokens: int, layers: Sequence[int]) -> GeneratorBank:
        return GeneratorBank(
            len(layers),
            in_dim=in_features,
            out_dim=out_features,
            n_tokens=n_tokens,
            layer_ids=layers,
            **bank_kwargs,
        )

    return factory
