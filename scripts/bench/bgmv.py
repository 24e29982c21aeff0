"""Mixed-tenant LoRA the way serving systems batch it (Punica's and S-LoRA's BGMV kernels), in plain torch: the
benchmarks' `lora_bgmv` row beside peft's mixed-adapter path (issue #28).

Per adapted linear layer the tenants' LoRA pairs are stacked once, A as [T, r, d_in] and B as [T, d_out, r];
in a call, every row gathers its tenant's pair once (scale folded into B; kept for the call's decode steps) and two
batched matmuls add `scale * B_t (A_t x)` to the frozen layer's output, the second one accumulating into it
(baddbmm; in place at inference), through forward hooks on a weight-sharing copy of the bare backbone. peft's own mixed batches
(`adapter_names=`) loop over the adapters and index the rows of each instead.

    bgmv = BgmvLora(peft_lora_model, names, copy)  # names: its adapters (tenants) in order; copy: a weight-sharing
                                                   # copy of its base model (scripts/bench/common.py shared_copy)
    out = bgmv.generate(input_ids=ids, attention_mask=mask, tenant_ids=["default", "t1", ...], max_new_tokens=8)
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn


class BgmvLora(nn.Module):
    """The tenants' LoRA adapters of a peft model, applied per row by gather + batched matmuls on a copy of its
    base model that shares every frozen weight. Inference only (eval mode, no dropout)."""

    def __init__(self, peft_model, names: list[str], base_copy: nn.Module):
        super().__init__()
        from peft.tuners.lora import LoraLayer

        base = peft_model.get_base_model()
        self.backbone = base_copy
        for mod in self.backbone.modules():  # the copy keeps peft's wrappers: unwrap to the frozen layers
            for child_name, child in list(mod.named_children()):
                if isinstance(child, LoraLayer):
                    setattr(mod, child_name, child.base_layer)
        self.names = list(names)
        self.rows: torch.Tensor | None = None  # tenant index per row of the running call
        self.tenant_bytes = 0  # one tenant's A and B over all adapted layers
        self._handles = []
        self._gathered: list[dict] = []  # per hooked layer: the running call's per-row weights (cleared after it)
        layers = dict(self.backbone.named_modules())
        for qname, mod in base.named_modules():
            if not isinstance(mod, LoraLayer):
                continue
            a = torch.stack([mod.lora_A[n].weight.detach() for n in self.names])  # [T, r, d_in]
            b = torch.stack([mod.lora_B[n].weight.detach() for n in self.names])  # [T, d_out, r]
            scale = torch.tensor([float(mod.scaling[n]) for n in self.names], dtype=a.dtype, device=a.device)
            self.tenant_bytes += a[0].nbytes + b[0].nbytes
            self._handles.append(layers[qname].register_forward_hook(self._hook(a, b, scale)))

    def _hook(self, a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor):
        gathered: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # rows in the call -> (A^T, s B^T) per row
        self._gathered.append(gathered)

        def add_lora(module, args, out):
            x, rows = args[0], self.rows
            if rows is None:
                return out
            n = x.shape[0]
            if n not in gathered:  # once per generate() call and row count, not at every decode step
                r = rows if rows.shape[0] == n else rows.repeat_interleave(n // rows.shape[0])  # beams: a row's tenant
                gathered[n] = (a[r].transpose(1, 2), (b[r] * scale[r][:, None, None]).transpose(1, 2))
            at, bt = gathered[n]  # [n, d_in, r], [n, r, d_out]
            h = torch.bmm(x.reshape(n, -1, x.shape[-1]).to(a.dtype), at)  # [n, L, r]
            out3 = out.reshape(n, -1, out.shape[-1])
            if torch.is_grad_enabled() or not out.is_contiguous():
                return torch.baddbmm(out3, h.to(out.dtype), bt.to(out.dtype)).reshape(out.shape)
            # inference: the frozen layer's fresh output is held by nothing else; add s B (A x) into it in one pass
            out3.baddbmm_(h.to(out.dtype), bt.to(out.dtype))
            return out

        return add_lora

    @contextlib.contextmanager
    def _routed(self, tenant_ids):
        assert tenant_ids is not None, "BgmvLora needs tenant_ids (one adapter name per row)"
        unknown = sorted(set(tenant_ids) - set(self.names))
        assert not unknown, f"unknown tenants {unknown}; known: {self.names}"
        device = next(self.backbone.parameters()).device
        self.rows = torch.tensor([self.names.index(t) for t in tenant_ids], device=device)
        try:
            yield
        finally:
            self.rows = None
            for g in self._gathered:
                g.clear()

    def forward(self, input_ids, attention_mask=None, tenant_ids=None, **kw):
        with self._routed(tenant_ids):
            return self.backbone(input_ids=input_ids, attention_mask=attention_mask, **kw)

    @torch.no_grad()
    def generate(self, input_ids, attention_mask=None, tenant_ids=None, **kw):
        with self._routed(tenant_ids):
            return self.backbone.generate(input_ids=input_ids, attention_mask=attention_mask, **kw)
