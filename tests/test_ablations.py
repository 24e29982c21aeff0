"""The papers' ablations are config overrides of the presets (no new code), and the reproducing budget
variants land on the papers' counts. Counts are on the llama2-7b meta config (no weights)."""

from __future__ import annotations

import pytest
import torch

from pefts.registry import build_method
from runners.backbones import load_backbone
from scripts.params import count
from tests.conftest import compose

ABLATIONS = {  # iapt.txt Table 7, parade.txt Table 6, iapt.txt Fig. 2/3, id-spam.txt Fig. 2, Table 3
    "IAPT-1": ("method=iapt", "method.pooler=mean"),
    "IAPT-2": ("method=iapt", "method.share_every=16", "method.bottleneck=1024"),
    "IAPT-3": ("method=iapt", "method.share_every=1", "method.bottleneck=64"),
    "IAPT-4": ("method=iapt", "method.activation=gelu"),
    "IAPT-5": ("method=iapt", "method.activation=relu"),
    # tiny has 4 layers: groups of 2 so that no group straddles the halves (LLaMA-2: 32 layers, L_s=4)
    "IAPT-6": ("method=iapt", "method.activation=[relu,gelu]", "method.share_every=2"),
    "IAPT-7": ("method=iapt", "method.activation=[gelu,relu]", "method.share_every=2"),
    "IAPT-len1": ("method=iapt", "method.n_tokens=1"),
    "IAPT-len32": ("method=iapt", "method.n_tokens=32"),
    "IAPT-m64": ("method=iapt", "method.bottleneck=64"),
    "PARADE-1": ("method=parade", "method.pooler=last"),
    "PARADE-2": ("method=parade", "method.routing_init=uniform"),
    "PARADE-3": ("method=parade", "method.targets=[q,k,v,gate,up]", "method.bottleneck=8"),
    "PARADE-4": ("method=parade", "method.targets=[q,v]", "method.bottleneck=24"),
    "IDSPAM-m0": ("method=idspam", "method.layer=0"),
    "IDSPAM-m3": ("method=idspam", "method.layer=3"),
    "IDSPAM-mean": ("method=idspam", "method.pooler=mean"),  # id-spam.txt Table 3's Mean-pooling
}


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_ablation_builds_trains_and_generates_on_tiny(name):
    cfg = compose(*ABLATIONS[name])
    torch.manual_seed(0)
    model, tok = load_backbone(cfg.backbone)
    fam = build_method(model, cfg.method)
    batch = tok(["which is larger: 3 or 4?\n4", "hi\nyes"], return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    labels[:, :-2] = -100
    fam(**batch, labels=labels).loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in fam.parameters() if p.requires_grad)
    out = fam.generate(**tok(["hi there"], return_tensors="pt"), max_new_tokens=2, do_sample=False)
    assert out.shape[1] >= 3


def llama(*overrides):
    return count(compose("backbone=llama2-7b", *overrides, debug=False))["trainable"]


@pytest.mark.parametrize("overrides, paper", [
    (("method=iapt", "method.tie_up_down=true", "method.init=default"), 8.4e6),
    (("method=parade", "method.up_bias_trainable=false"), 8.9e6),
    (("method=para", "method.up_bias_trainable=false"), 8.9e6),
    (("method=parade", "method.up_bias_trainable=false", "method.targets=[q,k,v,gate,up]", "method.bottleneck=8"), 9.8e6),
    (("method=parade", "method.up_bias_trainable=false", "method.targets=[q,v]", "method.bottleneck=24"), 9.4e6),
    (("method=idpg", "method.bottleneck=409"), 8.4e6),
    (("method=lpt", "method.bottleneck=409"), 8.4e6),
])
def test_reproducing_variants_hit_the_papers_counts(overrides, paper):
    ours = llama(*overrides)
    assert abs(ours / paper - 1) < 0.01, f"{overrides}: {ours:,} vs paper {paper:,.0f}"


def test_faithful_defaults_are_pinned():
    """The faithful readings differ from the papers' counts; docs/deviations.md has the arithmetic."""
    assert llama("method=iapt") == 16_844_896  # 8 groups x 2 x 4096 x 256 + biases + 32 poolers + rationals
    assert llama("method=parade") == 9_566_208  # 8.9M + 32 layers x 19,200 b_up entries
    assert llama("method=para") == 9_560_064
    assert llama("method=lpt") == 20_988_928  # Appendix F: bottleneck 1024, 4 tokens
    assert llama("method=idpg") == 20_988_928
    assert count(compose("backbone=roberta-base", "method=idspam", debug=False))["trainable"] == 2_064_384
    assert count(compose("backbone=roberta-large", "method=idspam", debug=False))["trainable"] == 3_538_944


def test_tied_generator_shares_the_down_weight():
    from pefts.blocks.generators import GeneratorBank

    bank = GeneratorBank(4, share_every=2, in_dim=16, bottleneck=4, out_dim=16, n_tokens=2, pooler="attention",
                         activation="gelu", tie_up_down=True)
    g = bank.generator(0)
    assert torch.equal(g.up.down[0].weight, g.down.weight)
    x, m = torch.randn(2, 5, 16), torch.ones(2, 5)
    ref = torch.nn.functional.linear(g.activation(g.pooler(g.down(x), m)), g.down.weight.t(), g.up.bias)
    assert torch.allclose(g(x, m), ref.reshape(2, 2, 16), atol=1e-6)
    untied = GeneratorBank(4, share_every=2, in_dim=16, bottleneck=4, out_dim=16, n_tokens=2, pooler="attention",
                           activation="gelu")
    assert untied.num_parameters() - bank.num_parameters() == 2 * 16 * 4, "one 16x4 matrix per group saved"


def test_activation_parts_follow_depth():
    from pefts.blocks.generators import GeneratorBank

    bank = GeneratorBank(8, share_every=2, in_dim=8, bottleneck=4, out_dim=8, n_tokens=1, pooler="mean",
                         activation=["relu", "gelu"])
    kinds = [type(bank.generator(i).activation).__name__ for i in range(8)]
    assert kinds == ["ReLU"] * 4 + ["GELU"] * 4
    with pytest.raises(AssertionError, match="straddle"):
        GeneratorBank(6, share_every=4, in_dim=8, bottleneck=4, out_dim=8, pooler="mean", activation=["relu", "gelu"])


def test_frozen_up_bias_keeps_identity_at_init_and_is_not_trained():
    cfg = compose("method=parade", "method.up_bias_trainable=false")
    torch.manual_seed(0)
    model, tok = load_backbone(cfg.backbone)
    batch = tok(["hello world"], return_tensors="pt")
    with torch.no_grad():
        ref = model(**batch).logits
    fam = build_method(model, cfg.method)
    biases = [n for n, p in fam.named_parameters() if n.endswith("up.bias")]
    assert biases and all(not p.requires_grad for n, p in fam.named_parameters() if n.endswith("up.bias"))
    with torch.no_grad():
        assert torch.allclose(fam(**batch).logits, ref, atol=1e-5), "vectors are ones at step 0"


@pytest.mark.parametrize("init", ["zero_up", "small_normal", "default"])
def test_iapt_inits_set_the_up_projection_as_documented(init):
    """iapt.txt gives no init; the candidates of docs/deviations.md "IAPT initialisation"."""
    cfg = compose("method=iapt", f"method.init={init}", "method.init_std=0.003")
    torch.manual_seed(0)
    model, _ = load_backbone(cfg.backbone)
    fam = build_method(model, cfg.method)
    ups = [p for n, p in fam.named_parameters() if n.endswith("up.weight")]
    biases = [p for n, p in fam.named_parameters() if n.endswith("up.bias")]
    assert ups and biases
    std = torch.cat([p.detach().flatten() for p in ups]).std().item()
    if init == "zero_up":
        assert std == 0 and all(not b.any() for b in biases)
    elif init == "small_normal":
        assert 0.0025 < std < 0.0035 and all(not b.any() for b in biases)
    else:  # nn.Linear: U(-1/sqrt(m), 1/sqrt(m)), std 1/sqrt(3m)
        m = ups[0].shape[1]
        assert abs(std - (3 * m) ** -0.5) < 0.2 * (3 * m) ** -0.5


def test_pool_skip_first_leaves_the_first_instruction_token_out_of_the_pool():
    from pefts.blocks.generators import GeneratorBank

    torch.manual_seed(0)
    kw = dict(in_dim=8, bottleneck=4, out_dim=8, n_tokens=2, pooler="attention", activation="gelu")
    plain, skip = GeneratorBank(1, 1, **kw), GeneratorBank(1, 1, **kw, pool_skip_first=True)
    skip.load_state_dict(plain.state_dict())
    h = torch.randn(2, 5, 8)
    mask = torch.tensor([[0, 1, 1, 1, 1], [0, 0, 0, 0, 1]])  # left padding; row 1 has one instruction token
    changed = h.clone()
    changed[0, 1] += 100.0  # row 0's first instruction token: a massive activation
    assert torch.allclose(skip(0, h, mask)[0], skip(0, changed, mask)[0]), "the first token is not pooled"
    assert not torch.allclose(plain(0, h, mask)[0], plain(0, changed, mask)[0])
    assert torch.allclose(skip(0, h, mask)[1], plain(0, h, mask)[1]), "a one-token instruction keeps its token"
