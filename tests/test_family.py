"""Tests of the input-aware family's injection machinery (pefts/blocks/injectors.py, layout.py, pefts/family.py) on
tiny random backbones: the `tiny` Llama (GQA, 4 query / 2 KV heads), GPT-2, GPT-NeoX, RoBERTa.

    .venv/bin/python -m pytest tests/test_family.py -q

The generators here are small stand-ins (masked mean -> Linear, plus a per-layer bias) with the family's
call signature `gen(layer_idx, hidden, instruction_mask) -> [B, n, out]`.
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from pefts.blocks.arch import layer_list, scaling_dims
from pefts.blocks.layout import insert_soft_positions, instruction_mask, plain_positions
from pefts.family import build_family
from pefts.io import load_peft, peft_state_dict, save_peft

V = 50  # vocab of the hand-built configs
GEN = dict(do_sample=False, pad_token_id=0, eos_token_id=None, output_scores=True, return_dict_in_generate=True)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class MeanGen(nn.Module):
    """Stand-in generator: masked mean of the instruction states -> Linear (+ a per-layer bias); for
    scaling vectors 1 + 0.5 tanh(.) keeps them near one. Counts its calls."""

    def __init__(self, in_features, out_features, n_tokens, layers, scaling=False, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.n, self.o, self.scaling = n_tokens, out_features, scaling
        self.lin = nn.Linear(in_features, n_tokens * out_features)
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(self.lin.weight.shape, generator=g) * 0.3)
        self.bias = nn.Parameter(torch.randn(len(layers), n_tokens * out_features, generator=g))
        self.index = {layer: i for i, layer in enumerate(layers)}
        self.calls = 0

    def forward(self, layer, hidden, mask):
        self.calls += 1
        m = mask.to(hidden.dtype)[..., None]
        pooled = (hidden * m).sum(1) / m.sum(1)
        out = (self.lin(pooled) + self.bias[self.index[layer]]).view(hidden.shape[0], self.n, self.o)
        return 1 + 0.5 * torch.tanh(out) if self.scaling else out


@functools.lru_cache(maxsize=1)
def _tiny_cfg():
    from tests.conftest import compose

    return compose().backbone


def backbone(kind: str, attn: str = "sdpa", seed: int = 0):
    """A fresh random backbone (same weights for the same seed)."""
    import transformers as tf

    torch.manual_seed(seed)
    if kind == "tiny":
        from runners.backbones import load_backbone

        model = load_backbone(_tiny_cfg())[0]
    elif kind == "llama":
        cfg = tf.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                             num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, bos_token_id=1,
                             eos_token_id=2)
        cfg._attn_implementation = attn
        model = tf.LlamaForCausalLM(cfg)
    elif kind == "gpt2":
        cfg = tf.GPT2Config(vocab_size=V, n_embd=32, n_layer=3, n_head=4, n_positions=64, pad_token_id=0,
                            bos_token_id=1, eos_token_id=2)
        cfg._attn_implementation = attn
        model = tf.GPT2LMHeadModel(cfg)
    elif kind == "neox":
        cfg = tf.GPTNeoXConfig(vocab_size=V, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                               intermediate_size=48, max_position_embeddings=64, pad_token_id=0,
                               bos_token_id=1, eos_token_id=2)
        cfg._attn_implementation = attn
        model = tf.GPTNeoXForCausalLM(cfg)
    elif kind == "roberta":
        cfg = tf.RobertaConfig(vocab_size=V, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                               intermediate_size=48, max_position_embeddings=64, pad_token_id=1, num_labels=3)
        cfg._attn_implementation = attn
        model = tf.RobertaForSequenceClassification(cfg)
    else:
        raise ValueError(kind)
    return model.eval()


def family(kind="llama", injector="soft_prompt", layers="all", position=None, n_tokens=3, seed=0, attn="sdpa",
           targets=("q", "v", "up"), read_layer=None, gen_seed=0):
    fam = build_family(
        backbone(kind, attn, seed), injector=injector, layers=layers, n_tokens=n_tokens, position=position,
        targets=targets, read_layer=read_layer,
        generator_factory=lambda **k: MeanGen(**k, scaling=injector == "scaling", seed=gen_seed))
    return fam.eval()


def prompts(B=3, T=7, vocab=V, seed=1):
    """Left-padded prompts of lengths T, T-1, T-3 ... (row 0 longest)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (B, T), generator=g)
    mask = torch.ones_like(ids)
    for b in range(1, B):
        mask[b, : 2 * b - 1] = 0
    return ids.masked_fill(mask == 0, 0), mask


def right_padded(ids, mask):
    order = torch.sort(1 - mask, dim=1, stable=True).indices
    return ids.gather(1, order), mask.gather(1, order)


def training_batch(seed=2, vocab=V):
    """Right-padded prompt + response rows with -100 on prompt and padding."""
    g = torch.Generator().manual_seed(seed)
    lens, prompt_lens = [9, 6, 8], [4, 3, 5]
    T = max(lens)
    ids = torch.zeros(len(lens), T, dtype=torch.long)
    mask, labels = torch.zeros_like(ids), torch.full_like(ids, -100)
    for b, (n, p) in enumerate(zip(lens, prompt_lens)):
        ids[b, :n] = torch.randint(3, vocab, (n,), generator=g)
        mask[b, :n] = 1
        labels[b, p:n] = ids[b, p:n]
    return ids, mask, labels


VARIANTS = [  # (injector, layers, position): every layer, or one middle layer m (positions hidden below m)
    ("soft_prompt", "all", "prepend"),
    ("soft_prompt", [1], "append"),
    ("scaling", "all", None),
]


# ------------------------------------------------------------------------------------------- training
@pytest.mark.parametrize("injector", ["soft_prompt", "scaling"])
def test_only_generator_parameters_get_gradients(injector):
    fam = family("tiny", injector, layers="all", targets=("q", "k", "v", "gate", "up"))
    cfg = fam.config
    assert cfg.num_key_value_heads < cfg.num_attention_heads, "tiny must use grouped-query attention"
    ids, mask, labels = training_batch(vocab=cfg.vocab_size)
    fam.train()
    out = fam(input_ids=ids, attention_mask=mask, labels=labels)
    assert out.logits.shape == (*ids.shape, cfg.vocab_size)
    out.loss.backward()
    trainable = {n for n, p in fam.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("generators.default.") for n in trainable)
    assert all(p.grad is None for n, p in fam.named_parameters() if not n.startswith("generators."))
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in fam.named_parameters() if n in trainable)


def test_scaling_dims_follow_gqa():
    model = backbone("tiny")
    c = model.config
    hd = c.hidden_size // c.num_attention_heads
    dims = scaling_dims(model, ("up", "v", "q", "k", "gate"))
    assert list(dims) == ["q", "k", "v", "gate", "up"]
    assert dims == {"q": c.num_attention_heads * hd, "k": c.num_key_value_heads * hd,
                    "v": c.num_key_value_heads * hd, "gate": c.intermediate_size, "up": c.intermediate_size}
    with pytest.raises(AssertionError, match="gate"):
        scaling_dims(backbone("gpt2"), ("gate",))


def test_loss_equals_expanded_sequence_loss_and_logits_align():
    """Append mode: the first response token is predicted from the last soft token; the returned logits
    are re-indexed so the usual shift-by-one loss equals the loss on the expanded sequence."""
    fam = family("llama", "soft_prompt", layers=[1], position="append")
    ids, mask, labels = training_batch()
    out = fam(input_ids=ids, attention_mask=mask, labels=labels)
    lay = insert_soft_positions(ids, mask, labels, instruction_mask(mask, labels), 3, "append", fill_id=1)
    with fam.injector.active(lay.instr, lay.start):
        big = fam.backbone(input_ids=lay.input_ids, attention_mask=lay.attention_mask,
                           position_ids=lay.position_ids).logits
    ref = nn.functional.cross_entropy(big[:, :-1].reshape(-1, V), lay.labels[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, ref)
    assert (lay.labels[torch.arange(3)[:, None], lay.start[:, None] + torch.arange(3)] == -100).all()


# ------------------------------------------------------------------------------------ cache & generation
@pytest.mark.parametrize("kind", ["tiny", "gpt2", "neox"])
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: f"{v[0]}-{v[1]}-{v[2]}")
def test_cache_equals_no_cache_greedy_and_beams(kind, variant):
    injector, layers, position = variant
    fam = family(kind, injector, layers=layers, position=position, targets=("q", "k", "v", "up"))
    ids, mask = prompts(vocab=fam.config.vocab_size)
    gen = fam.generators["default"]
    frozen = fam.backbone.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, **GEN).scores[0]
    greedy = None
    for beams in (1, 3):
        before = gen.calls
        a = fam.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, num_beams=beams, use_cache=True, **GEN)
        n_layers = len(fam.layers)
        assert gen.calls - before == n_layers, "generator called outside prefill (or more than once per layer)"
        b = fam.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, num_beams=beams, use_cache=False, **GEN)
        assert torch.equal(a.sequences, b.sequences)
        assert torch.equal(a.sequences[:, : ids.shape[1]], ids)
        for x, y in zip(a.scores, b.scores):
            torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-4)
        greedy = a.scores[0] if greedy is None else greedy
    assert (greedy - frozen).abs().max() > 1e-3, "injection had no effect"


@pytest.mark.parametrize("kind", ["llama", "neox"])
def test_eager_attention_float_masks(kind):
    """Eager attention gets additive float masks: hiding the soft positions below m works there too."""
    fam = family(kind, "soft_prompt", layers=[2], position="prepend", attn="eager")
    ids, mask = prompts()
    kw = dict(max_new_tokens=4, **GEN)
    a = fam.generate(input_ids=ids, attention_mask=mask, use_cache=True, **kw)
    b = fam.generate(input_ids=ids, attention_mask=mask, use_cache=False, **kw)
    assert torch.equal(a.sequences, b.sequences)
    sdpa = family(kind, "soft_prompt", layers=[2], position="prepend", attn="sdpa")
    keep = mask.bool()  # padded positions hold garbage that differs between attention kernels
    torch.testing.assert_close(fam(input_ids=ids, attention_mask=mask).logits[keep],
                               sdpa(input_ids=ids, attention_mask=mask).logits[keep], atol=1e-5, rtol=1e-5)
    alone = fam.generate(input_ids=ids[2:, 3:], attention_mask=mask[2:, 3:], use_cache=True, **kw)
    assert torch.equal(alone.sequences[0, 4:], a.sequences[2, 7:])


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: f"{v[0]}-{v[1]}-{v[2]}")
def test_forward_logits_match_first_generation_step(variant):
    injector, layers, position = variant
    fam = family("llama", injector, layers=layers, position=position)
    ids, mask = prompts()
    first = fam.generate(input_ids=ids, attention_mask=mask, max_new_tokens=1, **GEN).scores[0]
    torch.testing.assert_close(fam(input_ids=ids, attention_mask=mask).logits[:, -1], first, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------- padding
@pytest.mark.parametrize("kind,variant", [("llama", v) for v in VARIANTS] + [("gpt2", VARIANTS[1])])
def test_padding_invariance_forward(kind, variant):
    """Right-padded and left-padded training rows each equal the row run alone."""
    injector, layers, position = variant
    fam = family(kind, injector, layers=layers, position=position)
    ids, mask, labels = training_batch()
    right = fam(input_ids=ids, attention_mask=mask, labels=labels).logits
    lids, lmask = ids.clone(), mask.clone()
    llab = labels.clone()
    for b in range(ids.shape[0]):  # left-pad the same rows
        n = int(mask[b].sum())
        for t in (lids, lmask, llab):
            t[b] = torch.roll(t[b], ids.shape[1] - n)
    left = fam(input_ids=lids, attention_mask=lmask, labels=llab).logits
    for b in range(ids.shape[0]):
        n = int(mask[b].sum())
        alone = fam(input_ids=ids[b:b + 1, :n], attention_mask=mask[b:b + 1, :n], labels=labels[b:b + 1, :n]).logits
        torch.testing.assert_close(right[b:b + 1, :n], alone, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(left[b:b + 1, -n:], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("injector,layers,position", [VARIANTS[1], VARIANTS[2]])
def test_padding_invariance_generate(injector, layers, position):
    fam = family("llama", injector, layers=layers, position=position)
    ids, mask = prompts()
    kw = dict(max_new_tokens=4, num_beams=3, **GEN)
    left = fam.generate(input_ids=ids, attention_mask=mask, **kw)
    rids, rmask = right_padded(ids, mask)
    right = fam.generate(input_ids=rids, attention_mask=rmask, **kw)
    T = ids.shape[1]
    assert torch.equal(left.sequences[:, T:], right.sequences[:, T:])
    assert torch.equal(right.sequences[:, :T], rids)
    for b in range(ids.shape[0]):
        keep = mask[b].bool()
        alone = fam.generate(input_ids=ids[b:b + 1, keep], attention_mask=mask[b:b + 1, keep], **kw)
        assert torch.equal(alone.sequences[0, int(keep.sum()):], left.sequences[b, T:])


# ------------------------------------------------------------------------------------- layer semantics
@pytest.mark.parametrize("kind,position", [("llama", "prepend"), ("llama", "append"), ("gpt2", "prepend"),
                                          ("neox", "prepend")])
def test_soft_tokens_replace_at_layer_m_and_are_invisible_below(kind, position):
    """Injecting at m=2: layers 0..1 compute exactly what the frozen model computes on the real tokens,
    and the hidden states entering layer 2 carry the generator's output at the soft positions."""
    fam = family(kind, "soft_prompt", layers=[2], position=position)
    ids, mask = prompts()
    layers = layer_list(fam.backbone)
    seen = {}
    hooks = [layers[i].register_forward_pre_hook(
        lambda m, a, kw, i=i: seen.__setitem__(i, (a[0] if a else kw["hidden_states"]).detach()), with_kwargs=True)
        for i in range(3)]
    fam(input_ids=ids, attention_mask=mask)
    got = dict(seen)
    fam.backbone(input_ids=ids, attention_mask=mask, position_ids=plain_positions(mask))  # hooks inactive: frozen
    for h in hooks:
        h.remove()
    lay = fam._insert(ids, mask, None, instruction_mask(mask))
    newpos = torch.arange(ids.shape[1])[None] + 3 * (torch.arange(ids.shape[1])[None] >= lay.start[:, None])
    for i in (0, 1, 2):
        x = got[i].gather(1, newpos[..., None].expand(-1, -1, got[i].shape[-1]))
        keep = mask.bool()
        torch.testing.assert_close(x[keep], seen[i][keep], atol=1e-5, rtol=1e-5)
    soft = got[2].gather(1, (lay.start[:, None] + torch.arange(3))[..., None].expand(-1, -1, got[2].shape[-1]))
    expect = fam.generators["default"](2, got[2], lay.instr)
    torch.testing.assert_close(soft, expect, atol=1e-5, rtol=1e-5)


def test_scaling_layouts_match_scaled_weights():
    """A constant scaling vector equals scaling the projection weights: checks each architecture's
    layout (Llama separate projections, GPT-2 [q|k|v] columns of c_attn, GPT-NeoX per-head rows of
    query_key_value, FFN up / down-projection input)."""

    class Const(nn.Module):
        def __init__(self, out_features, **_):
            super().__init__()
            g = torch.Generator().manual_seed(3)
            self.v = nn.Parameter(1 + 0.5 * torch.randn(out_features, generator=g))

        def forward(self, layer, hidden, mask):
            return self.v.expand(hidden.shape[0], 1, -1)

    for kind in ("llama", "gpt2", "neox"):
        targets = ("q", "k", "v", "up") + (("gate",) if kind == "llama" else ())
        fam = build_family(backbone(kind), injector="scaling", layers=[1], targets=targets,
                           generator_factory=lambda **k: Const(**k)).eval()
        dims = scaling_dims(fam.backbone, targets)
        vec = dict(zip(dims, fam.generators["default"].v.detach().split(list(dims.values()))))
        ref = backbone(kind)
        layer = layer_list(ref)[1]
        with torch.no_grad():
            if kind == "llama":
                for t, name in [("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj")]:
                    getattr(layer.self_attn, name).weight.mul_(vec[t][:, None])
                layer.mlp.gate_proj.weight.mul_(vec["gate"][:, None])
                layer.mlp.up_proj.weight.mul_(vec["up"][:, None])
            elif kind == "gpt2":  # Conv1D weight [in, out]
                col = torch.cat([vec["q"], vec["k"], vec["v"]])
                layer.attn.c_attn.weight.mul_(col[None])
                layer.attn.c_attn.bias.mul_(col)
                layer.mlp.c_proj.weight.mul_(vec["up"][:, None])
            else:  # rows grouped per head as [q_h | k_h | v_h]
                heads, d = ref.config.num_attention_heads, ref.config.hidden_size
                rows = torch.stack([vec[t].view(heads, d // heads) for t in "qkv"], 1).reshape(-1)
                layer.attention.query_key_value.weight.mul_(rows[:, None])
                layer.attention.query_key_value.bias.mul_(rows)
                layer.mlp.dense_4h_to_h.weight.mul_(vec["up"][None])
        ids, mask = prompts()
        want = ref(input_ids=ids, attention_mask=mask, position_ids=plain_positions(mask)).logits
        torch.testing.assert_close(fam(input_ids=ids, attention_mask=mask).logits, want, atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------------ multi-tenant
@pytest.mark.parametrize("injector,layers,position", [VARIANTS[0], VARIANTS[2]])
def test_mixed_tenants_equal_each_tenant_alone(injector, layers, position, tmp_path):
    fam = family("llama", injector, layers=layers, position=position, gen_seed=0)
    other = family("llama", injector, layers=layers, position=position, gen_seed=5)
    save_peft(other, str(tmp_path / "b.safetensors"))
    fam.add_tenant("b", str(tmp_path / "b.safetensors"))
    fam.add_tenant("c", {k.split(".", 2)[2]: v for k, v in peft_state_dict(other).items()})  # plain state_dict
    assert {n for n, p in fam.named_parameters() if p.requires_grad} == set(peft_state_dict(fam))
    ids, mask = prompts(B=4)
    tenants = ["b", "default", "c", "b"]
    mixed = fam(input_ids=ids, attention_mask=mask, tenant_ids=tenants).logits
    kw = dict(max_new_tokens=4, num_beams=3, **GEN)
    gen_mixed = fam.generate(input_ids=ids, attention_mask=mask, tenant_ids=tenants, **kw).sequences
    for t, ref in (("default", fam), ("b", other), ("c", other)):
        rows = [i for i, x in enumerate(tenants) if x == t]
        alone = ref(input_ids=ids[rows], attention_mask=mask[rows]).logits
        torch.testing.assert_close(mixed[rows], alone, atol=1e-5, rtol=1e-5)
        gen_alone = ref.generate(input_ids=ids[rows], attention_mask=mask[rows], **kw).sequences
        assert torch.equal(gen_mixed[rows], gen_alone)
    assert not torch.allclose(mixed[1], other(input_ids=ids[1:2], attention_mask=mask[1:2]).logits[0])


# ------------------------------------------------------------------------------------------- save / load
@pytest.mark.parametrize("injector", ["soft_prompt", "scaling"])
def test_save_load_round_trip(injector, tmp_path):
    fam = family("tiny", injector, layers=[1, 3])
    ids, mask = prompts(vocab=fam.config.vocab_size)
    want = fam(input_ids=ids, attention_mask=mask).logits
    path = str(tmp_path / "peft.safetensors")
    save_peft(fam, path)
    fresh = family("tiny", injector, layers=[1, 3], gen_seed=9)
    assert not torch.allclose(fresh(input_ids=ids, attention_mask=mask).logits, want)
    load_peft(fresh, path)
    torch.testing.assert_close(fresh(input_ids=ids, attention_mask=mask).logits, want)


# ----------------------------------------------------------------------------- checkpointing & Trainer
@pytest.mark.parametrize("injector,layers,position", VARIANTS)
def test_activation_checkpointing_gives_same_gradients(injector, layers, position):
    grads = []
    for ckpt in (False, True):
        fam = family("llama", injector, layers=layers, position=position).train()
        if ckpt:
            fam.activation_checkpointing_enable()
        ids, mask, labels = training_batch()
        fam(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        grads.append({n: p.grad.clone() for n, p in fam.named_parameters() if p.requires_grad})
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], atol=1e-6, rtol=1e-5)


def test_scaling_attention_hooks_only_under_checkpointing():
    """Inference (every decode step) runs no Python hook on the attention modules: the pre-hook that carries the
    multipliers into a recomputed layer is installed by activation_checkpointing_enable, once, and removed again."""
    fam = family("llama", "scaling", layers="all")
    attn = [layer.self_attn for layer in layer_list(fam.backbone)]
    assert all(not a._forward_pre_hooks for a in attn)
    fam.activation_checkpointing_enable()
    fam.gradient_checkpointing_enable()
    assert [len(a._forward_pre_hooks) for a in attn] == [1] * len(attn)
    fam.gradient_checkpointing_disable()
    assert all(not a._forward_pre_hooks for a in attn)


def test_hf_trainer_steps(tmp_path):
    from transformers import Trainer, TrainingArguments

    fam = family("tiny", "scaling", layers="all")
    ids, mask, labels = training_batch(vocab=fam.config.vocab_size)
    rows = [{"input_ids": i, "attention_mask": m, "labels": y} for i, m, y in zip(ids, mask, labels)]
    before = {n: p.detach().clone() for n, p in fam.named_parameters() if p.requires_grad}
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=3, max_steps=2,
                             learning_rate=1e-2, report_to=[], save_strategy="no", use_cpu=True,
                             disable_tqdm=True, remove_unused_columns=False, label_names=["labels"])
    Trainer(model=fam, args=args, train_dataset=rows).train()
    assert any(not torch.equal(before[n], p) for n, p in fam.named_parameters() if p.requires_grad)


# ----------------------------------------------------------------------------------------------- encoder
def test_roberta_idspam_prompt_at_layer_m():
    """ID-SPAM on an encoder: generated once from the input embeddings (read_layer=0), inserted behind <s>
    at layer m=1; right-padded rows equal the rows alone; layer 0 sees only the real tokens."""
    fam = family("roberta", "soft_prompt", layers=[1], read_layer=0, n_tokens=2)
    ids, mask, _ = training_batch()
    ids = ids.masked_fill(mask == 0, 1)  # RoBERTa's pad id
    labels = torch.tensor([0, 2, 1])
    out = fam(input_ids=ids, attention_mask=mask, labels=labels)
    assert out.logits.shape == (3, 3)
    for b in range(3):
        n = int(mask[b].sum())
        alone = fam(input_ids=ids[b:b + 1, :n], attention_mask=mask[b:b + 1, :n]).logits
        torch.testing.assert_close(out.logits[b:b + 1], alone, atol=1e-5, rtol=1e-5)
    frozen = fam.backbone(input_ids=ids, attention_mask=mask).logits
    assert (out.logits - frozen).abs().max() > 1e-5
    out.loss.backward()
    assert all((p.grad is not None) == n.startswith("generators.") for n, p in fam.named_parameters())


# ----------------------------------------------------------------------------------------------- presets
@pytest.mark.parametrize("name", ["iapt", "parade", "para", "idspam", "lpt", "idpg"])
def test_presets_train_and_generate_on_tiny(name):
    from pefts.registry import build_method
    from tests.conftest import compose

    cfg = compose(f"method={name}")
    fam = build_method(backbone("tiny"), cfg.method)
    ids, mask, labels = training_batch(vocab=fam.config.vocab_size)
    fam.train()
    fam(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    assert all((p.grad is not None) == p.requires_grad for p in fam.parameters())
    assert any(p.grad.abs().sum() > 0 for p in fam.parameters() if p.requires_grad)
    fam.eval()
    pids, pmask = prompts(vocab=fam.config.vocab_size)
    kw = dict(max_new_tokens=3, num_beams=3, **GEN)
    a = fam.generate(input_ids=pids, attention_mask=pmask, use_cache=True, **kw)
    b = fam.generate(input_ids=pids, attention_mask=pmask, use_cache=False, **kw)
    assert torch.equal(a.sequences, b.sequences)


def test_idpg_reads_the_frozen_models_last_hidden_states():
    """IDPG's sentence encoder is a separate pass of the frozen backbone; its generator sees exactly those
    last hidden states at the instruction tokens, whatever the padding side."""
    from pefts.registry import build_method
    from tests.conftest import compose

    cfg = compose("method=idpg")
    fam = build_method(backbone("tiny"), cfg.method).eval()
    seen = []
    gen = fam.generators["default"]
    handle = gen.register_forward_pre_hook(lambda m, args: seen.append((args[1].detach(), args[2].detach())))
    pids, pmask = prompts(vocab=fam.config.vocab_size)
    with torch.no_grad():
        fam(input_ids=pids, attention_mask=pmask)
        ref = fam.backbone.base_model(input_ids=pids[:1, pmask[0].bool()]).last_hidden_state[0]
    handle.remove()
    (hidden, instr), = seen
    got = hidden[0][instr[0].bool()]
    assert got.shape == ref.shape and torch.allclose(got, ref, atol=1e-5)


# --------------------------------------------------------------------------- presets: tenants, identity
FAMILY_PRESETS = ["iapt", "parade", "para", "idspam", "lpt", "idpg"]


def preset(name, perturb_seed):
    """A preset on tiny with its trainable parameters set randomly (so a test cannot pass by identity)."""
    from pefts.registry import build_method
    from tests.conftest import compose

    fam = build_method(backbone("tiny"), compose(f"method={name}").method).eval()
    g = torch.Generator().manual_seed(perturb_seed)
    with torch.no_grad():
        for p in fam.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    return fam


@pytest.mark.parametrize("name", FAMILY_PRESETS)
def test_preset_mixed_tenants_equal_each_tenant_alone(name, tmp_path):
    fam, other = preset(name, 1), preset(name, 2)
    save_peft(other, str(tmp_path / "b.safetensors"))
    fam.add_tenant("b", str(tmp_path / "b.safetensors"))
    ids, mask = prompts(B=3, vocab=fam.config.vocab_size)
    tenants = ["b", "default", "b"]
    with torch.no_grad():
        mixed = fam(input_ids=ids, attention_mask=mask, tenant_ids=tenants).logits
        kw = dict(max_new_tokens=3, num_beams=3, **GEN)
        gen_mixed = fam.generate(input_ids=ids, attention_mask=mask, tenant_ids=tenants, **kw).sequences
        for t, ref in (("default", fam), ("b", other)):
            rows = [i for i, x in enumerate(tenants) if x == t]
            torch.testing.assert_close(mixed[rows], ref(input_ids=ids[rows], attention_mask=mask[rows]).logits,
                                       atol=1e-5, rtol=1e-5)
            assert torch.equal(gen_mixed[rows], ref.generate(input_ids=ids[rows], attention_mask=mask[rows],
                                                             **kw).sequences)
        assert not torch.allclose(mixed[1], other(input_ids=ids[1:2], attention_mask=mask[1:2]).logits[0])


@pytest.mark.parametrize("name", ["parade", "para"])
def test_scaling_presets_equal_the_frozen_backbone_at_init(name):
    from pefts.registry import build_method
    from tests.conftest import compose

    model = backbone("tiny")
    ids, mask = prompts(vocab=model.config.vocab_size)
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).logits
        fam = build_method(model, compose(f"method={name}").method)
        torch.testing.assert_close(fam(input_ids=ids, attention_mask=mask).logits, ref, atol=1e-6, rtol=1e-6)
