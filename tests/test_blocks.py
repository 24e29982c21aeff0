"""Fast tests of the input-aware family's building blocks: poolers, activations, generators, sharing."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pefts.blocks.activations import (
    RATIONAL_GELU_DENOMINATOR,
    RATIONAL_GELU_MAX_ERROR,
    RATIONAL_GELU_NUMERATOR,
    RATIONAL_GELU_RANGE,
    Rational,
    make_activation,
    rational,
)
from pefts.blocks.generators import Generator, GeneratorBank, bank_factory, build_generator, init_generator_
from pefts.blocks.poolers import (
    AttentionPooler,
    CapsulePooler,
    LastTokenPooler,
    MaxPooler,
    MeanPooler,
    SelfAttentionMeanPooler,
    make_pooler,
)

D = 8
LENGTHS = [5, 2, 7, 1]  # instruction lengths of the test batch
T = 9  # padded length


def _poolers() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {
        "mean": MeanPooler(D),
        "max": MaxPooler(D),
        "last": LastTokenPooler(D),
        "attention": AttentionPooler(D, n_queries=3, init_std=0.5),
        "capsule": CapsulePooler(D, num_capsules=4, init_std=0.5),
        "capsule2": CapsulePooler(D, num_capsules=2, capsule_dim=3, routing_iters=2, init_std=0.5),
        "self_attention": SelfAttentionMeanPooler(D),
    }


def _batch(
    seed: int = 1,
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample instruction states, their right-padded and left-padded batches, and both masks."""
    g = torch.Generator().manual_seed(seed)
    seqs = [torch.randn(n, D, generator=g) for n in LENGTHS]
    right = torch.randn(len(seqs), T, D, generator=g) * 100  # garbage in the padding
    left = torch.randn(len(seqs), T, D, generator=g) * 100
    mr, ml = torch.zeros(len(seqs), T), torch.zeros(len(seqs), T)
    for i, s in enumerate(seqs):
        right[i, : len(s)], mr[i, : len(s)] = s, 1
        left[i, T - len(s) :], ml[i, T - len(s) :] = s, 1
    return seqs, right, mr, left, ml


# ---------------------------------------------------------------- poolers


@pytest.mark.parametrize("name", list(_poolers()))
def test_pooler_shape_and_padding_side(name):
    pool = _poolers()[name]
    seqs, right, mr, left, ml = _batch()
    out_r, out_l = pool(right, mr), pool(left, ml)
    assert out_r.shape == (len(seqs), pool.n_out, pool.out_dim)
    torch.testing.assert_close(out_r, out_l, atol=1e-6, rtol=1e-5)
    for i, s in enumerate(seqs):  # equal to the unpadded sample alone
        alone = pool(s[None], torch.ones(1, len(s)))
        torch.testing.assert_close(out_r[i : i + 1], alone, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", list(_poolers()))
def test_pooler_ignores_padded_values(name):
    pool = _poolers()[name]
    _, right, mr, _, _ = _batch()
    x = right.clone().requires_grad_()
    ref = pool(x, mr)
    changed = right.clone()
    changed[mr == 0] = torch.randn(int((mr == 0).sum()), D) * 1e4
    torch.testing.assert_close(pool(changed, mr), ref, atol=0, rtol=0)
    changed[mr == 0] = float("nan")
    torch.testing.assert_close(pool(changed, mr), ref, atol=0, rtol=0)
    ref.sum().backward()
    assert x.grad[mr == 0].abs().max() == 0, "gradient reached padded positions"


@pytest.mark.parametrize("name", list(_poolers()))
def test_pooler_empty_row_gives_zeros(name):
    pool = _poolers()[name]
    x, mask = torch.randn(2, 4, D), torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]])
    x[1] = float("nan")  # an empty row's states never reach its output, whatever they hold
    out = pool(x, mask)
    assert torch.isfinite(out).all() and out[1].abs().max() == 0


def test_pooler_values():
    x = torch.arange(2 * 5 * D, dtype=torch.float32).reshape(2, 5, D)
    mask = torch.tensor([[1, 1, 0, 1, 0], [0, 0, 1, 1, 1]])  # a hole: last token is position 3
    torch.testing.assert_close(LastTokenPooler()(x, mask)[:, 0], torch.stack([x[0, 3], x[1, 4]]))
    torch.testing.assert_close(MeanPooler()(x, mask)[0, 0], x[0, [0, 1, 3]].mean(0))
    torch.testing.assert_close(MaxPooler()(-x, mask)[1, 0], -x[1, 2])


def test_attention_pooler_is_iapt_eq2():
    pool = AttentionPooler(D, n_queries=3, init_std=0.5)
    h = torch.randn(6, D)
    a = torch.softmax(h @ pool.weight, dim=0)  # U = h W_sa, softmax along the first (token) dim
    torch.testing.assert_close(pool(h[None], torch.ones(1, 6))[0], a.T @ h)


def _capsule_reference(pool: CapsulePooler, h: torch.Tensor) -> torch.Tensor:
    """PARADE eqs. 7-10 written with loops over capsules (one sample, no padding)."""
    caps = []
    for k in range(pool.num_capsules):
        pred = h @ pool.weight[k]  # eq. 7, [T, d_cap]
        logits = h @ pool.routing_query[k]  # eq. 9
        c = None
        for _ in range(pool.routing_iters + 1):
            if c is not None:
                logits = logits + pred @ c  # eq. 10 (agreement with the prediction vectors)
            s = torch.softmax(logits, dim=0) @ pred  # eq. 8
            c = (s.norm() ** 2 / (1 + s.norm() ** 2)) * s / s.norm()
        caps.append(c)
    return torch.cat(caps)


@pytest.mark.parametrize("iters", [0, 1, 3])
def test_capsule_pooler_matches_equations(iters):
    torch.manual_seed(0)
    pool = CapsulePooler(D, num_capsules=4, routing_iters=iters, init_std=0.5)
    h = torch.randn(6, D)
    out = pool(h[None], torch.ones(1, 6))[0, 0]
    torch.testing.assert_close(out, _capsule_reference(pool, h), atol=1e-5, rtol=1e-4)
    assert (out.view(4, -1).norm(dim=-1) < 1).all(), "squashed capsules have norm < 1"


def test_capsule_refinement_changes_routing():
    torch.manual_seed(0)
    p0 = CapsulePooler(D, num_capsules=4, routing_iters=0, init_std=0.5)
    p1 = CapsulePooler(D, num_capsules=4, routing_iters=1, init_std=0.5)
    p1.load_state_dict(p0.state_dict())
    x, mask = torch.randn(2, 5, D), torch.ones(2, 5)
    assert not torch.allclose(p0(x, mask), p1(x, mask))


def test_self_attention_mean_pooler_is_idspam_eq1():
    pool = SelfAttentionMeanPooler(D)
    e = torch.randn(5, D)
    q, k, v = e @ pool.q.weight.T, e @ pool.k.weight.T, e @ pool.v.weight.T
    ref = (torch.softmax(q @ k.T / math.sqrt(D), dim=-1) @ v).mean(0)
    torch.testing.assert_close(pool(e[None], torch.ones(1, 5))[0, 0], ref)
    assert sum(p.numel() for p in pool.parameters()) == 3 * D * D  # W_Q, W_K, W_V, no biases


def test_make_pooler_errors():
    assert isinstance(make_pooler("capsule", D, num_capsules=2), CapsulePooler)
    with pytest.raises(
        ValueError, match="valid options: attention, capsule, last, max, mean, self_attention"
    ):
        make_pooler("avg", D)
    with pytest.raises(AssertionError, match="mask must be"):
        MeanPooler()(torch.randn(2, 3, D), torch.ones(2, 4))


# ---------------------------------------------------------------- activations


def _gelu64(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def test_rational_init_approximates_gelu_on_fitted_range():
    act = Rational()
    assert act.numerator.numel() == 7 and act.denominator.numel() == 5, "IAPT order (m, n) = (6, 5)"
    x = torch.linspace(-RATIONAL_GELU_RANGE, RATIONAL_GELU_RANGE, 20001)
    err = (act(x) - nn.functional.gelu(x)).abs().max().item()
    assert err < 1e-2 and err <= RATIONAL_GELU_MAX_ERROR * 1.01, err


@pytest.mark.parametrize("v", [5.0, 10.0, 100.0, 1e4])
def test_rational_outside_range_is_finite_and_gelu_like(v):
    act = Rational()
    x = torch.tensor([-v, v])
    y = act(x)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, nn.functional.gelu(x), atol=1e-2 + 1e-6 * v, rtol=0)


def test_rational_extreme_inputs_and_dtypes():
    act = Rational()
    x = torch.tensor([-1e30, -1e6, 1e6, 1e30])
    assert torch.isfinite(act(x)).all()
    for dt in (torch.float16, torch.bfloat16, torch.float64):
        xx = torch.tensor([-1e4, -8.5, -1.0, 0.0, 1.0, 8.5, 1e4], dtype=dt)
        y = act(xx)
        assert y.dtype == dt and torch.isfinite(y).all()
        torch.testing.assert_close(y.double(), _gelu64(xx.double()), atol=2e-2, rtol=1e-2)


def test_rational_unbounded_formula_diverges():
    """Why the linear continuation exists: eq. 3 itself leaves GELU far outside the fitted range."""
    raw = Rational(bound=None)
    assert (raw(torch.tensor([-1e4])) - 0).abs().item() > 1.0
    x = torch.linspace(-RATIONAL_GELU_RANGE, RATIONAL_GELU_RANGE, 1001)
    torch.testing.assert_close(raw(x), Rational()(x))  # identical inside the range


def test_rational_is_c1_at_the_edges():
    act = Rational().double()
    c, eps = RATIONAL_GELU_RANGE, 1e-6
    for edge in (-c, c):
        x = torch.tensor([edge - eps, edge, edge + eps], dtype=torch.float64, requires_grad=True)
        y = act(x)
        (g,) = torch.autograd.grad(y.sum(), x)
        assert abs(y[0] - y[2]).item() < 1e-5
        assert abs(g[0] - g[2]).item() < 1e-4


def test_rational_gradients_reach_all_coefficients():
    act = Rational()
    torch.manual_seed(0)
    x = torch.cat([torch.randn(200) * 3, torch.tensor([-50.0, 20.0, 1e4])]).requires_grad_()
    (act(x) * torch.randn(x.shape)).sum().backward()
    for p in (act.numerator, act.denominator):
        assert torch.isfinite(p.grad).all() and (p.grad != 0).all(), p.grad
    assert torch.isfinite(x.grad).all()


def test_rational_edge_cache_follows_every_write_to_the_coefficients():
    """Without autograd the edge values are cached; any write to the coefficients (an optimizer step,
    load_state_dict, `p.data.copy_()` which bumps no version counter) must give the fresh result."""
    act = Rational()
    x = torch.tensor([-30.0, 0.5, 30.0])
    with torch.no_grad():
        before = act(x)
        act.numerator.data.copy_(act.numerator.data * 2)  # no _version bump
        act.denominator.data[0] += 0.1
        after = act(x)
    fresh = Rational(act.numerator.tolist(), act.denominator.tolist())
    with torch.no_grad():  # the same (inference) path, edges computed anew
        want = fresh(x)
    assert torch.equal(after, want) and not torch.allclose(before, after)
    with torch.no_grad():
        act.load_state_dict(Rational().state_dict())
        assert torch.equal(act(x), before)


def test_fit_script_reproduces_stored_coefficients():
    from scripts.fit_rational import fit

    a, b, err = fit(6, 5, RATIONAL_GELU_RANGE)
    assert err < 1e-2
    x = torch.linspace(-RATIONAL_GELU_RANGE, RATIONAL_GELU_RANGE, 4001, dtype=torch.float64)
    stored = rational(
        x, torch.tensor(RATIONAL_GELU_NUMERATOR).double(), torch.tensor(RATIONAL_GELU_DENOMINATOR).double()
    )
    torch.testing.assert_close(rational(x, torch.tensor(a), torch.tensor(b)), stored, atol=1e-5, rtol=0)


def test_make_activation():
    assert isinstance(make_activation("relu"), nn.ReLU)
    assert isinstance(make_activation("gelu"), nn.GELU)
    assert isinstance(make_activation("rational", bound=4.0), Rational)
    with pytest.raises(ValueError, match="valid options: gelu, rational, relu"):
        make_activation("swish")


# ---------------------------------------------------------------- generators


def test_generator_order():
    torch.manual_seed(0)
    down, up, act = nn.Linear(D, 4), nn.Linear(4, 6), nn.GELU()
    x, mask = torch.randn(3, 5, D), torch.ones(3, 5)
    mask[0, 3:] = 0
    pool_in, pool_b = MaxPooler(D), MaxPooler(4)
    first = Generator(down, pool_in, act, up, pool_first=True)(x, mask)
    later = Generator(down, pool_b, act, up, pool_first=False)(x, mask)
    torch.testing.assert_close(first, up(act(down(pool_in(x, mask)))))  # PARA: pool, down, act, up
    torch.testing.assert_close(later, up(act(pool_b(down(x), mask))))  # IAPT/PARADE: down, pool, act, up
    assert not torch.allclose(first, later)  # max pooling does not commute with the projection
    mean_first = Generator(down, MeanPooler(), act, up, pool_first=True)(x, mask)
    mean_later = Generator(down, MeanPooler(), act, up, pool_first=False)(x, mask)
    torch.testing.assert_close(mean_first, mean_later)  # ...but mean pooling does (affine map)


@pytest.mark.parametrize(
    "kw, shape",
    [
        (
            dict(pooler="attention", n_tokens=4, activation="rational"),
            (2, 4, 12),
        ),  # IAPT: one token per query
        (dict(pooler="capsule", pooler_kwargs=dict(num_capsules=2)), (2, 1, 12)),  # PARADE: a scaling vector
        (dict(pooler="last", pool_first=True), (2, 1, 12)),  # PARA
        (
            dict(
                pooler="self_attention", pool_first=True, n_tokens=3, activation="relu", out_activation="relu"
            ),
            (2, 3, 12),
        ),
    ],
)
def test_generator_shapes_and_padding(kw, shape):
    torch.manual_seed(0)
    gen = build_generator(D, 4, 12, **kw)
    _, right, mr, left, ml = _batch()
    right, mr, left, ml = right[:2], mr[:2], left[:2], ml[:2]
    out = gen(right, mr)
    assert out.shape == shape
    torch.testing.assert_close(out, gen(left, ml), atol=1e-5, rtol=1e-5)
    if kw.get("out_activation") == "relu":
        assert (out >= 0).all()


@pytest.mark.parametrize("pooler", ["capsule", "last", "attention", "self_attention"])
def test_zero_up_ones_bias_outputs_exactly_ones(pooler):
    torch.manual_seed(0)
    gen = build_generator(
        D, 4, 10, pooler=pooler, init="zero_up_ones_bias", init_dist="uniform", pool_first=pooler == "last"
    )
    x, mask = torch.randn(3, 5, D) * 10, torch.ones(3, 5)
    out = gen(x, mask)
    assert torch.equal(out, torch.ones_like(out))
    out.sum().backward()
    assert gen.up.weight.grad.abs().sum() > 0, "W_up must still learn from step 0"
    assert abs(gen.down.weight.std().item() - 0.02) < 0.01


def test_generator_init_errors():
    with pytest.raises(AssertionError, match="up_bias=True"):
        build_generator(D, 4, 10, init="zero_up_ones_bias", up_bias=False)
    with pytest.raises(ValueError, match="valid options: default, zero_up, small_normal, zero_up_ones_bias"):
        init_generator_(nn.Linear(D, 4), nn.Linear(4, 10), "zeros")
    with pytest.raises(AssertionError, match="pooler gives 3 vectors"):
        Generator(nn.Linear(D, 4), AttentionPooler(4, 3), nn.ReLU(), nn.Linear(4, 8), n_tokens=2)


# ---------------------------------------------------------------- cross-layer sharing


def _bank(share_every: int) -> GeneratorBank:
    torch.manual_seed(0)
    return GeneratorBank(
        6,
        share_every,
        in_dim=16,
        bottleneck=8,
        out_dim=16,
        n_tokens=2,
        pooler="attention",
        activation="rational",
    )


def test_bank_sharing_identity():
    bank = _bank(4)  # groups: layers 0-3 and 4-5
    g = bank.generators
    assert bank.num_groups == 2 and [bank.group_of(i) for i in range(6)] == [0, 0, 0, 0, 1, 1]
    for part in ("down", "up", "activation"):
        assert all(getattr(g[i], part) is getattr(g[0], part) for i in range(4)), part
        assert getattr(g[4], part) is getattr(g[5], part), part
        assert getattr(g[4], part) is not getattr(g[0], part), part
    assert len({id(gen.pooler) for gen in g}) == 6, "every layer keeps its own pooler"


def test_bank_parameter_count():
    # per group: down 16*8+8, up 8*16+16, rational 7+5; per layer: W_sa 8*2
    group, pooler = (16 * 8 + 8) + (8 * 16 + 16) + (7 + 5), 8 * 2
    assert _bank(4).num_parameters() == 2 * group + 6 * pooler == 680
    assert _bank(1).num_parameters() == 6 * group + 6 * pooler
    assert _bank(6).num_parameters() == 1 * group + 6 * pooler
    bank = _bank(4)
    assert bank.num_parameters() == sum(p.numel() for p in bank.parameters())
    assert len(list(bank.parameters())) == 2 * 6 + 6  # down W, b; up W, b; a; b per group + W_sa per layer


def test_bank_forward_and_shared_gradients():
    bank = _bank(4)
    x, mask = torch.randn(2, 5, 16), torch.ones(2, 5)
    out = bank(1, x, mask)
    torch.testing.assert_close(out, bank.generators[1](x, mask))
    assert out.shape == (2, 2, 16)
    (bank(0, x, mask).sum() + bank(3, x, mask).sum()).backward()
    assert bank.generators[0].down.weight.grad is not None
    assert bank.generators[4].down.weight.grad is None, "group 1 was not used"
    assert bank.generators[0].pooler.weight.grad is not None and bank.generators[1].pooler.weight.grad is None
    with pytest.raises(AssertionError, match="not served"):
        bank(6, x, mask)


def test_bank_layer_ids_factory_and_architecture_parameters():
    factory = bank_factory(share_every=2, bottleneck=8, pooler="attention", activation="rational")
    bank = factory(in_features=16, out_features=16, n_tokens=2, layers=(3, 5, 7))
    assert bank.layer_ids == (3, 5, 7) and [bank.group_of(i) for i in (3, 5, 7)] == [0, 0, 1]
    assert bank.generator(5).down is bank.generator(3).down is not bank.generator(7).down
    x, mask = torch.randn(2, 5, 16), torch.ones(2, 5)
    torch.testing.assert_close(bank(7, x, mask), bank.generators[2](x, mask))
    with pytest.raises(AssertionError, match="not served"):
        bank(0, x, mask)
    theta = bank.architecture_parameters()
    assert len(theta) == 2 * 2 and all(isinstance(m, Rational) for m in [bank.generator(3).activation])
    assert {id(p) for p in theta} == {
        id(p) for i in (3, 7) for p in bank.generator(i).activation.parameters()
    }
    assert GeneratorBank(2, 1, 16, 8, 16, activation="gelu").architecture_parameters() == []


def test_paper_parameter_arithmetic_on_llama2_7b():
    """The counts in docs/deviations.md (LLaMA-2 7B: L = 32, d = 4096, d_ffn = 11008)."""
    with torch.device("meta"):
        parade = build_generator(
            4096, 12, 2 * 4096 + 11008, pooler="capsule", pooler_kwargs=dict(num_capsules=4), down_bias=False
        )
        para = build_generator(4096, 12, 2 * 4096 + 11008, pooler="last", pool_first=True, down_bias=False)
        iapt = GeneratorBank(32, 4, 4096, 256, 4096, n_tokens=4, pooler="attention", activation="rational")
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert 32 * n(parade) == 9_566_208 and 32 * (n(parade) - 19_200) == 8_951_808  # paper: 8.9M
    assert 32 * (n(para) - 19_200) == 8_945_664  # paper: 8.9M
    assert iapt.num_parameters() == 16_844_896  # paper: 8.4M (see docs)
