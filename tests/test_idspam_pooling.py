"""ID-SPAM's pooler option (id-spam.txt 3.2 "Ablation Analysis", Table 3): `method.pooler=self_attention`
(eq. 1, the default) or `mean` (the Mean-pooling row: the masked mean of the input embeddings, no W_Q, W_K,
W_V), and the ablation cell conf/ablation/idspam-mean-pooling.yaml. Tiny backbones only.

    .venv/bin/python -m pytest tests/test_idspam_pooling.py -q
"""

from __future__ import annotations

import pytest
import torch

from core.errors import UserError
from pefts.blocks.poolers import MeanPooler, SelfAttentionMeanPooler
from pefts.registry import build_method
from runners.backbones import load_backbone
from runners.results import cell_name
from scripts.params import count
from tests.conftest import compose

pytestmark = pytest.mark.usefixtures("one_thread")


def built(*overrides: str, seed: int = 0):
    """(family, tokenizer, generator) of ID-SPAM on the tiny backbone, the method initialized from `seed`."""
    cfg = compose("method=idspam", *overrides)
    torch.manual_seed(0)
    model, tok = load_backbone(cfg.backbone)
    torch.manual_seed(seed)
    fam = build_method(model, cfg.method)
    bank = fam.generators["default"]
    return fam, tok, bank.generator(bank.layer_ids[0])


def trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_mean_pooling_is_the_masked_mean_whatever_the_padding():
    _, _, gen = built("method.pooler=mean")
    assert type(gen.pooler) is MeanPooler and gen.pool_first
    # hand-computed: tokens [1, 2], [3, 4], [5, 9] -> mean [3, 5]; the pad (100, -7) is never counted
    row = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 9.0]])
    pad = torch.tensor([[100.0, -7.0]])
    x = torch.stack([torch.cat([row, pad]), torch.cat([pad, row])])  # right-, left-padded
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]])
    pooled = gen.pooler(x, mask)
    assert pooled.shape == (2, 1, 2)
    assert torch.equal(pooled[0, 0], torch.tensor([3.0, 5.0])) and torch.equal(pooled[1, 0], pooled[0, 0])

    # through the generator (A -> W_down -> ReLU -> W_up -> ReLU -> resize): left = right padding = by hand
    d = gen.down.in_features
    torch.manual_seed(1)
    real, noise = torch.randn(3, d), torch.randn(2, d) * 50
    x = torch.stack([torch.cat([real, noise]), torch.cat([noise, real])])
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1]])
    with torch.no_grad():
        out = gen(x, mask)
        ref = torch.relu(gen.up(torch.relu(gen.down(real.mean(0))))).reshape(gen.n_tokens, gen.out_dim)
    assert out.shape == (2, gen.n_tokens, gen.out_dim)
    assert torch.allclose(out[0], out[1], atol=1e-6) and torch.allclose(out[0], ref, atol=1e-6)


def test_mean_pooling_reads_the_input_embeddings_in_the_model():
    """In the family: the pooled vector of a row is the mean of its token embeddings (layer 0), the same
    whether the batch is left- or right-padded."""
    fam, tok, gen = built("method.pooler=mean")
    seen = []
    gen.pooler.register_forward_hook(lambda mod, args, out: seen.append((args[1].clone(), out.detach().clone())))
    texts = ["which is larger: 3 or 4?", "hi"]
    emb = fam.backbone.get_input_embeddings()
    pooled = {}
    for side in ("left", "right"):
        tok.padding_side = side
        enc = tok(texts, return_tensors="pt", padding=True)
        with torch.no_grad():
            fam(**enc)
        mask, out = seen[-1]
        pooled[side] = out
        for i, text in enumerate(texts):
            ids = tok(text, return_tensors="pt")["input_ids"][0]
            ref = emb(ids).mean(0)
            assert int(mask[i].sum()) == len(ids), "the pool covers the row's real tokens only"
            assert torch.allclose(out[i, 0], ref, atol=1e-6), (side, text)
    tok.padding_side = "left"
    assert torch.allclose(pooled["left"], pooled["right"], atol=1e-6)


def test_mean_pooling_drops_exactly_the_attention_layer():
    attn, _, gen_attn = built()
    mean, _, gen_mean = built("method.pooler=mean")
    assert type(gen_attn.pooler) is SelfAttentionMeanPooler
    pooler_size = sum(p.numel() for p in gen_attn.pooler.parameters())
    d = gen_attn.down.in_features
    assert pooler_size == 3 * d * d, "W_Q, W_K, W_V in R^{d x d}, no biases"
    assert not any(True for _ in gen_mean.pooler.parameters())
    assert trainable(attn) - trainable(mean) == pooler_size
    # the paper's setting (Table 3: RoBERTa-large): 3,538,944 - 3 * 1024^2 = 384 * 1024
    large = count(compose("backbone=roberta-large", "method=idspam", "method.pooler=mean", debug=False))
    assert large["trainable"] == 3_538_944 - 3 * 1024 * 1024 == 393_216


def test_default_is_the_self_attention_pooler_with_unchanged_outputs():
    assert compose("method=idspam").method.pooler == "self_attention"
    default, tok, _ = built(seed=3)
    explicit, _, _ = built("method.pooler=self_attention", seed=3)
    enc = tok(["which is larger: 3 or 4?", "hi"], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.equal(default(**enc).logits, explicit(**enc).logits)
    for (n, p), (m, q) in zip(default.named_parameters(), explicit.named_parameters(), strict=True):
        assert n == m and torch.equal(p, q), n


def test_unknown_pooler_is_refused():
    with pytest.raises(UserError, match="self_attention, mean"):
        built("method.pooler=attention")


def test_the_table3_ablation_cell_composes_and_builds():
    base = compose("experiment=idspam_table3", "backbone=tiny-roberta", "task=rte", debug=False)
    cell = compose("experiment=idspam_table3", "backbone=tiny-roberta", "task=rte", "+ablation=idspam-mean-pooling",
                   debug=False)
    own = compose("experiment=idspam_table3", "backbone=tiny-roberta", "task=rte", "+ablation=idspam", debug=False)
    assert (cell_name(cell), cell.method.name, cell.method.pooler) == ("idspam-mean-pooling", "idspam", "mean")
    assert (cell_name(own), own.method) == ("idspam", base.method)
    changed = {k for k in base.method if base.method[k] != cell.method[k]}
    assert changed == {"pooler"}, changed
    assert cell.runner == base.runner and cell.task == base.task
    torch.manual_seed(0)
    model, tok = load_backbone(cell.backbone, num_labels=2)
    fam = build_method(model, cell.method)
    bank = fam.generators["default"]
    assert type(bank.generator(bank.layer_ids[0]).pooler) is MeanPooler
    enc = tok(["a short one", "the second sentence"], ["and its pair", "b"], return_tensors="pt", padding=True)
    out = fam(**enc, labels=torch.tensor([0, 1]))
    out.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in fam.parameters() if p.requires_grad)
