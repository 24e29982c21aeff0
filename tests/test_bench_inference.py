"""Tests of the inference benchmarks (scripts/bench/) on the tiny backbone: the timed path generates
exactly what plain `generate` and an untouched build generate, mixed-tenant batches give every row what its
tenant gives alone, every mode runs end to end and writes well-formed JSON / markdown / PNG, bad options exit 2.

    .venv/bin/python -m pytest tests/test_bench_inference.py -q
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from core.errors import exit_on_user_error
from scripts.bench import common as C
from scripts.bench.__main__ import main, run
from scripts.bench.options import DEFAULT_METHODS, parse
from scripts.bench.stream import make_stream

PROMPT = 64  # instruction tokens kept in these tests (byte-level tokenizer: 977 in full)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def options(mode="table4", *extra):
    return parse([mode, "backbone=tiny", "quick=true", f"prompt_tokens={PROMPT}", *extra])


@pytest.fixture(scope="module")
def tiny():
    o = options()
    backbone, tok, _ = C.load(o)
    return o, backbone, tok


def _rows(tok, o, lengths):
    prompt = C.instruction(tok, o)
    return C.batch_of([prompt[:n] for n in lengths], tok.pad_token_id, "cpu")


# ----------------------------------------------------------------------------------------- timed path = plain
@pytest.mark.parametrize("beams", [1, 3])
def test_timed_path_generates_what_plain_and_untouched_generate(tiny, beams):
    o, backbone, tok = tiny
    ids, mask = _rows(tok, o, [PROMPT])
    kw = C.gen_kwargs(tok, o.new_tokens, beams)
    models = {m: C.build_method(m, backbone, o) for m in o.methods}  # all on one shared backbone
    for m, model in models.items():
        clock = C.StepClock(C.causal_lm(model), cuda=False)
        timed, t = C.timed_generate(model, clock, ids, mask, kw)
        clock.remove()
        assert timed.shape == (1, o.new_tokens) and t.total_s >= t.ttft_s > 0 and t.decode_s > 0
        with torch.no_grad():
            plain = model.generate(input_ids=ids, attention_mask=mask, **kw)[:, ids.shape[1]:]
            fresh_backbone = C.load(o)[0]  # seeded: the same weights, no sharing, no hooks
            untouched = C.build_method(m, fresh_backbone, o, share=False)
            alone = untouched.generate(input_ids=ids, attention_mask=mask, **kw)[:, ids.shape[1]:]
        assert torch.equal(timed, plain), m
        assert torch.equal(timed, alone), m
    # the methods' perturbed modules really act (the comparison above is not bare vs bare)
    with torch.no_grad():
        bare = backbone(input_ids=ids, attention_mask=mask).logits
        for m in ("lora", "iapt", "parade", "idspam"):
            assert not torch.allclose(models[m](input_ids=ids, attention_mask=mask).logits, bare, atol=1e-4), m


# ------------------------------------------------------------------------------------- mixed-tenant batches
@pytest.mark.parametrize("method", ["iapt", "parade", "para", "idspam", "lora"])
@pytest.mark.parametrize("beams", [1, 3])
def test_mixed_tenant_rows_equal_each_tenant_alone(tiny, method, beams):
    o, backbone, tok = tiny
    model = C.build_method(method, backbone, o)
    names = C.add_tenants(model, 4, o)
    assert len(set(names)) == 4 and C.tenant_bytes(model, names[-1]) == C.tenant_bytes(model) > 0
    lengths = [PROMPT, 40, PROMPT - 8, 48]  # left-padded rows of different lengths
    ids, mask = _rows(tok, o, lengths)
    kw = C.gen_kwargs(tok, o.new_tokens, beams)
    clock = C.StepClock(C.causal_lm(model), cuda=False)
    mixed, _ = C.timed_generate(model, clock, ids, mask, kw, C.routing(model, names))
    clock.remove()
    with torch.no_grad():
        for k, name in enumerate(names):
            one_ids, one_mask = _rows(tok, o, [lengths[k]])
            if C.is_peft_lora(model):
                model.set_adapter(name)
                alone = model.generate(input_ids=one_ids, attention_mask=one_mask, **kw)
                model.set_adapter("default")
            else:
                alone = model.generate(input_ids=one_ids, attention_mask=one_mask, tenant_ids=[name], **kw)
            assert torch.equal(mixed[k], alone[0, one_ids.shape[1]:]), (method, name)
        # the tenants are distinct: the same prompt gives different logits under tenants 0 and 1
        two_ids, two_mask = ids[:1].repeat(2, 1), mask[:1].repeat(2, 1)
        logits = model(input_ids=two_ids, attention_mask=two_mask, **C.routing(model, names[:2])).logits
        assert not torch.allclose(logits[0], logits[1], atol=1e-5)


@pytest.mark.parametrize("beams", [1, 3])
def test_bgmv_lora_rows_equal_each_adapter_alone(tiny, beams):
    """lora_bgmv (scripts/bench/bgmv.py): the lora row's own tenant adapters by gather + batched matmuls; every
    row of a mixed batch gets what its adapter gives alone through peft, and the shared backbone is untouched."""
    o, backbone, tok = tiny
    models, names = C.tenant_models(["bare", "lora", C.BGMV], backbone, 4, o)
    bgmv, lora = models[C.BGMV], models["lora"]
    assert names[C.BGMV] == names["lora"] and len(set(names["lora"])) == 4
    assert C.tenant_bytes(bgmv) == C.tenant_bytes(lora) > 0 and C.routing(bgmv, names[C.BGMV]) == {"tenant_ids": names["lora"]}
    kw = C.gen_kwargs(tok, o.new_tokens, beams)
    lengths = [PROMPT, 40, PROMPT - 8, 48]  # left-padded rows of different lengths
    ids, mask = _rows(tok, o, lengths)
    same, same_mask = _rows(tok, o, [PROMPT] * 4)  # no padding: plain forward logits compare row by row
    with torch.no_grad():
        bare_before = backbone(input_ids=same, attention_mask=same_mask).logits
        mixed = bgmv.generate(input_ids=ids, attention_mask=mask, tenant_ids=names[C.BGMV], **kw)[:, ids.shape[1]:]
        logits = bgmv(input_ids=same, attention_mask=same_mask, tenant_ids=names[C.BGMV]).logits
        assert bgmv._gathered and not any(bgmv._gathered), "per-row weights are kept for one call only"
        rev = bgmv(input_ids=same.flip(0), attention_mask=same_mask.flip(0), tenant_ids=names[C.BGMV][::-1]).logits
        torch.testing.assert_close(rev.flip(0), logits)  # a new call's rows gather their own tenants again
        with torch.enable_grad():  # the out-of-place path (autograd) equals the in-place one
            torch.testing.assert_close(bgmv(input_ids=same, attention_mask=same_mask,
                                            tenant_ids=names[C.BGMV]).logits.detach(), logits)
        for k, name in enumerate(names["lora"]):
            one_ids, one_mask = _rows(tok, o, [lengths[k]])
            lora.set_adapter(name)
            alone = lora.generate(input_ids=one_ids, attention_mask=one_mask, **kw)[0, one_ids.shape[1]:]
            alone_logits = lora(input_ids=same[k:k + 1], attention_mask=same_mask[k:k + 1]).logits[0]
            lora.set_adapter("default")
            assert torch.equal(mixed[k], alone), name
            torch.testing.assert_close(logits[k], alone_logits, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(logits[0], logits[1], atol=1e-5), "the tenants differ"
        assert torch.equal(backbone(input_ids=same, attention_mask=same_mask).logits, bare_before), \
            "BGMV's hooks live on its own copy"


def test_family_plain_path_equals_default_tenant(tiny):
    o, backbone, tok = tiny
    model = C.build_method("iapt", backbone, o)
    C.add_tenants(model, 2, o)
    ids, mask = _rows(tok, o, [PROMPT])
    kw = C.gen_kwargs(tok, o.new_tokens, 1)
    with torch.no_grad():
        assert torch.equal(model.generate(input_ids=ids, attention_mask=mask, **kw),
                           model.generate(input_ids=ids, attention_mask=mask, tenant_ids=["default"], **kw))


# ------------------------------------------------------------------------------------------ end to end
def _run(tmp_path, mode, *extra):
    o = parse([mode, "backbone=tiny", "quick=true", f"prompt_tokens={PROMPT}", f"out={tmp_path}",
               f"figures={tmp_path / 'fig'}", *extra])
    res, paths = run(o)
    assert all(os.path.exists(p) for p in paths), paths
    data = json.loads(open(paths[0], encoding="utf-8").read())
    md = open(paths[1], encoding="utf-8").read()
    assert data["mode"] == mode and data["backbone"] == "tiny" and data["provenance"]["packages"]["torch"]
    title = md.splitlines()[0]  # names the processor and the commit measured (records from several machines)
    assert title.startswith("# ") and (data["device_name"] or "") in title
    assert (data["provenance"]["git_commit"] or "")[:7] in title
    return data, md, paths


def _is_summary(s):
    return set(s) == {"median", "q1", "q3", "min", "max", "n"} and s["n"] >= 1 and s["min"] <= s["median"] <= s["max"]


def test_table4_end_to_end(tmp_path):
    data, md, paths = _run(tmp_path, "table4")
    assert paths[0].endswith("table4_tiny_quick.json") and paths[1].endswith("table4_tiny_quick.md")
    assert set(data["results"]) == {"beam1", "beam3"}
    for cells in data["results"].values():
        assert list(cells) == DEFAULT_METHODS["table4"]
        for c in cells.values():
            for key in ("tps", "ttft_s", "decode_s_per_token"):
                assert _is_summary(c[key]) and c[key]["median"] > 0
            for key in ("tps", "ttft", "decode"):
                assert _is_summary(c["ratio_to_bare"][key])
            assert c["memory"]["peak_mib"] >= c["memory"]["model_mib"] > 0 and c["memory"]["generate_peak_mib"] > 0
            assert len(c["raw"]["total_s"]) == data["options"]["rounds"]
        assert cells["bare"]["ratio_to_bare"]["tps"]["median"] == 1.0
    assert data["prompt"]["tokens"] == PROMPT and data["prompt"]["tokens_seen"]["iapt"] == PROMPT + 4
    assert data["methods"]["lora"]["own_bytes"] > 0 and data["methods"]["bare"]["own_bytes"] == 0
    lines = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert len(lines) == 1 + 2 * len(DEFAULT_METHODS["table4"])  # header + one row per method and beam
    assert all(ln.count("|") == lines[0].count("|") for ln in lines)
    assert "| iapt | 1 |" in md and "| 34.4 |" in md and "| 14616 |" in md  # the paper's numbers beside ours


def test_tenants_end_to_end(tmp_path):
    data, md, paths = _run(tmp_path, "tenants")
    assert paths[2].endswith("bench_tenants_tiny_quick.png")
    assert set(data["results"]) == {"beam1/B1", "beam1/B4"}
    for cells in data["results"].values():
        assert list(cells) == DEFAULT_METHODS["tenants"]
        assert all(_is_summary(c["ratio_to_bare"]) and _is_summary(c["ratio_to_lora"]) for c in cells.values())
    assert data["methods"]["iapt"]["tenant_bytes"] > 0 and data["methods"]["iapt"]["tenants"] == 4
    assert "| 1 | 4 | iapt |" in md


def test_a_stopped_tenant_sweep_continues_at_its_next_block(tmp_path, monkeypatch):
    """A sweep stopped during B = 4 leaves B = 1 in <stem>.partial.json; the next run with the same options
    measures B = 4 alone, keeps B = 1's numbers, lists both sittings and removes the partial; other options (or
    resume=false) start again from B = 1."""
    real, asked = C.batch_of, []

    def stop_at_4(rows, pad_id, device):
        if len(rows) == 4:
            raise KeyboardInterrupt
        return real(rows, pad_id, device)

    monkeypatch.setattr(C, "batch_of", stop_at_4)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, "tenants", "methods=bare,iapt")
    partial = tmp_path / "tenants_tiny_quick.partial.json"
    first = json.loads(partial.read_text())
    assert set(first["results"]) == {"beam1/B1"} and first["sittings"][0]["blocks"] == ["beam1/B1"]

    monkeypatch.setattr(C, "batch_of", lambda rows, *a: asked.append(len(rows)) or real(rows, *a))
    data, md, _ = _run(tmp_path, "tenants", "methods=bare,iapt")
    assert asked == [4] and list(data["results"]) == ["beam1/B1", "beam1/B4"]
    assert data["results"]["beam1/B1"] == first["results"]["beam1/B1"]
    assert [x["blocks"] for x in data["sittings"]] == [["beam1/B1"], ["beam1/B4"]] and not partial.exists()
    assert "Measured in 2 sittings (each beam and B within one): beam1/B1 from " in md

    for extra in (["seed=1"], ["resume=false"]):
        partial.write_text(json.dumps(first))
        asked.clear()
        data, md, _ = _run(tmp_path, "tenants", "methods=bare,iapt", *extra)
        assert asked == [1, 4] and len(data["sittings"]) == 1 and "sittings" not in md, extra

    # stopped after its last block (before the record was written): the rerun builds no tenant and measures nothing
    done = {k: v for k, v in data.items() if k != "finished"}
    partial.write_text(json.dumps(done))
    monkeypatch.setattr(C, "tenant_models", lambda *a, **k: pytest.fail("tenants built for a finished sweep"))
    again, md, _ = _run(tmp_path, "tenants", "methods=bare,iapt")
    assert again["results"] == data["results"] and again["methods"] == data["methods"] and not partial.exists()
    assert "| 1 | 4 | iapt |" in md


def test_stream_end_to_end(tmp_path):
    data, md, _ = _run(tmp_path, "stream")
    assert set(data["results"]) == {"N1", "N4"} and data["stream"]["rate_per_s"] > 0
    for cells in data["results"].values():
        for c in cells.values():
            assert c["throughput_tps"]["median"] > 0 and c["p95_s"]["median"] >= c["p50_s"]["median"] > 0
            assert 1 <= c["mean_batch"]["median"] <= 4
    assert data["results"]["N4"]["lora"]["tenants_bytes_total"] == 4 * data["results"]["N4"]["lora"]["tenant_bytes"]
    assert "| 4 | iapt |" in md


def test_a_stopped_stream_continues_at_its_next_tenant_count(tmp_path, monkeypatch):
    """A stream stopped during N = 4 leaves N = 1 in <stem>.partial.json; the next run with the same options
    measures N = 4 alone on the same arrival rate, keeps N = 1's numbers, lists both sittings and removes the
    partial; other options (or resume=false) start again from N = 1."""
    from scripts.bench import stream

    real, asked = stream.make_stream, []

    def stop_at_4(prompt, n, n_tenants, rate, seed):
        if n_tenants == 4:
            raise KeyboardInterrupt
        return real(prompt, n, n_tenants, rate, seed)

    monkeypatch.setattr(stream, "make_stream", stop_at_4)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, "stream")
    partial = tmp_path / "stream_tiny_quick.partial.json"
    first = json.loads(partial.read_text())
    assert set(first["results"]) == {"N1"} and first["sittings"][0]["blocks"] == ["N1"]

    monkeypatch.setattr(stream, "make_stream", lambda *a: asked.append(a[2]) or real(*a))
    data, md, _ = _run(tmp_path, "stream")
    assert asked == [4] and list(data["results"]) == ["N1", "N4"]
    assert data["results"]["N1"] == first["results"]["N1"] and data["stream"] == first["stream"]
    assert [x["blocks"] for x in data["sittings"]] == [["N1"], ["N4"]] and not partial.exists()
    assert "Measured in 2 sittings (the same stream, each tenant count within one): N = 1 from " in md

    for extra in (["seed=1"], ["resume=false"]):
        partial.write_text(json.dumps(first))
        asked.clear()
        data, md, _ = _run(tmp_path, "stream", *extra)
        assert asked == [1, 4] and len(data["sittings"]) == 1 and "sittings" not in md, extra


def test_prefill_end_to_end_and_its_cached_generators_change_no_token(tmp_path, tiny):
    """The prefill split runs end to end (B = 1 by default), and the `cached` variant it times generates what the
    method generates (answer_from_cache removes the generator's compute, nothing else)."""
    from scripts.bench.common import build_method, gen_kwargs
    from scripts.bench.prefill import answer_from_cache, lengthened

    data, md, paths = _run(tmp_path, "prefill", "batches=1")
    assert paths[1].endswith("prefill_tiny_quick.md") and set(data["results"]) == {"B1"}
    cells = data["results"]["B1"]
    assert list(cells) == DEFAULT_METHODS["prefill"]
    for m in ("iapt", "idspam"):  # soft prompts: all three parts
        assert all(_is_summary(cells[m][k]) for k in ("total", "positions", "hooks", "generators"))
    assert "positions" not in cells["para"] and _is_summary(cells["para"]["generators"])  # scaling: no positions
    assert "| 1 | iapt |" in md
    o, model, tok = tiny
    ids, mask = _rows(tok, o, [5, 7])  # left-padded
    kw = gen_kwargs(tok, 3, 1)
    for m in ("iapt", "para"):
        real, cached = build_method(m, model, o), build_method(m, model, o)
        answer_from_cache(cached)
        with torch.no_grad():
            want = real.generate(input_ids=ids, attention_mask=mask, **kw)
            cached.generate(input_ids=ids, attention_mask=mask, **kw)  # fills the cache
            assert torch.equal(cached.generate(input_ids=ids, attention_mask=mask, **kw), want)
    longer, lmask = lengthened(ids[1:], mask[1:], 2)
    row = ids[1].tolist()
    assert longer.tolist() == [row[:1] + row[1:3] + row[1:]] and lmask.sum() == 9


def test_stream_is_fixed_seed_poisson():
    a = make_stream(list(range(100)), 50, 16, rate=10.0, seed=3)
    assert a == make_stream(list(range(100)), 50, 16, rate=10.0, seed=3)
    assert all(x.arrival <= y.arrival for x, y in zip(a, a[1:])) and {r.tenant for r in a} <= set(range(16))
    assert len({len(r.prompt) for r in a}) > 5 and min(len(r.prompt) for r in a) >= 16


def test_rounds_rotate_the_order():
    names = ["bare", "lora", "iapt"]
    slots = [C.rotated(names, r) for r in range(3)]
    assert all(sorted(s) == sorted(names) for s in slots)
    assert all(len({s[i] for s in slots}) == 3 for i in range(3))  # every method in every slot once


# -------------------------------------------------------------------------------------------- bad options
@pytest.mark.parametrize("argv,needle", [
    ([], "table4, tenants, stream"),
    (["table5"], "'table5'"),
    (["table4", "rounds=0"], "rounds=0"),
    (["table4", "rounds=many"], "'many'"),
    (["table4", "beams=1,x"], "beams="),
    (["table4", "methods=bare,lorra"], "'lorra'"),
    (["tenants", "methods=bare,ia3"], "'ia3'"),
    (["table4", "methods=lora,iapt"], "'bare'"),
    (["table4", "device=tpu"], "'tpu'"),
    (["table4", "backbone=gpt5"], "'gpt5'"),
    (["table4", "colour=red"], "colour=red"),
])
def test_bad_options_exit_2_with_one_line(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        exit_on_user_error(main, argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and needle in err[0]
    assert "valid" in err[0] or "must" in err[0] or "is not" in err[0]


# ------------------------------------------------------------- the speed fixes in pefts/blocks keep outputs
def test_attention_pool_of_projected_equals_pool_after_projection():
    from pefts.blocks.poolers import AttentionPooler

    g = torch.Generator().manual_seed(0)
    for bias in (True, False):
        down = torch.nn.Linear(24, 16, bias=bias)
        pool = AttentionPooler(16, 4, init_std=0.5)
        x = torch.randn(3, 9, 24, generator=g) * 3
        mask = torch.ones(3, 9, dtype=torch.bool)
        mask[0, :4] = False  # left padding
        mask[2] = False  # a row without instruction tokens gives zeros in both
        x[0, 0] = float("nan")  # padded positions never influence the output
        with torch.no_grad():
            want, got = pool(down(x), mask), pool.pool_projected(x, mask, down)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        assert torch.equal(got[2], torch.zeros_like(got[2]))


def test_rational_by_powers_equals_the_horner_form_inside_and_beyond_the_bound():
    """The inference evaluation (one Vandermonde matrix and one matmul) is eq. 3 with its linear continuation,
    up to float rounding, for one activation and for per-row coefficients (the tenant path)."""
    from pefts.blocks.activations import Rational, bounded_rational, rational_by_powers, rational_matrix

    g = torch.Generator().manual_seed(3)
    acts = [Rational() for _ in range(3)]
    with torch.no_grad():
        for r in acts[1:]:
            r.numerator.add_(0.02 * torch.randn(7, generator=g))
            r.denominator.add_(0.02 * torch.randn(5, generator=g))
    x = torch.cat([torch.linspace(-12, 12, 481), torch.tensor([-1e4, -8.0, 8.0, 1e4])]).double()
    for r in acts:
        a, b = r.numerator.detach().double(), r.denominator.detach().double()
        v, s, _ = r._constants(torch.float64, "cpu", a, b)
        want = bounded_rational(x, a, b, r.bound, v.detach(), s.detach())
        got = rational_by_powers(x, rational_matrix(a, b), r.bound, s.detach())
        torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-9)
        with torch.no_grad():
            infer = r(x.float())
        torch.testing.assert_close(infer, r(x.float()).detach(), atol=1e-6, rtol=1e-5)  # vs training's Horner
    rows = torch.stack([x[:100], x[100:200], x[200:300]]).float()  # row k with acts[k]'s coefficients
    pq = torch.stack([rational_matrix(r.numerator.detach(), r.denominator.detach()) for r in acts])
    s = torch.stack([r._constants(torch.float32, "cpu", r.numerator, r.denominator)[1].detach() for r in acts])
    got = rational_by_powers(rows, pq, 8.0, s.t().reshape(2, 3, 1))
    with torch.no_grad():
        want = torch.stack([r(row) for r, row in zip(acts, rows)])
    torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_attention_pool_ignores_masked_states_bit_for_bit_and_survives_non_finite_ones():
    """Inference pools without zeroing a copy of x: any finite values at masked positions give exactly the
    zeroed result; a non-finite one (0 x inf = NaN) is caught and the pool recomputed on the zeroed states."""
    from pefts.blocks.poolers import pool_projected

    g = torch.Generator().manual_seed(5)
    w, q, b = torch.randn(16, 24, generator=g), torch.randn(16, 4, generator=g), torch.randn(16, generator=g)
    x = torch.randn(3, 9, 24, generator=g)
    m = torch.ones(3, 9, dtype=torch.bool)
    m[0, :4] = False
    m[1, 0] = False
    zeroed = pool_projected(x.masked_fill(~m[..., None], 0.0), m, w, q, b)
    for fill in (1e30, -7.0, float("inf"), float("nan")):
        garbage = x.masked_fill(~m[..., None], fill)
        assert torch.equal(pool_projected(garbage, m, w, q, b), zeroed), fill
    m[2] = False  # a row without instruction tokens pools to zeros
    got = pool_projected(x, m, w, q, b)
    assert torch.equal(got[2], torch.zeros_like(got[2])) and torch.equal(got[:2], zeroed[:2])


def test_inference_paths_of_the_generators_equal_the_training_paths():
    from pefts.blocks.generators import GeneratorBank

    x = torch.randn(2, 11, 32, generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 11, dtype=torch.bool)
    mask[1, :3] = False
    for kw in (dict(pooler="attention", activation="rational", pool_skip_first=True, bottleneck=16, out_dim=32,
                    n_tokens=4, share_every=2),  # IAPT
               dict(pooler="capsule", activation="gelu", bottleneck=12, out_dim=40, n_tokens=1, share_every=1,
                    init="zero_up_ones_bias", init_dist="uniform", down_bias=False),  # PARADE
               dict(pooler="self_attention", pool_first=True, activation="relu", out_activation="relu",
                    bottleneck=6, out_dim=32, n_tokens=3, share_every=1, down_bias=False),  # ID-SPAM
               dict(pooler="self_attention", pooler_kwargs=dict(bias=True), pool_first=True, activation="gelu",
                    bottleneck=6, out_dim=32, n_tokens=3, share_every=1)):  # with every bias
        bank = GeneratorBank(3, in_dim=32, **kw)
        with torch.no_grad():
            for p in bank.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        for layer in range(3):
            train = bank(layer, x, mask)  # autograd on: the papers' order of operations
            with torch.no_grad():
                infer = bank(layer, x, mask)
            torch.testing.assert_close(infer, train.detach(), atol=1e-6, rtol=1e-5)


def test_per_batch_caches_follow_their_inputs():
    from pefts.blocks.activations import Rational
    from pefts.blocks.generators import Generator, GeneratorBank

    r = Rational()
    x = torch.linspace(-12, 12, 97)
    with torch.no_grad():
        r(x)
        r.numerator.add_(0.01)  # in place: the cached edge values must not survive
        got = r(x)
    fresh = Rational(r.numerator.tolist(), r.denominator.tolist())
    with torch.no_grad():  # the same (inference) path, edges computed anew
        want = fresh(x)
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    bank = GeneratorBank(2, 1, in_dim=8, bottleneck=4, out_dim=8, n_tokens=2, pool_skip_first=True)
    mask = torch.ones(2, 5, dtype=torch.bool)
    h = torch.randn(2, 5, 8)
    with torch.no_grad():
        bank(0, h, mask)
        mask[0, :2] = False  # the same tensor changed in place
        got = bank(1, h, mask)
        want = bank.generators[1](h, mask, Generator.skip_first_mask(mask))
    assert torch.equal(got, want)
    # every layer's projected queries, computed once per batch per group of layers: equal to each layer's own,
    # and computed anew after an in-place write to a weight (same mask tensor)
    bank = GeneratorBank(4, 2, in_dim=8, bottleneck=4, out_dim=8, n_tokens=2)
    with torch.no_grad():
        for layer in range(4):
            torch.testing.assert_close(bank(layer, h, mask), bank.generators[layer](h, mask), atol=1e-6, rtol=1e-5)
        bank.generators[2].down.weight.mul_(3.0)  # shared by layers 2 and 3
        bank.generators[3].pooler.weight.add_(0.5)
        for layer in (2, 3):
            torch.testing.assert_close(bank(layer, h, mask), bank.generators[layer](h, mask), atol=1e-6, rtol=1e-5)


_CAPSULE = dict(num_capsules=4, routing_iters=1, routing_init="attention")


@pytest.mark.parametrize("kw", [dict(activation="rational", pool_skip_first=True),  # IAPT: stacked matmuls
                                dict(activation="gelu", tie_up_down=True, out_dim=32),
                                dict(activation="relu", down_bias=False),
                                # the others under torch.func.vmap: PARADE, PARA
                                dict(pooler="capsule", pooler_kwargs=_CAPSULE, n_tokens=1, activation="gelu",
                                     down_bias=False, init="zero_up_ones_bias", init_dist="uniform"),
                                dict(pooler="last", pool_first=True, n_tokens=1, activation="gelu",
                                     init="zero_up_ones_bias"),
                                dict(pooler="self_attention", pool_first=True, n_tokens=10, activation="relu",
                                     out_activation="relu", down_bias=False),  # ID-SPAM: batched matmuls
                                dict(pooler="self_attention", pooler_kwargs=dict(bias=True), pool_first=True,
                                     n_tokens=2, activation="gelu")])
def test_tenant_banks_in_one_batched_pass_equal_one_call_each(kw):
    from pefts.blocks.generators import GeneratorBank

    kw = {"out_dim": 24, "pooler": "attention", "n_tokens": 4, **kw}
    banks = []
    for seed in range(3):
        torch.manual_seed(seed)
        bank = GeneratorBank(2, 1, in_dim=32, bottleneck=16, **kw)
        with torch.no_grad():  # distinct tenants, rational coefficients included
            for p in bank.parameters():
                p.add_(0.05 * torch.randn(p.shape))
        banks.append(bank)
    x = torch.randn(5, 9, 32, generator=torch.Generator().manual_seed(7))
    mask = torch.ones(5, 9, dtype=torch.bool)
    mask[1, :4] = False
    mask[3, 6:] = False
    of_row = torch.tensor([2, 0, 2, 1, 0])
    with torch.no_grad():
        got = GeneratorBank.forward_rows(banks, 1, x, mask, of_row)
        want = torch.cat([banks[int(b)](1, x[i:i + 1], mask[i:i + 1]) for i, b in enumerate(of_row)])
    assert got is not None
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    if kw["pooler"] == "self_attention":  # ID-SPAM's batched matmuls, not the vmap fallback
        from pefts.blocks.generators import _idspam_structure

        assert _idspam_structure([b.generator(1) for b in banks])
    assert GeneratorBank.forward_rows(banks, 1, x, mask, of_row) is None  # training keeps the plain loop


def test_tenant_stacks_kept_for_one_batch_and_rebuilt_after_an_edit():
    from pefts.blocks.generators import GeneratorBank

    banks = []
    for seed in range(2):
        torch.manual_seed(seed)
        banks.append(GeneratorBank(4, 4, in_dim=16, bottleneck=8, out_dim=16, n_tokens=2))  # one shared group
    x, mask, of_row = torch.randn(2, 5, 16), torch.ones(2, 5, dtype=torch.bool), torch.tensor([1, 0])
    cache = {}
    with torch.no_grad():
        a = GeneratorBank.forward_rows(banks, 0, x, mask, of_row, cache=cache)
        n = len(cache)
        GeneratorBank.forward_rows(banks, 1, x, mask, of_row, cache=cache)  # same MLP_down / MLP_up / g
        assert len(cache) == n + 1, "only layer 1's own pooler is stacked anew"
        banks[1].generators[0].up.weight.mul_(2.0)  # a tenant's shared weight edited in place
        b = GeneratorBank.forward_rows(banks, 0, x, mask, of_row, cache=cache)
        want = torch.cat([banks[1](0, x[:1], mask[:1]), banks[0](0, x[1:], mask[1:])])
    torch.testing.assert_close(b, want, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(a[0], b[0])


@pytest.mark.parametrize("method", ["iapt", "parade"])
def test_collected_hidden_states_are_not_edited_in_place(tiny, method):
    """Inference edits a layer's input (soft tokens) and projection outputs (scaling) in place, except when
    the caller collects hidden states, which must then equal those of the autograd (copying) path."""
    o, backbone, tok = tiny
    model = C.build_method(method, backbone, o)
    ids, mask = _rows(tok, o, [PROMPT, PROMPT - 8])
    with torch.no_grad():
        fast = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    slow = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    for h_fast, h_slow in zip(fast.hidden_states, slow.hidden_states):
        torch.testing.assert_close(h_fast, h_slow.detach(), atol=1e-6, rtol=1e-5)
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(plain, slow.logits.detach(), atol=1e-6, rtol=1e-5)
