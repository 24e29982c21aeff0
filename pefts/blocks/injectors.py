"""Injectors of the input-aware PEFT family: *where* generated tensors enter a frozen backbone.

Two injectors, generic over the generator, which is any callable

    gen(layer_idx: int, hidden: Tensor[B, T, d], instruction_mask: Tensor[B, T]) -> Tensor[B, n, out]

called at prefill with the input hidden states of a chosen layer (or of its `read_layer`) and a mask of
the instruction tokens, never during cached decode steps:

- `SoftPromptInjector` (IAPT, ID-SPAM, LPT, IDPG): `n` placeholder positions are inserted into the
  sequence (`insert_soft_positions`); at each chosen layer their hidden states are *replaced* by that
  layer's generated soft tokens (iapt.txt section 3.3 and footnote 3); before the first chosen layer they
  are masked out of attention, so those layers compute exactly what the frozen backbone computes.
- `ScalingInjector` (PARA eqs. 4-5, PARADE; PARADE-3 adds Key and Gate): one generated vector per row and
  layer multiplies the outputs of the Query / Key / Value / Gate / Up projections.

Architectures come from one table (`ARCHS` in pefts/blocks/arch.py: Llama layout incl.
SmolLM2/Mistral/Qwen2/Gemma, GPT-2's fused `c_attn`, GPT-NeoX's per-head fused `query_key_value`, RoBERTa
encoders). Each injector owns its layout: `prepare` gives the backbone inputs of a batch (`BackboneInputs`:
soft positions inserted, or the batch unchanged) and `logits_back` maps the backbone's logits back to the
caller's columns. Hooks are installed once and act only inside `with injector.active(...)`;
`pefts/family.py` wraps all this into an HF-like model:

    inj = SoftPromptInjector(model, layers=[2], n_tokens=4, generator=gen)
    x = inj.prepare(ids, mask, instruction_mask(mask))
    with inj.active(x.instr, soft_start=x.soft_start):
        out = model(input_ids=x.input_ids, attention_mask=x.attention_mask, position_ids=x.position_ids)
    logits = inj.logits_back(out.logits, x)

Interpretations (positions of soft tokens, beams, masks) are recorded in docs/deviations.md.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from pefts.blocks.arch import arch_of, features, layer_list, scaling_dims
from pefts.blocks.layout import POSITIONS, SoftLayout, insert_soft_positions, plain_positions

Generator = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]
_KW = "_family_scales"  # kwarg carrying a layer's multipliers from the layer hook to its attention module


# ----------------------------------------------------------------------------------------------------------
# Backbone inputs: what an injector hands the backbone, and how its logits map back
# ----------------------------------------------------------------------------------------------------------
@dataclass
class BackboneInputs:
    """A batch in the coordinates the backbone sees (`SoftPromptInjector` inserts soft positions,
    `ScalingInjector` leaves the caller's) and the map back to the caller's columns."""

    input_ids: torch.Tensor  # [B, T'] (T' = T + n_tokens for soft prompts)
    attention_mask: torch.Tensor  # [B, T']
    position_ids: torch.Tensor  # [B, T']
    instr: torch.Tensor  # [B, T'] bool, instruction tokens in backbone coordinates
    soft_start: torch.Tensor | None  # [B] first soft position, None without soft positions
    gather: torch.Tensor | None  # [B, T] backbone column whose logits belong to caller column t, or None

    @property
    def inserted(self) -> int:
        """Columns the injector inserted per row (0 when the caller's coordinates are kept)."""
        return 0 if self.gather is None else self.input_ids.shape[1] - self.gather.shape[1]


# ----------------------------------------------------------------------------------------------------------
# Runtime state and hooks
# ----------------------------------------------------------------------------------------------------------
FINAL = "final"  # read_layer value: the frozen backbone's last hidden states from a separate pass (IDPG)


class _State:
    """Per-call facts the hooks read: per-row tensors (expanded for beams on first sight of a larger
    batch), the cache offset of the current backbone call, and prefill products kept for decode."""

    def __init__(self, instr, soft_start, tenant, tenant_generators):
        self.instr = instr.bool()
        self.soft_start = soft_start
        self.tenant = tenant
        self.tenant_generators = tenant_generators
        self.past = 0
        self.in_place = False  # this backbone call may edit hidden states in place (`_Injector._base_pre`)
        self.vectors: dict[int, torch.Tensor] = {}  # scaling: layer -> [B, dim] (kept for decode)
        self.reads: dict[int, torch.Tensor] = {}  # read layer -> hidden states at prefill
        self.mults: dict[int, dict[str, torch.Tensor]] = {}  # scaling: layer -> multipliers (kept for decode)
        self.hidden_mask = None  # soft prompts: (mask given, cache offset, q, mask built) of the current step
        self._groups = None
        self._group_instr = None  # (instruction mask, its rows per tenant group): `group_instr`
        self._group_inverse = self._group_of_row = None  # `group_inverse`, `group_of_row`
        self.row_cache: dict = {}  # tenants' parameters stacked per row, for this batch (`forward_rows`)

    @property
    def batch(self) -> int:
        return self.instr.shape[0]

    def expand(self, batch: int) -> None:
        """`generate` repeats every row k times (beams, num_return_sequences) with repeat_interleave;
        beam reordering later only permutes rows of one example, which share these values."""
        assert batch % self.batch == 0, f"batch {batch} is not a multiple of the {self.batch} rows given"
        k = batch // self.batch
        self.instr = self.instr.repeat_interleave(k, 0)
        self.reads = {key: v.repeat_interleave(k, 0) for key, v in self.reads.items()}  # given before prefill
        if self.soft_start is not None:
            self.soft_start = self.soft_start.repeat_interleave(k, 0)
        if self.tenant is not None:
            self.tenant = self.tenant.repeat_interleave(k, 0)
        self._groups = self._group_instr = self._group_inverse = self._group_of_row = None
        self.row_cache = {}

    def groups(self):
        """[(generator, rows)] per tenant present, or None for a single generator."""
        if self.tenant is None:
            return None
        if self._groups is None:
            present = torch.unique(self.tenant).tolist()
            self._groups = [(self.tenant_generators[t], (self.tenant == t).nonzero().squeeze(1)) for t in present]
        return self._groups

    def group_of_row(self) -> torch.Tensor:
        """[B] index of each row's group in `groups()`, built once."""
        if self._group_of_row is None:
            gi = torch.empty_like(self.tenant)
            for j, (_, rows) in enumerate(self.groups()):
                gi[rows] = j
            self._group_of_row = gi
        return self._group_of_row

    def group_inverse(self) -> torch.Tensor:
        """[B] position of each row in the groups' concatenated rows (`groups()` order), built once."""
        if self._group_inverse is None:
            order = torch.cat([rows for _, rows in self.groups()])
            self._group_inverse = torch.empty_like(order).index_copy_(
                0, order, torch.arange(order.numel(), device=order.device))
        return self._group_inverse

    def group_instr(self, instr: torch.Tensor) -> list[torch.Tensor]:
        """`instr`'s rows of each tenant group (`groups()` order), selected once per batch: every chosen
        layer's generator call gets the same instruction mask."""
        c = self._group_instr
        if c is None or c[0] is not instr:
            c = self._group_instr = (instr, [instr.index_select(0, rows) for _, rows in self.groups()])
        return c[1]


def call_generator(gen, layer: int, hidden: torch.Tensor, instr: torch.Tensor) -> torch.Tensor:
    """Call a generator in its own parameter dtype (e.g. an fp32 generator on a bf16 backbone)."""
    p = next((p for p in gen.parameters() if p.is_floating_point()), None) if isinstance(gen, nn.Module) else None
    return gen(layer, hidden if p is None else hidden.to(p.dtype), instr)


def _param_names(fn) -> list[str]:
    return [p.name for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


class _ArgAccess:
    """Read / replace one argument of a hooked forward, whether it came positionally or by keyword."""

    def __init__(self, module: nn.Module, name: str):
        names = _param_names(module.forward)
        self.name, self.index = name, names.index(name) if name in names else None

    def get(self, args, kwargs):
        if self.name in kwargs:
            return kwargs[self.name]
        if self.index is not None and self.index < len(args):
            return args[self.index]
        return None

    def put(self, args, kwargs, value):
        if self.index is not None and self.index < len(args) and self.name not in kwargs:
            args = (*args[: self.index], value, *args[self.index + 1:])
        else:
            kwargs[self.name] = value
        return args, kwargs


class _Injector:
    """Common part: layer discovery, the per-call hook on the base model, the prefill/decode decision,
    generator dispatch (one generator, or one per tenant), the map of logits back to the caller's
    columns, and hook removal. Subclasses give `prepare` (the backbone inputs of a batch)."""

    reentrant_checkpointing = True  # whether reentrant activation checkpointing keeps the injection

    def __init__(self, model: nn.Module, layers: Sequence[int], generator: Generator,
                 read_layer: int | str | None = None):
        self.model, self.arch = model, arch_of(model)
        self.base = getattr(model, "base_model", model)
        self.layers_list = layer_list(model)
        L = len(self.layers_list)
        self.layers = sorted(set(int(i) for i in layers))
        assert self.layers and all(0 <= i < L for i in self.layers), f"layers {self.layers} not in [0, {L})"
        assert read_layer is None or read_layer == FINAL or 0 <= read_layer <= self.layers[0], (
            f"read_layer={read_layer} must be '{FINAL}' or lie in [0, first chosen layer {self.layers[0]}]")
        self.read_layer = read_layer
        self.generator = generator
        self.state: _State | None = None
        self.calls = 0  # generator calls (tests check that decode steps make none)
        self._handles = []
        self._past = _ArgAccess(self.base, "past_key_values") if "past_key_values" in _param_names(
            self.base.forward) else None
        self._ids = _ArgAccess(self.base, "input_ids")
        self._emb = _ArgAccess(self.base, "inputs_embeds")
        self._handles.append(self.base.register_forward_pre_hook(self._base_pre, with_kwargs=True))
        layer0 = self.layers_list[0]
        self._hidden = _ArgAccess(layer0, "hidden_states")
        self._mask = _ArgAccess(layer0, "attention_mask")

    # -- layout ---------------------------------------------------------------------------------------
    def prepare(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, instr: torch.Tensor) -> BackboneInputs:
        """The backbone inputs of a batch given in the caller's coordinates (`instr`: its instruction mask)."""
        raise NotImplementedError

    def logits_back(self, logits: torch.Tensor, inputs: BackboneInputs) -> torch.Tensor:
        """Backbone logits [B, T', V] -> the caller's columns [B, T, V] (logits[:, t] predict token t+1)."""
        if inputs.gather is None:
            return logits
        return logits.gather(1, inputs.gather[..., None].expand(-1, -1, logits.shape[-1]))

    def to_backbone(self, x: torch.Tensor, inputs: BackboneInputs) -> torch.Tensor:
        """Per-token states [B, T, d] of the caller's columns placed at their backbone columns (zeros at
        inserted ones)."""
        if inputs.gather is None:
            return x
        return x.new_zeros((*inputs.input_ids.shape, x.shape[-1])).scatter(
            1, inputs.gather[..., None].expand(-1, -1, x.shape[-1]), x)

    # -- lifecycle ------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def active(self, instr, soft_start=None, tenant=None, tenant_generators=None, reads=None):
        """Hooks act inside this block. instr: [B, T] instruction mask in the coordinates the backbone
        sees; soft_start: [B] first soft position (soft prompts); tenant: [B] long index into
        `tenant_generators` (multi-tenant batches), None for the single `generator`; reads: generator
        inputs computed before the call ({FINAL: [B, T, d]} for read_layer=FINAL)."""
        assert self.state is None, "injector already active (nested calls are not supported)"
        self.state = _State(instr, soft_start, tenant, tenant_generators)
        self.state.reads.update(reads or {})
        try:
            yield self.state
        finally:
            self.state = None

    def enable_recompute(self, on: bool = True) -> None:
        """Called when activation checkpointing is enabled (on=True) or disabled; soft prompts need nothing
        (their pre-hook writes the layer's inputs, which the recomputation sees)."""

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    # -- hooks ----------------------------------------------------------------------------------------
    def _base_pre(self, module, args, kwargs):
        st = self.state
        if st is None:
            return None
        cache = self._past.get(args, kwargs) if self._past is not None else None
        st.past = int(cache.get_seq_length()) if cache is not None else 0
        # without autograd and without collected hidden states, nothing else holds a layer's input or a
        # projection's output: the injection may edit them in place (no copy of [B, T, d] per layer)
        st.in_place = not torch.is_grad_enabled() and not (
            kwargs.get("output_hidden_states") or getattr(self.base.config, "output_hidden_states", False))
        assert not st.past or st.past >= st.instr.shape[1], (
            f"a call starting at cache position {st.past} < prompt length {st.instr.shape[1]} is not supported")
        x = self._ids.get(args, kwargs)
        x = x if x is not None else self._emb.get(args, kwargs)
        if x.shape[0] != st.batch:
            st.expand(x.shape[0])
        return None

    def _is_prefill(self, st: _State, q: int) -> bool:
        """True when this call sees the whole prompt (prefill, or any no-cache step): generate now.
        False in cached decode steps: reuse what prefill produced."""
        T = st.instr.shape[1]
        if st.past == 0:
            assert q >= T, f"prefill saw {q} of {T} prompt positions: chunked prefill is not supported"
            return True
        assert st.past >= T, f"a call starting at cache position {st.past} < prompt length {T} is not supported"
        return False

    def _instr_window(self, st: _State, q: int) -> torch.Tensor:
        T = st.instr.shape[1]
        return st.instr if q == T else torch.nn.functional.pad(st.instr, (0, q - T), value=False)

    def _generate(self, layer: int, hidden: torch.Tensor, instr: torch.Tensor) -> torch.Tensor:
        st = self.state
        groups = st.groups()
        self.calls += 1
        if groups is None:
            return call_generator(self.generator, layer, hidden, instr)
        if len(groups) == 1:  # one tenant in the batch: its generator on the batch as it is
            return call_generator(groups[0][0], layer, hidden, instr)
        gens = [g for g, _ in groups]
        batched = getattr(type(gens[0]), "forward_rows", None)  # GeneratorBank: all tenants in one pass
        if batched is not None and all(type(g) is type(gens[0]) for g in gens):
            out = batched(gens, layer, hidden, instr, st.group_of_row(), cache=st.row_cache)
            if out is not None:
                return out
        outs = [call_generator(gen, layer, hidden.index_select(0, rows), instr_g)
                for (gen, rows), instr_g in zip(groups, st.group_instr(instr))]
        return torch.cat(outs, 0).index_select(0, st.group_inverse())  # one copy back to the batch's row order

    def _source(self, st: _State, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        if self.read_layer is None:
            return hidden
        src = st.reads[self.read_layer]
        extra = hidden.shape[1] - src.shape[1]  # no-cache decode steps re-run prompt + new tokens
        return torch.nn.functional.pad(src, (0, 0, 0, extra)) if extra > 0 else src

    def _register_layer_hooks(self, wanted: set[int], fn) -> None:
        for i in sorted(wanted):
            layer = self.layers_list[i]
            self._handles.append(layer.register_forward_pre_hook(
                lambda mod, args, kwargs, i=i: fn(i, args, kwargs), with_kwargs=True))


class SoftPromptInjector(_Injector):
    """Soft tokens at `n_tokens` inserted positions, replaced at every chosen layer by that layer's
    generated tokens (iapt.txt footnote 3: the previous layer's are discarded). Layers before the first
    chosen one do not see the inserted positions (masked keys); layers after a chosen one propagate them
    like ordinary tokens until the next chosen layer replaces them. At decode they live in the KV cache."""

    def __init__(self, model, layers, n_tokens: int, generator: Generator, read_layer: int | str | None = None,
                 position: str = "prepend"):
        assert position in POSITIONS, f"position must be one of {POSITIONS}, got '{position}'"
        super().__init__(model, layers, generator, read_layer)
        assert n_tokens > 0, "n_tokens must be positive"
        self.n, self.position = n_tokens, position
        self._chosen = frozenset(self.layers)
        wanted = set(self.layers) | set(range(self.layers[0]))
        if isinstance(read_layer, int):
            wanted.add(read_layer)
        self._register_layer_hooks(wanted, self._layer_pre)

    def layout(self, input_ids, attention_mask, labels, instr) -> SoftLayout:
        """`n_tokens` soft positions inserted at `position` (`insert_soft_positions`); placeholder id: the
        pad id for encoders (skipped by their position ids), any non-pad id for decoders (the content is
        never seen: masked, then replaced)."""
        c = self.model.config
        fill = c.pad_token_id if not self.arch.causal else next(
            i for i in (c.bos_token_id, c.eos_token_id, 0, 1) if i is not None and i != c.pad_token_id)
        return insert_soft_positions(input_ids, attention_mask, labels, instr, self.n, self.position, fill_id=fill,
                                     occupy_positions=self.arch.rotary)

    def prepare(self, input_ids, attention_mask, instr) -> BackboneInputs:
        """The batch with its soft positions (`layout`); logits map back through the layout's `src`."""
        lay = self.layout(input_ids, attention_mask, None, instr)
        return BackboneInputs(lay.input_ids, lay.attention_mask, lay.position_ids, lay.instr, lay.start, lay.src)

    def _layer_pre(self, i: int, args, kwargs):
        st = self.state
        if st is None or (st.past and i >= self.layers[0]):
            return None  # cached decode steps from the first chosen layer on: the soft tokens are in the cache
        hidden = self._hidden.get(args, kwargs)
        q = hidden.shape[1]
        prefill = self._is_prefill(st, q)
        if prefill and i == self.read_layer:
            st.reads[i] = hidden
        if prefill and i in self._chosen:
            soft = self._generate(i, self._source(st, i, hidden), self._instr_window(st, q))
            assert soft.shape == (hidden.shape[0], self.n, hidden.shape[2]), (
                f"generator returned {tuple(soft.shape)}, expected {(hidden.shape[0], self.n, hidden.shape[2])}")
            idx = (st.soft_start[:, None] + torch.arange(self.n, device=hidden.device))[..., None]
            idx, soft = idx.expand(-1, -1, hidden.shape[2]), soft.to(hidden.dtype)
            if st.in_place and not any(r is hidden for r in st.reads.values()):
                hidden.scatter_(1, idx, soft)  # the layer's input is the previous layer's output, held by none
            else:
                hidden = hidden.scatter(1, idx, soft)
            args, kwargs = self._hidden.put(args, kwargs, hidden)
        if i < self.layers[0]:
            mask = self._hide(st, self._mask.get(args, kwargs), q, hidden)
            args, kwargs = self._mask.put(args, kwargs, mask)
        return args, kwargs

    def _hide(self, st: _State, mask, q: int, hidden: torch.Tensor):
        """Mask the soft positions as keys for every query except the soft positions themselves (so no
        row is left without keys), for one layer before the first chosen one. Every such layer of one
        backbone call gets the same mask, so it is built once per call (kept in the state)."""
        c = st.hidden_mask
        if c is not None and c[0] is mask and c[1] == st.past and c[2] == q:
            return c[3]
        out = self._build_hidden_mask(st, mask, q, hidden)
        st.hidden_mask = (mask, st.past, q, out)
        return out

    def _build_hidden_mask(self, st: _State, mask, q: int, hidden: torch.Tensor):
        dev = hidden.device
        kv = mask.shape[-1] if mask is not None else st.past + q
        if mask is not None and (not isinstance(mask, torch.Tensor) or mask.ndim != 4):
            raise NotImplementedError(
                f"hiding soft positions needs a 4D mask (eager/sdpa attention), got {type(mask).__name__}; "
                "use attn_implementation='sdpa' or 'eager', or inject at layer 0")
        if kv != st.past + q:
            raise NotImplementedError(f"mask covers {kv} keys, expected {st.past + q} (sliding-window cache?)")
        start = st.soft_start[:, None]
        kpos = torch.arange(kv, device=dev)[None]
        qpos = st.past + torch.arange(q, device=dev)[None]
        soft_k = (kpos >= start) & (kpos < start + self.n)  # [B, kv]
        soft_q = (qpos >= start) & (qpos < start + self.n)  # [B, q]
        hide = soft_k[:, None, None, :] & ~soft_q[:, None, :, None]  # [B, 1, q, kv]
        if mask is None:
            keep = kpos[0][None, :] <= qpos[0][:, None] if self.arch.causal else torch.ones(q, kv, dtype=torch.bool,
                                                                                               device=dev)
            keep = keep[None, None] & ~hide
            if self.base.config._attn_implementation in ("eager", "sdpa"):  # additive: sdpa would convert a
                # bool mask at every layer (built once per call here)
                return torch.zeros(keep.shape, dtype=hidden.dtype, device=dev).masked_fill(
                    ~keep, torch.finfo(hidden.dtype).min)
            return keep
        if mask.dtype == torch.bool:
            return mask & ~hide
        return mask.masked_fill(hide, torch.finfo(mask.dtype).min)


class ScalingInjector(_Injector):
    """Per-row vectors multiplying projection outputs of chosen layers (PARA eqs. 4-5: Q' = l_q * Q,
    V' = l_v * V, U' = l_u * U; PARADE-3 also l_k, l_gate). The generator returns [B, 1, sum(dims)],
    split in TARGETS order. Vectors are generated at prefill and kept per row for decode steps."""

    reentrant_checkpointing = False  # multipliers reach a recomputed layer through keyword arguments

    def __init__(self, model, layers, targets: Sequence[str], generator: Generator, read_layer: int | str | None = None):
        super().__init__(model, layers, generator, read_layer)
        self.dims = scaling_dims(model, targets)
        self.width = sum(self.dims.values())
        self._chosen = frozenset(self.layers)
        self._cur: dict[int, dict[str, torch.Tensor]] = {}
        wanted = set(self.layers) | ({read_layer} if isinstance(read_layer, int) else set())
        self._register_layer_hooks(wanted, self._layer_pre)
        # modules to hook, each with its assembly recipe: [(target or None, size)], permutation or None
        self._recipes: dict[str, tuple[str, list, torch.Tensor | None]] = {}
        layer0 = self.layers_list[0]
        for t in self.dims:
            path, where, layout = self.arch.scale[t]
            if path in self._recipes:
                continue
            if layout == "plain":
                self._recipes[path] = (where, [(t, self.dims[t])], None)
                continue
            full = features(layer0.get_submodule(path), "out")
            d = full // 3
            parts = [(s if s in self.dims else None, d) for s in ("q", "k", "v")]
            perm = None
            if layout == "qkv_heads":  # physical h*3hd + s*hd + j  <-  logical s*d + h*hd + j
                heads = model.config.num_attention_heads
                hd = d // heads
                h, s, j = torch.meshgrid(torch.arange(heads), torch.arange(3), torch.arange(hd), indexing="ij")
                perm = (s * d + h * hd + j).reshape(-1)
            self._recipes[path] = (where, parts, perm)
        self._last = list(self._recipes)[-1]
        self._attn_handles = []  # pre-hooks on attention modules, only under activation checkpointing
        for i in self.layers:
            layer = self.layers_list[i]
            for path, (where, _, _) in self._recipes.items():
                mod = layer.get_submodule(path)
                if where == "out":
                    h = mod.register_forward_hook(lambda m, a, out, i=i, p=path: self._scale_out(i, p, out))
                else:
                    h = mod.register_forward_pre_hook(lambda m, a, i=i, p=path: self._scale_in(i, p, a))
                self._handles.append(h)

    def prepare(self, input_ids, attention_mask, instr) -> BackboneInputs:
        """The caller's batch unchanged, with positions from the mask (`plain_positions`)."""
        return BackboneInputs(input_ids, attention_mask, plain_positions(attention_mask), instr, None, None)

    def _layer_pre(self, i: int, args, kwargs):
        st = self.state
        if st is None:
            return None
        if st.past:  # cached decode step: the multipliers prefill made, unchanged
            if i not in self._chosen:
                return None
            mults = st.mults.get(i)
            assert mults is not None, "no stored scaling vectors for this batch"
        else:
            hidden = self._hidden.get(args, kwargs)
            q = hidden.shape[1]
            assert self._is_prefill(st, q)
            if i == self.read_layer:
                st.reads[i] = hidden
            if i not in self._chosen:
                return None
            vec = self._generate(i, self._source(st, i, hidden), self._instr_window(st, q))
            assert vec.shape == (hidden.shape[0], 1, self.width), (
                f"generator returned {tuple(vec.shape)}, expected {(hidden.shape[0], 1, self.width)}")
            st.vectors[i] = vec[:, 0]
            mults = st.mults[i] = self._multipliers(vec[:, 0].to(hidden.dtype))
        self._cur[i] = mults
        if not (self._attn_handles and torch.is_grad_enabled()):
            return None
        # also through the layer's kwargs: activation checkpointing re-runs the layer's forward (not this
        # hook) in backward, and the attention module's pre-hook picks the multipliers up again there
        kwargs[_KW] = mults
        return args, kwargs

    def enable_recompute(self, on: bool = True) -> None:
        """Activation checkpointing on: the multipliers also travel through each chosen layer's kwargs to a
        pre-hook on its attention module, which a recomputed layer forward runs again. Installed only while it
        is on: every other call (inference, every decode step) skips one Python hook per layer."""
        if on and not self._attn_handles:
            self._attn_handles = [self.layers_list[i].get_submodule(self.arch.attn).register_forward_pre_hook(
                lambda mod, args, kwargs, i=i: self._attn_pre(i, args, kwargs), with_kwargs=True) for i in self.layers]
        elif not on:
            for h in self._attn_handles:
                h.remove()
            self._attn_handles = []

    def remove(self) -> None:
        self.enable_recompute(False)
        super().remove()

    def _multipliers(self, vec: torch.Tensor) -> dict[str, torch.Tensor]:
        """{hooked module path: its multiplier [B, 1, width]} from the rows' vectors [B, sum(dims)]."""
        pieces = dict(zip(self.dims, vec.split(list(self.dims.values()), dim=1)))
        out = {}
        for path, (_, parts, perm) in self._recipes.items():
            cols = [pieces[t] if t is not None else vec.new_ones(vec.shape[0], n) for t, n in parts]
            m = torch.cat(cols, 1) if len(cols) > 1 else cols[0]
            out[path] = (m[:, perm.to(m.device)] if perm is not None else m)[:, None, :]
        return out

    def _attn_pre(self, i: int, args, kwargs):
        mults = kwargs.pop(_KW, None)
        if mults is not None:
            self._cur[i] = mults
        return args, kwargs

    def _take(self, i: int, path: str) -> torch.Tensor | None:
        """This layer's multiplier for `path`; the last hooked module of the layer (in execution order:
        attention, then FFN) drops the layer's entry, so no stale multiplier outlives the layer call."""
        m = self._cur.get(i)
        if m is None:
            return None
        if path == self._last:
            del self._cur[i]
        return m[path]

    def _scale_out(self, i: int, path: str, out):
        m = self._take(i, path)
        if m is None:
            return None
        if self.state is not None and self.state.in_place:  # a projection's fresh output, held by none
            return out.mul_(m)
        return out * m

    def _scale_in(self, i: int, path: str, args):
        m = self._take(i, path)
        return None if m is None else (args[0] * m, *args[1:])

    @contextlib.contextmanager
    def active(self, instr, soft_start=None, tenant=None, tenant_generators=None, reads=None):
        with super().active(instr, soft_start, tenant, tenant_generators, reads) as st:
            try:
                yield st
            finally:
                self._cur.clear()
