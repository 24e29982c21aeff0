"""The input-aware PEFT family as one HF-like model: pooler -> generator -> injector on a frozen backbone.

`build_family` takes plain arguments (presets such as iapt / parade / idspam call it) and returns a
`FamilyModel`: `forward(input_ids, attention_mask, labels)` -> `.loss`, `.logits` aligned with the caller's
`input_ids` ([B, T, V], soft positions removed), `generate(...)` -> prompt ids + new tokens like HF, only
the generator's parameters trainable, usable by HF `Trainer`. Several tenants (same method, own weights)
can share one batch:

    fam = build_family(model, injector="soft_prompt", layers="all", n_tokens=4, position="prepend",
                       generator_factory=lambda in_features, out_features, n_tokens, layers: MyGen(...))
    out = fam(input_ids=ids, attention_mask=mask, labels=labels); out.loss.backward()
    fam.add_tenant("b", "runs/b/peft.safetensors")
    seqs = fam.generate(input_ids=ids, attention_mask=mask, tenant_ids=["default", "b"], max_new_tokens=8)

Generator factory contract: `factory(in_features=d, out_features=o, n_tokens=n, layers=(...)) -> nn.Module`
whose call is `gen(layer_idx, hidden[B, T, d], instruction_mask[B, T]) -> [B, n, o]`; for soft prompts
o = d and n = n_tokens, for scaling vectors n = 1 and o = sum of `scaling_dims(model, targets)`. A generator
with architecture parameters (IAPT's rational coefficients, for runners/bilevel.py) is a `GeneratorBank`
(pefts/blocks/generators.py), which declares them in `architecture_parameters()`; other generators have none.
Machinery: pefts/blocks/injectors.py (each injector prepares its backbone inputs and maps logits back),
pefts/blocks/layout.py, pefts/blocks/arch.py; interpretations: docs/deviations.md.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Sequence

import torch
from torch import nn

from pefts.blocks.arch import arch_of, layer_list, scaling_dims
from pefts.blocks.generators import GeneratorBank
from pefts.blocks.injectors import FINAL, BackboneInputs, ScalingInjector, SoftPromptInjector, call_generator
from pefts.blocks.layout import instruction_mask, left_align, plain_positions

INJECTORS = ("soft_prompt", "scaling")


class FamilyModel(nn.Module):
    """A frozen causal LM with generated soft prompts or scaling vectors. See the module docstring."""

    main_input_name = "input_ids"
    accepts_loss_kwargs = True  # forward honours Trainer's num_items_in_batch
    supports_gradient_checkpointing = True

    def __init__(self, backbone: nn.Module, generator: nn.Module, *, injector: str, layers: Sequence[int],
                 n_tokens: int = 4, position: str = "prepend", targets: Sequence[str] = ("q", "v", "up"),
                 read_layer: int | str | None = None):
        super().__init__()
        assert injector in INJECTORS, f"injector must be one of {INJECTORS}, got '{injector}'"
        self.causal = arch_of(backbone).causal
        self.backbone = backbone
        for p in backbone.parameters():
            p.requires_grad_(False)
        self.generators = nn.ModuleDict({"default": generator})
        self.kind, self.n_tokens, self.position = injector, int(n_tokens), position
        self.layers = sorted(int(i) for i in layers)
        gen = self._default_generator
        if injector == "soft_prompt":
            self.injector = SoftPromptInjector(backbone, self.layers, self.n_tokens, gen, read_layer, position)
        else:
            self.injector = ScalingInjector(backbone, self.layers, targets, gen, read_layer)

    # -- HF-like attributes -----------------------------------------------------------------------------
    @property
    def config(self):
        return self.backbone.config

    @property
    def generation_config(self):
        return self.backbone.generation_config

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.backbone.parameters()).dtype

    @torch.no_grad()
    def _final_reads(self, input_ids, attention_mask, inputs: BackboneInputs):
        """read_layer=FINAL (IDPG): the frozen backbone's last hidden states of the caller's tokens from a
        separate pass without injection, placed at their backbone positions (expanded when soft tokens are
        inserted). Encoders count their own positions (RoBERTa: from the pad ids)."""
        if self.injector.read_layer != FINAL:
            return None
        pos = {"position_ids": plain_positions(attention_mask)} if self.causal else {}
        h = self.injector.base(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                               **pos).last_hidden_state
        return {FINAL: self.injector.to_backbone(h, inputs)}

    def _default_generator(self, layer, hidden, instr):
        return call_generator(self.generators["default"], layer, hidden, instr)

    # -- tenants ----------------------------------------------------------------------------------------
    def add_tenant(self, name: str, state) -> None:
        """Register another tenant's generator (same method and sizes, frozen). `state`: a path written
        by `pefts.io.save_peft`, a dict from `peft_state_dict(model)` (keys `generators.<tenant>.*`), or a
        plain generator `state_dict()`."""
        assert name.isidentifier() and name not in self.generators, f"tenant name '{name}' invalid or taken"
        if isinstance(state, str):
            from safetensors.torch import load_file

            state = load_file(state)
        prefixes = {k.split(".")[1] for k in state if k.startswith("generators.")}
        assert len(prefixes) <= 1, f"state holds several tenants {sorted(prefixes)}; pass one"
        if prefixes:
            cut = len(f"generators.{prefixes.pop()}.")
            state = {k[cut:]: v for k, v in state.items()}
        gen = copy.deepcopy(self.generators["default"])
        missing, unexpected = gen.load_state_dict(state, strict=False)
        # shared (cross-layer) modules appear once in a saved state but under every layer's name in the
        # module: a missing key is fine when it is frozen, a buffer, or an alias of a loaded tensor
        params = dict(gen.named_parameters(remove_duplicate=False))
        loaded = {id(params[k]) for k in state if k in params}
        real = [k for k in missing if k in params and params[k].requires_grad and id(params[k]) not in loaded]
        assert not unexpected and not real, (
            f"tenant '{name}': unexpected keys {unexpected[:5]}, missing trainable keys {real[:5]}")
        for p in gen.parameters():
            p.requires_grad_(False)
        self.generators[name] = gen

    def _tenants(self, tenant_ids, batch: int):
        """(tenant index [B], generators) for one tenant name per row, or (None, None) for the default."""
        if tenant_ids is None:
            return None, None
        names = list(self.generators)
        assert len(tenant_ids) == batch, f"{len(tenant_ids)} tenant_ids for {batch} rows"
        unknown = sorted({t for t in tenant_ids if t not in names})
        assert not unknown, f"unknown tenants {unknown}; registered: {names}"
        idx = torch.tensor([names.index(t) for t in tenant_ids], device=self.device)
        return idx, [self.generators[n] for n in names]

    @contextlib.contextmanager
    def _injected(self, input_ids, attention_mask, instr, tenant_ids):
        """The one path of forward, encoder forward and generate: the injector's backbone inputs of the
        caller's batch, tenants resolved once, separate-pass reads, and the injector active inside."""
        inputs = self.injector.prepare(input_ids, attention_mask, instr)
        tenant, tenant_gens = self._tenants(tenant_ids, input_ids.shape[0])
        reads = self._final_reads(input_ids, attention_mask, inputs)
        with self.injector.active(inputs.instr, inputs.soft_start, tenant, tenant_gens, reads):
            yield inputs

    # -- forward / generate -------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, tenant_ids: Sequence[str] | None = None,
                num_items_in_batch=None, **kwargs):
        """Like a HF causal LM: logits [B, T, V] aligned with `input_ids` (logits[:, t] predict token
        t+1); loss from `labels` (-100 = ignored). Instruction tokens: attended tokens before the first
        supervised label, or all attended tokens when `labels` is None. Any padding side works. As in
        transformers, `logits_to_keep` (a 1-D tensor of the caller's columns) keeps only those columns'
        logits [B, K, V] and `shift_labels` [B, K] are then their targets (runners/trainer.py: the loss
        of the labelled positions only)."""
        from transformers.modeling_outputs import CausalLMOutputWithPast

        assert kwargs.get("past_key_values") is None, "incremental decoding goes through generate()"
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if not self.causal:
            return self._encoder_forward(input_ids, attention_mask, labels, tenant_ids, **kwargs)
        kwargs.setdefault("use_cache", False)
        keep, shift_labels = kwargs.pop("logits_to_keep", None), kwargs.pop("shift_labels", None)
        assert keep is None or torch.is_tensor(keep), "logits_to_keep: a 1-D tensor of the caller's columns"
        with self._injected(input_ids, attention_mask, instruction_mask(attention_mask, labels), tenant_ids) as x:
            pick = None
            if keep is not None and x.gather is not None:  # the kept caller columns' backbone columns, per row
                keep, pick = torch.unique(x.gather[:, keep], return_inverse=True)
            out = self.backbone(input_ids=x.input_ids, attention_mask=x.attention_mask, position_ids=x.position_ids,
                                **kwargs, **({} if keep is None else {"logits_to_keep": keep}))
        if pick is not None:
            logits = out.logits.gather(1, pick[..., None].expand(-1, -1, out.logits.shape[-1]))
        elif keep is not None:
            logits = out.logits
        else:
            logits = self.injector.logits_back(out.logits, x)
        loss = None
        if labels is not None:
            loss = self.backbone.loss_function(logits=logits, labels=labels, vocab_size=logits.shape[-1],
                                               num_items_in_batch=num_items_in_batch, shift_labels=shift_labels)
        return CausalLMOutputWithPast(loss=loss, logits=logits, hidden_states=out.hidden_states,
                                      attentions=out.attentions)

    def _encoder_forward(self, input_ids, attention_mask, labels, tenant_ids, **kwargs):
        """Encoders (RoBERTa + a classification head, the ID-SPAM setting): every attended token is
        instruction; `labels` are the head's (class) labels and go to the backbone unchanged; the output
        is the backbone's (per-example logits). Placeholders carry the pad id, so RoBERTa's position ids
        skip them: real tokens keep their positions."""
        with self._injected(input_ids, attention_mask, instruction_mask(attention_mask), tenant_ids) as x:
            return self.backbone(input_ids=x.input_ids, attention_mask=x.attention_mask, labels=labels, **kwargs)

    def _insert(self, input_ids, attention_mask, labels, instr):
        """The soft-prompt layout of a batch (`SoftPromptInjector.layout`; for tests and inspection)."""
        return self.injector.layout(input_ids, attention_mask, labels, instr)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 tenant_ids: Sequence[str] | None = None, **kwargs):
        """HF `generate` on the backbone; returns prompt ids + new tokens (as HF does for input_ids
        inputs), so `out[:, input_ids.shape[1]:]` are the new tokens. Prompts may be padded on either
        side (re-aligned left internally); soft prompts / vectors are generated once at prefill and reused
        from the KV cache / per-row state in decode steps. `max_length` / `min_length` count the caller's
        tokens (the inserted soft positions are added to them)."""
        assert self.causal, "generate() needs a causal LM backbone"
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        B = input_ids.shape[0]
        ids, mask = left_align(input_ids, attention_mask)
        with self._injected(ids, mask, instruction_mask(mask), tenant_ids) as x:
            if x.inserted:  # lengths count the caller's tokens
                gc = kwargs.get("generation_config") or self.generation_config
                if kwargs.get("max_new_tokens") is None and gc.max_new_tokens is None:
                    kwargs["max_length"] = (kwargs.get("max_length") or gc.max_length) + x.inserted
                if kwargs.get("min_length"):
                    kwargs["min_length"] += x.inserted
            out = self.backbone.generate(input_ids=x.input_ids, attention_mask=x.attention_mask,
                                         position_ids=x.position_ids, **kwargs)
        seqs = out if isinstance(out, torch.Tensor) else out.sequences
        new = seqs[:, x.input_ids.shape[1]:]
        full = torch.cat([input_ids.repeat_interleave(seqs.shape[0] // B, 0), new], 1)
        if isinstance(out, torch.Tensor):
            return full
        out.sequences = full
        return out

    @torch.no_grad()
    def generated(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> dict[int, torch.Tensor]:
        """What the default generator makes for each row at each chosen layer, {layer: [B, n, o]} (soft prompts,
        or scaling vectors with n = 1), from one forward pass with every attended token as instruction
        (runners/input_dependence.py measures how it varies across inputs)."""
        out: dict[int, torch.Tensor] = {}

        def keep(module, args, output):
            out[int(args[0])] = output.detach().float()

        handle = self.generators["default"].register_forward_hook(keep)
        try:
            self(input_ids=input_ids, attention_mask=attention_mask)
        finally:
            handle.remove()
        return out

    def architecture_parameters(self) -> list[nn.Parameter]:
        """The default generator's architecture parameters (IAPT's rational coefficients, for
        runners/bilevel.py): those a `GeneratorBank` declares; [] for any other generator."""
        gen = self.generators["default"]
        return list(gen.architecture_parameters()) if isinstance(gen, GeneratorBank) else []

    def unload(self) -> nn.Module:
        """Remove the hooks and return the (still frozen) backbone."""
        self.injector.remove()
        return self.backbone

    # -- Trainer hooks ------------------------------------------------------------------------------------
    def activation_checkpointing_enable(self, activation_checkpointing_kwargs=None, every_n_layers: int = 1,
                                        offload: bool = False):
        """Checkpoint the backbone's layers. Non-reentrant (the default) is required for scaling
        vectors, whose multipliers reach the recomputed layer through keyword arguments."""
        kw = dict(activation_checkpointing_kwargs or {"use_reentrant": False})
        if kw.get("use_reentrant", False):
            assert self.injector.reentrant_checkpointing, "scaling vectors need use_reentrant=False checkpointing"
            self.backbone.enable_input_require_grads()
        self.injector.enable_recompute()
        self.backbone.activation_checkpointing_enable(
            activation_checkpointing_kwargs=kw, every_n_layers=every_n_layers, offload=offload)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None, **kw):
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, **kw)

    def gradient_checkpointing_disable(self):
        self.injector.enable_recompute(False)
        self.backbone.gradient_checkpointing_disable()


def resolve_layers(layers, num_layers: int) -> list[int]:
    """"all" -> every layer; an int or a list of ints (negative counts from the end)."""
    if layers == "all":
        return list(range(num_layers))
    items = [layers] if isinstance(layers, int) else list(layers)
    out = sorted({i % num_layers if -num_layers <= i < 0 else i for i in map(int, items)})
    assert out and all(0 <= i < num_layers for i in out), f"layers {items} not in [0, {num_layers})"
    return out


def build_family(model: nn.Module, *, injector: str, layers, generator_factory: Callable[..., nn.Module],
                 n_tokens: int = 4, position: str | None = None, targets: Sequence[str] = ("q", "v", "up"),
                 read_layer: int | str | None = None) -> FamilyModel:
    """Freeze `model`, build the generator with `generator_factory(in_features, out_features, n_tokens,
    layers)` and wrap both. injector: "soft_prompt" (n_tokens soft tokens, `position` "prepend" before
    the instruction, "append" right after it, "after_first" behind the first token; default "prepend"
    for decoders, "after_first" for encoders, whose head reads <s>) or "scaling" (vectors for `targets`
    among q, k, v, gate, up). layers: "all", an int or a list of layer indices; read_layer: take the generator's input from
    this layer's input (0 = embeddings, ID-SPAM) instead of the injection layer's, or "final": the frozen
    backbone's last hidden states from a separate pass (IDPG's sentence encoder)."""
    assert injector in INJECTORS, f"injector must be one of {INJECTORS}, got '{injector}'"
    idx = resolve_layers(layers, len(layer_list(model)))
    if position is None:
        position = "prepend" if arch_of(model).causal else "after_first"
    d = model.config.hidden_size
    if injector == "soft_prompt":
        out_features, n = d, int(n_tokens)
    else:
        out_features, n = sum(scaling_dims(model, targets).values()), 1
    gen = generator_factory(in_features=d, out_features=out_features, n_tokens=n, layers=tuple(idx))
    return FamilyModel(model, gen, injector=injector, layers=idx, n_tokens=n, position=position,
                       targets=targets, read_layer=read_layer)
