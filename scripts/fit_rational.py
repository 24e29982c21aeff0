"""Fit the coefficients of IAPT's rational activation (iapt.txt eq. 3) to GELU; print and optionally store them.

    python -m scripts.fit_rational                       # order (6, 5) on [-8, 8]: the values in pefts/blocks/activations.py
    python -m scripts.fit_rational --range 3 --json out.json

Method (float64, torch only): R(x) = P(x) / (1 + |Q(x)|) is fitted on `--points` equally spaced x in
[-range, range] to exact (erf) GELU by Sanathanan-Koerner iterations: each step solves the *linear*
least-squares problem P(x) - f(x) (1 + s(x) Q(x)) = f(x) with s = sign(Q) and row weights
1 / (1 + |Q|)^2 taken from the previous step (so it converges to the true, nonlinear residual), and
adds heavily weighted rows that pin R(+-range) and R'(+-range) to GELU's. Pinning the edge slopes
makes `Rational`'s linear continuation beyond the range follow GELU (slope 1 on the right, 0 on the
left) instead of the rational's own divergent tails. The iterate with the smallest max error is kept.
Prints the coefficients, the max error in range, and the error of `Rational` (with its linear
continuation) at |x| = 5, 10, 100, 1e4.
"""

from __future__ import annotations

import argparse
import json
import math

import torch

from pefts.blocks.activations import Rational, rational, rational_slope


def gelu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def gelu_slope(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0))) + x * torch.exp(-0.5 * x * x) / math.sqrt(
        2.0 * math.pi
    )


def _powers(x: torch.Tensor, k: int) -> torch.Tensor:
    return torch.stack([x**j for j in range(k + 1)], dim=-1)  # [N, k+1]: x^0..x^k


def _dpowers(x: torch.Tensor, k: int) -> torch.Tensor:
    return torch.stack([j * x ** (j - 1) if j else torch.zeros_like(x) for j in range(k + 1)], dim=-1)


def fit(
    m: int = 6,
    n: int = 5,
    bound: float = 8.0,
    points: int = 4001,
    iters: int = 40,
    edge_weight: float = 100.0,
) -> tuple[list[float], list[float], float]:
    """(numerator a_0..a_m, denominator b_1..b_n, max |R - GELU| on the fitting grid)."""
    dt = torch.float64
    x = torch.linspace(-bound, bound, points, dtype=dt)
    f = gelu(x)
    e = torch.tensor([-bound, bound], dtype=dt)
    fe, dfe = gelu(e), gelu_slope(e)
    V, Ve, dVe = _powers(x, max(m, n)), _powers(e, max(m, n)), _dpowers(e, max(m, n))
    s, se, w = torch.ones_like(x), torch.ones_like(e), torch.ones_like(x)
    best = None
    for _ in range(iters):
        # unknowns theta = (a_0..a_m, b_1..b_n); residual P - f s Q - f, linear in theta
        A = torch.cat([V[:, : m + 1], -(f * s)[:, None] * V[:, 1 : n + 1]], dim=1)
        A_val = torch.cat([Ve[:, : m + 1], -(fe * se)[:, None] * Ve[:, 1 : n + 1]], dim=1)
        # d/dx of the residual at the edges: P' - f' s Q - f s Q' = f'  (scaled by `bound` to value units)
        A_slope = torch.cat(
            [
                dVe[:, : m + 1],
                -(dfe * se)[:, None] * Ve[:, 1 : n + 1] - (fe * se)[:, None] * dVe[:, 1 : n + 1],
            ],
            dim=1,
        )
        sw = w.sqrt()
        lhs = torch.cat([A * sw[:, None], edge_weight * A_val, edge_weight * bound * A_slope])
        rhs = torch.cat([f * sw, edge_weight * fe, edge_weight * bound * dfe])
        theta = torch.linalg.lstsq(lhs, rhs).solution
        a, b = theta[: m + 1], theta[m + 1 :]
        err = (rational(x, a, b) - f).abs().max().item()
        if best is None or err < best[2]:
            best = (a.clone(), b.clone(), err)
        q, qe = x * _polyval_tail(b, x), e * _polyval_tail(b, e)
        s, se = _sign(q), _sign(qe)
        w = 1.0 / (1.0 + q.abs()) ** 2
    a, b, err = best
    return a.tolist(), b.tolist(), err


def _polyval_tail(b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return sum(b[i] * x**i for i in range(b.shape[0]))


def _sign(q: torch.Tensor) -> torch.Tensor:
    s = torch.sign(q)
    return torch.where(s == 0, torch.ones_like(s), s)


def _round(v: list[float], digits: int = 7, zero_below: float = 1e-10) -> list[float]:
    return [0.0 if abs(c) < zero_below else float(f"{c:.{digits}g}") for c in v]


def report(a: list[float], b: list[float], bound: float, grid: int = 160001) -> dict:
    """Errors of `Rational(a, b, bound)` (float64) against GELU in and beyond the fitted range."""
    act = Rational(a, b, bound=bound).double()
    x = torch.linspace(-bound, bound, grid, dtype=torch.float64)
    e = torch.tensor([-bound, bound], dtype=torch.float64)
    aa, bb = act.numerator.detach(), act.denominator.detach()
    with torch.no_grad():
        out = {
            "max_error_in_range": (act(x) - gelu(x)).abs().max().item(),
            "edge_slope_error": (rational_slope(e, aa, bb) - gelu_slope(e)).abs().max().item(),
            "error_at": {},
        }
        for v in (5.0, 10.0, 100.0, 1e4):
            t = torch.tensor([-v, v], dtype=torch.float64)
            d = (act(t) - gelu(t)).tolist()
            out["error_at"][f"-{v:g}"], out["error_at"][f"+{v:g}"] = d
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-degree", type=int, default=6, help="m: numerator degree")
    ap.add_argument("--den-degree", type=int, default=5, help="n: denominator degree")
    ap.add_argument("--range", type=float, default=8.0, help="fit on [-range, range]")
    ap.add_argument("--points", type=int, default=4001)
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--json", default=None, help="also write the result to this JSON file")
    args = ap.parse_args(argv)

    a, b, _ = fit(args.num_degree, args.den_degree, args.range, args.points, args.iters)
    a, b = _round(a), _round(b)  # the stored values; the report below is for these rounded values
    result = {
        "order": [args.num_degree, args.den_degree],
        "range": args.range,
        "numerator": a,
        "denominator": b,
    }
    result.update(report(a, b, args.range))
    print(json.dumps(result, indent=2))
    print("\n# paste into pefts/blocks/activations.py")
    print(f"RATIONAL_GELU_RANGE = {args.range}")
    print("RATIONAL_GELU_NUMERATOR = (  # a_0 .. a_m\n" + "".join(f"    {c:.6e},\n" for c in a) + ")")
    print("RATIONAL_GELU_DENOMINATOR = (  # b_1 .. b_n\n" + "".join(f"    {c:.6e},\n" for c in b) + ")")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return result


if __name__ == "__main__":
    main()
