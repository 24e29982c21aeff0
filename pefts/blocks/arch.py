"""The architecture table: where things live in each supported `transformers` backbone.

One frozen `Arch` per HF `model_type` (`ARCHS`); every method, the input-aware injectors and
runners/backbones.py read it instead of probing module paths by trial. An unknown `model_type` fails
with one assert naming the known ones.

    from pefts.blocks.arch import arch_of, decoder_layers, sublayer
    for layer in decoder_layers(model):
        attn = sublayer(model, layer, "attn")

Verified module paths (meta-device builds of transformers 5.x): Llama layout (llama incl. SmolLM2,
mistral, qwen2, gemma, gemma2, gemma3_text), GPT-2 (fused `c_attn`, Conv1D), GPT-NeoX (per-head fused
`query_key_value`), and the BERT-style encoders roberta, bert, deberta-v2.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from torch import nn

TARGETS = ("q", "k", "v", "gate", "up")  # canonical order of the pieces of a generated scaling vector


@dataclass(frozen=True)
class Arch:
    """Where things live, relative to `model.base_model`.

    layers: the layer list; attn: the attention sublayer of a layer (receives the layer's **kwargs);
    mlp: the feed-forward sublayer (None for BERT-style encoders, whose FFN is split into `intermediate`
    and `output`); linears: the last name parts of a layer's linear modules;
    scale: scaling target -> (module path inside a layer, "out" = multiply its output / "in" = its input,
    layout), layout "plain" (one target), "qkv" (GPT-2: [q | k | v] blocks), "qkv_heads" (GPT-NeoX: per
    head [q_h | k_h | v_h]); rotary: positions act inside attention (inserted tokens then occupy
    positions); causal: decoder (False for encoders); head: the classification head of the encoder's
    *ForSequenceClassification model, new and trained with every method (None for decoders)."""

    layers: str
    attn: str
    mlp: str | None
    linears: tuple[str, ...]
    scale: Mapping[str, tuple[str, str, str]]
    rotary: bool = True
    causal: bool = True
    head: str | None = None


_LLAMA = Arch(
    layers="layers",
    attn="self_attn",
    mlp="mlp",
    linears=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    scale=MappingProxyType({
        "q": ("self_attn.q_proj", "out", "plain"),
        "k": ("self_attn.k_proj", "out", "plain"),
        "v": ("self_attn.v_proj", "out", "plain"),
        "gate": ("mlp.gate_proj", "out", "plain"),
        "up": ("mlp.up_proj", "out", "plain"),
    }),
)
# Non-gated FFNs: PARA's U' = l_u * U enters the down projection as l_u * (g(G) * U), i.e. the scaling of
# the down projection's input; with no gate that input is act(x W_up), so "up" scales it there.
_GPT2 = Arch(
    layers="h",
    attn="attn",
    mlp="mlp",
    linears=("c_attn", "c_proj", "c_fc"),  # transformers' Conv1D, not nn.Linear
    scale=MappingProxyType({
        "q": ("attn.c_attn", "out", "qkv"),
        "k": ("attn.c_attn", "out", "qkv"),
        "v": ("attn.c_attn", "out", "qkv"),
        "up": ("mlp.c_proj", "in", "plain"),
    }),
    rotary=False,
)
_NEOX = Arch(
    layers="layers",
    attn="attention",
    mlp="mlp",
    linears=("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
    scale=MappingProxyType({
        "q": ("attention.query_key_value", "out", "qkv_heads"),
        "k": ("attention.query_key_value", "out", "qkv_heads"),
        "v": ("attention.query_key_value", "out", "qkv_heads"),
        "up": ("mlp.dense_4h_to_h", "in", "plain"),
    }),
)
_BERT = Arch(  # roberta and bert: the same layer modules
    layers="encoder.layer",
    attn="attention",
    mlp=None,
    linears=("query", "key", "value", "dense"),
    scale=MappingProxyType({
        "q": ("attention.self.query", "out", "plain"),
        "k": ("attention.self.key", "out", "plain"),
        "v": ("attention.self.value", "out", "plain"),
        "up": ("output.dense", "in", "plain"),
    }),
    rotary=False,
    causal=False,
    head="classifier",  # RoBERTa: dense + tanh + out_proj on <s>; BERT: a linear on the pooled [CLS]
)
# DeBERTa-v2: relative attention (not rotary); no scaling targets (its layers take no **kwargs, which the
# scaling injector needs to reach the attention module), so it is listed for `is_encoder` and paths only.
_DEBERTA_V2 = Arch(
    layers="encoder.layer",
    attn="attention",
    mlp=None,
    linears=("query_proj", "key_proj", "value_proj", "dense"),
    scale=MappingProxyType({}),
    rotary=False,
    causal=False,
    head="classifier",
)
ARCHS: Mapping[str, Arch] = MappingProxyType({
    **{t: _LLAMA for t in ("llama", "mistral", "qwen2", "gemma", "gemma2", "gemma3_text")},
    "gpt2": _GPT2,
    "gpt_neox": _NEOX,
    "roberta": _BERT,
    "bert": _BERT,
    "deberta-v2": _DEBERTA_V2,
})


def arch_for(model_type: str | None) -> Arch:
    """The table entry of an HF `model_type`."""
    assert model_type in ARCHS, f"model_type '{model_type}' has no entry in ARCHS; known: {sorted(ARCHS)}"
    return ARCHS[model_type]


def arch_of(model: nn.Module) -> Arch:
    """The table entry of a (causal-LM, classifier or bare) HF model, by `model.config.model_type`."""
    return arch_for(getattr(model.config, "model_type", None))


def is_encoder(model_type: str) -> bool:
    """True for the table's encoders (roberta, bert, deberta-v2); False for decoders and unknown types."""
    arch = ARCHS.get(model_type)
    return arch is not None and not arch.causal


def peft_task_type(model: nn.Module) -> str:
    """peft's `task_type` for a backbone: SEQ_CLS for an encoder with a classification head (peft then trains
    its own copy of the head, `modules_to_save`), CAUSAL_LM for decoders."""
    return "CAUSAL_LM" if arch_of(model).causal else "SEQ_CLS"


def layer_list(model: nn.Module) -> nn.ModuleList:
    """The Transformer layers of a (causal-LM or bare) backbone."""
    return getattr(model, "base_model", model).get_submodule(arch_of(model).layers)


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The Transformer blocks of a decoder-only HF model (the baselines' attachment points)."""
    arch = arch_of(model)
    assert arch.causal, f"{model.config.model_type} is an encoder; this needs a decoder-only model"
    return list(layer_list(model))


def sublayer(model: nn.Module, layer: nn.Module, kind: str) -> nn.Module:
    """The attention ('attn') or feed-forward ('mlp') sublayer of one of `model`'s blocks."""
    assert kind in ("attn", "mlp"), f"kind must be 'attn' or 'mlp', got '{kind}'"
    arch = arch_of(model)
    name = arch.attn if kind == "attn" else arch.mlp
    assert name is not None, f"{model.config.model_type} has no single {kind} sublayer"
    return layer.get_submodule(name)


def named_linears(model: nn.Module, targets: Sequence[str]) -> list[tuple[str, nn.Linear]]:
    """`nn.Linear` modules inside the decoder layers whose last name part is in `targets` (LM head excluded)."""
    arch = arch_of(model)
    unknown = sorted(set(targets) - set(arch.linears))
    assert not unknown, f"target modules {unknown} are not among {model.config.model_type}'s {list(arch.linears)}"
    found = []
    for i, layer in enumerate(decoder_layers(model)):
        for name, mod in layer.named_modules():
            if isinstance(mod, nn.Linear) and name.rsplit(".", 1)[-1] in targets:
                found.append((f"layer{i}.{name}", mod))
    seen = {n.rsplit(".", 1)[-1] for n, _ in found}
    missing = sorted(set(targets) - seen)
    assert not missing, f"target modules {missing} are not nn.Linear modules of {type(model).__name__}"
    return found


def features(mod: nn.Module, where: str) -> int:
    """Output ('out') or input ('in') size of a linear module (nn.Linear or GPT-2's Conv1D)."""
    if isinstance(mod, nn.Linear):
        return mod.out_features if where == "out" else mod.in_features
    if hasattr(mod, "nf"):  # transformers' Conv1D (GPT-2): weight is [in, out]
        return mod.nf if where == "out" else mod.weight.shape[0]
    raise TypeError(f"cannot read the feature size of {type(mod).__name__}")


def scaling_dims(model: nn.Module, targets: Sequence[str]) -> dict[str, int]:
    """Size of each scaling vector (in TARGETS order): e.g. Llama with GQA gives l_k, l_v of
    num_key_value_heads * head_dim, not d_model (PARA assumes MHA)."""
    arch, layer = arch_of(model), layer_list(model)[0]
    unknown = [t for t in targets if t not in TARGETS]
    assert not unknown, f"unknown scaling targets {unknown}; choose from {TARGETS}"
    dims = {}
    for t in TARGETS:
        if t not in targets:
            continue
        assert t in arch.scale, (
            f"target '{t}' does not exist in {model.config.model_type} (no gated FFN / no such module)")
        path, where, layout = arch.scale[t]
        n = features(layer.get_submodule(path), where)
        dims[t] = n // 3 if layout != "plain" else n
    return dims
