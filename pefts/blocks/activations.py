"""Activations: one table (`ACTIVATIONS`) for the input-aware generators (ReLU, GELU and IAPT's learnable
rational (Padé) activation) and the baselines' bottleneck adapters (parameter-free ones).

IAPT (iapt.txt eq. 3) learns the generator's activation as a rational function of order (m, n) = (6, 5)

    R(x) = sum_{j=0..m} a_j x^j / (1 + | sum_{i=1..n} b_i x^i |)

initialised "by approximating the GeLU activation function" (section 4.3). The paper publishes no
coefficients, so `scripts/fit_rational.py` fits them here (exact erf-GELU, range [-8, 8]; see
docs/deviations.md). A degree-(6, 5) rational cannot follow GELU at both infinities (for large
|x| it grows like c*|x| or tends to a constant), so beyond the fitted range `Rational` continues as the
straight line tangent to R at the range's edge (value and slope of the *current*, learned R, so the
extension is learned too and gradients reach every a_j, b_i). Inside the range it is exactly eq. 3.

    act = make_activation("rational")   # or "gelu", "relu"
    ACTIVATIONS["swish"]()              # any entry of the table, e.g. for a bottleneck adapter
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

# Fitted by `python -m scripts.fit_rational` (order (6, 5), exact erf-GELU, x in [-8, 8], 4001 points,
# Sanathanan-Koerner reweighted linear least squares with value and slope pinned to GELU's at +-8).
# Max |R - GELU| on [-8, 8]: 4.3e-3 (dense grid of 160001 points); slope at +-8 within 2e-7 of GELU's, so the
# linear continuation stays within 2e-3 of GELU up to |x| = 1e4 (errors at |x| = 5, 10, 100, 1e4: 1.3e-3, 9e-7,
# 1.5e-5, 1.6e-3). The fit is even-symmetric: b_odd = 0, a_odd = b_even / 2 (i.e. R = x/2 + even part).
RATIONAL_GELU_RANGE = 8.0
RATIONAL_GELU_NUMERATOR = (  # a_0 .. a_6
    -3.995217e-03,
    5.000000e-01,
    4.225526e-01,
    1.323804e-01,
    1.922843e-02,
    1.291886e-03,
    3.170870e-05,
)
RATIONAL_GELU_DENOMINATOR = (  # b_1 .. b_5
    0.0,
    2.647608e-01,
    0.0,
    2.583772e-03,
    0.0,
)
RATIONAL_GELU_MAX_ERROR = 4.3e-3


def _polyval(coef: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """coef[0] + coef[1] x + ... + coef[-1] x^(len-1), by Horner's rule (bounded intermediates). coef is
    [K], or [K, *shape] broadcasting against x (per-row coefficients: [K, B, 1, ...])."""
    c = coef.unbind(0)  # one op for all coefficients (not one select per step)
    y = torch.zeros_like(x) + c[-1]
    for k in range(len(c) - 2, -1, -1):
        y = y * x + c[k]
    return y


def rational(x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """IAPT eq. 3: P(x) / (1 + |Q(x)|), numerator = (a_0..a_m), denominator = (b_1..b_n)."""
    p = _polyval(numerator, x)
    q = x * _polyval(denominator, x)
    return p / (1.0 + q.abs())


def bounded_rational(x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor, bound: float | None,
                     values: torch.Tensor | None = None, slopes: torch.Tensor | None = None) -> torch.Tensor:
    """`Rational`'s function: eq. 3 inside [-bound, bound] (inputs clamped before the polynomials) and the
    tangent at the nearer edge outside (`values`, `slopes`: R and dR/dx at -bound, +bound, leading dim 2).
    The coefficients (and edges) are [K] (one activation) or [K, B, 1, ...] (row b of x with its own, the
    tenant-per-row path): one implementation for both."""
    if bound is None:
        return rational(x, numerator, denominator)
    c = bound
    y = rational(x.clamp(-c, c), numerator, denominator)
    y = torch.where(x > c, values[1] + slopes[1] * (x - c), y)
    return torch.where(x < -c, values[0] + slopes[0] * (x + c), y)


def rational_matrix(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """The coefficients of P and Q(x) = x * sum_i b_i x^(i-1) as the columns of one matrix [..., K, 2] (zero-padded
    to K = max(m + 1, n + 1) powers): `rational_by_powers` evaluates both with one matmul. numerator [..., m + 1],
    denominator [..., n] (a leading row dimension for the tenant-per-row path)."""
    K = max(numerator.shape[-1], denominator.shape[-1] + 1)
    a = nn.functional.pad(numerator, (0, K - numerator.shape[-1]))
    b = nn.functional.pad(denominator, (1, K - 1 - denominator.shape[-1]))
    return torch.stack([a, b], -1)


def rational_by_powers(x: torch.Tensor, pq: torch.Tensor, bound: float | None,
                       slopes: torch.Tensor | None = None) -> torch.Tensor:
    """`bounded_rational` for inference: P and Q from the powers of x (one Vandermonde matrix and one matmul,
    a dozen ops instead of two Horner chains of about 40), the same function up to float rounding. IAPT
    runs it once per layer at prefill, where the ops' fixed cost dominates its [B, l_sp, m] input. pq:
    `rational_matrix`, [K, 2] or [B, K, 2] (row b of x with its own); slopes: dR/dx at -bound, +bound, leading
    dim 2 ([2] or [2, B, 1, ...]). Beyond the bound, R(clamped x) is the edge value, so R continues as
    R(edge) + slope * (x - edge), as in `bounded_rational`."""
    xc = x if bound is None else x.clamp(-bound, bound)
    K = pq.shape[-2]
    v = torch.linalg.vander(xc, N=K)  # [..., K]: x^0 .. x^(K-1)
    if pq.dim() == 2:
        p, q = (v @ pq).unbind(-1)
    else:
        p, q = torch.bmm(v.reshape(x.shape[0], -1, K), pq).reshape(*x.shape, 2).unbind(-1)
    y = p / (1.0 + q.abs())
    if bound is None:
        return y
    return y + torch.where(x > 0, slopes[1], slopes[0]) * (x - xc)


def rational_slope(x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """dR/dx of `rational` (analytic; differentiable in the coefficients)."""
    m, n = numerator.shape[0] - 1, denominator.shape[0]
    dnum = numerator[1:] * torch.arange(1, m + 1, dtype=numerator.dtype, device=numerator.device)
    dden = denominator * torch.arange(1, n + 1, dtype=denominator.dtype, device=denominator.device)
    p, q = _polyval(numerator, x), x * _polyval(denominator, x)
    dp = _polyval(dnum, x) if m > 0 else torch.zeros_like(x)
    dq = _polyval(dden, x)
    den = 1.0 + q.abs()
    return dp / den - p * torch.sign(q) * dq / den**2


class Rational(nn.Module):
    """Learnable rational activation of IAPT eq. 3 (Padé activation unit, Molina et al. 2019).

    numerator: (a_0..a_m) initial values; denominator: (b_1..b_n) initial values. Give both or
    neither; neither means order (6, 5) initialised to approximate GELU (the fit stored above).
    bound: for |x| > bound, R continues linearly with its value and slope at +-bound (C1); inputs
    are clamped before the polynomials, so any finite input gives a finite output. None applies
    eq. 3 on the whole real line (as the paper writes it; unsafe for |x| >> bound).
    Computation runs in at least float32 whatever the input dtype; the output has the input's dtype.
    """

    def __init__(
        self,
        numerator: Sequence[float] | None = None,
        denominator: Sequence[float] | None = None,
        bound: float | None = RATIONAL_GELU_RANGE,
    ):
        super().__init__()
        assert (numerator is None) == (denominator is None), "give both numerator and denominator, or neither"
        if numerator is None:
            numerator, denominator = RATIONAL_GELU_NUMERATOR, RATIONAL_GELU_DENOMINATOR
        assert len(numerator) >= 1 and len(denominator) >= 1, "need a_0 and at least b_1"
        assert bound is None or bound > 0, f"bound must be positive or None, got {bound}"
        self.numerator = nn.Parameter(torch.tensor(list(numerator), dtype=torch.float32))
        self.denominator = nn.Parameter(torch.tensor(list(denominator), dtype=torch.float32))
        self.bound = None if bound is None else float(bound)
        # ((dtype, device), numerator, denominator, constants): `_constants`, reused while no gradient is needed
        self._cache = None

    def _constants(self, ct: torch.dtype, device, a: torch.Tensor, b: torch.Tensor):
        """(R at -bound, +bound; dR/dx there; `rational_matrix` of the coefficients), edges None without a bound.
        They depend on the coefficients only, so without autograd (inference) they are computed once per
        coefficient values (compared with a copy of them, so any write to the coefficients, `p.data.copy_()`
        included, invalidates the cache) and dtype, and reused across calls; with autograd they are recomputed
        so gradients reach every a_j, b_i."""
        grad = torch.is_grad_enabled() and (self.numerator.requires_grad or self.denominator.requires_grad)
        cache = not grad and not torch.is_inference_mode_enabled()
        key = (ct, str(device))
        if cache and self._cache is not None:
            k, num, den, out = self._cache
            if (k == key and num.device == self.numerator.device and torch.equal(num, self.numerator)
                    and torch.equal(den, self.denominator)):
                return out
        v = s = None
        if self.bound is not None:
            edges = torch.tensor([-self.bound, self.bound], dtype=ct, device=device)
            v, s = rational(edges, a, b), rational_slope(edges, a, b)
        out = (v, s, rational_matrix(a, b))
        if cache:
            self._cache = (key, self.numerator.detach().clone(), self.denominator.detach().clone(), out)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ct = torch.promote_types(x.dtype, torch.float32)
        xc, a, b = x.to(ct), self.numerator.to(ct), self.denominator.to(ct)
        v, s, pq = self._constants(ct, x.device, a, b)
        if not torch.is_grad_enabled():  # inference: the same function in fewer ops (`rational_by_powers`)
            return rational_by_powers(xc, pq, self.bound, s).to(x.dtype)
        return bounded_rational(xc, a, b, self.bound, v, s).to(x.dtype)

    def extra_repr(self) -> str:
        m, n = self.numerator.numel() - 1, self.denominator.numel()
        return f"order=({m}, {n}), bound={self.bound}"


# The one activation table of pefts/blocks: name -> module class (instantiate for a fresh module).
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "gelu": nn.GELU,
    "identity": nn.Identity,
    "rational": Rational,
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "tanh": nn.Tanh,
}
GENERATOR_ACTIVATIONS = ("gelu", "rational", "relu")  # the input-aware generators' choices (`make_activation`)
ADAPTER_ACTIVATIONS = ("relu", "gelu", "silu", "swish", "tanh", "identity")  # bottleneck adapters (parameter-free)


def make_activation(name: str, **kw) -> nn.Module:
    """A fresh generator activation module: 'relu' (nn.ReLU), 'gelu' (nn.GELU, exact erf form unless
    approximate='tanh'), 'rational' (`Rational`, learnable, GELU-initialised). `kw` go to the class."""
    if name not in GENERATOR_ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; valid options: {', '.join(sorted(GENERATOR_ACTIVATIONS))}")
    return ACTIVATIONS[name](**kw)
