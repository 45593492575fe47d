"""Matrices stored in fewer bytes for decoding, where reading the weights bounds the time per token.

``store_weights(model, "int8")`` keeps every ``nn.Linear`` weight and the language-model head as
int8 with one fp32 scale per output row (weight-only, symmetric: ``w ≈ scale[n] · q[n, k]``),
multiplied by torch's own CPU kernel for it (``aten._weight_int8pack_mm``, the kernel torchao's
int8 weight-only path calls on a CPU), which reads int8 and takes activations in bf16: the
activations are rounded to bf16 on the way in, the output comes back in the model's dtype. The
kernel wants rows a multiple of 8 long (it crashes otherwise), so rows are stored zero-padded;
it is made for few rows of activations (decoding), so a long prompt's prefill multiplies by the
dequantized matrix instead.
``"bf16"`` keeps the same matrices in bfloat16 and multiplies in bf16 (half the bytes; only
faster where the CPU has native bf16 dot products). Embedding lookups read single rows, so a
tied embedding is looked up in the stored form too. Everything else (norms, biases, the
mixers' own parameters, experts held as stacked tensors) stays as it was.

Decoding only: the stored matrices carry no gradients, and the state dict of a stored model is
not written back (commands that save weights never call this).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._pytree import tree_map

from gptzoo.core import GPT, GptzooError

Storage = Literal["fp32", "bf16", "int8"]
STORAGES: tuple[Storage, ...] = ("fp32", "bf16", "int8")
DECODE_ROWS = 32  # activations rows up to which the int8 kernel beats a GEMM on the dequantized matrix


class StoredMatrix(Tensor):
    """A (N, K) weight kept as int8 rows with scales, or as bf16, that ``F.linear`` and
    ``F.embedding`` use directly; any other operation sees the matrix dequantized."""

    stored: Tensor  # (N, K) int8 or bf16
    scale: Tensor | None  # (N,) for int8
    k: int  # the row length; plain attributes, as the tensor's own .shape and .dtype would recurse here
    compute_dtype: torch.dtype

    @staticmethod
    def __new__(cls, weight: Tensor, storage: Storage) -> StoredMatrix:
        self = Tensor._make_wrapper_subclass(cls, weight.shape, dtype=weight.dtype, device=weight.device)
        w = weight.detach()
        self.k, self.compute_dtype = w.shape[1], w.dtype
        if storage == "int8":
            w = F.pad(w, (0, -w.shape[1] % 8))  # (N, K8): K rounded up to the kernel's multiple of 8
            scale = w.abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny) / 127  # (N,)
            self.stored = (w / scale[:, None]).round().clamp(-127, 127).to(torch.int8)  # (N, K8)
            self.scale = scale.to(torch.bfloat16)
        else:
            self.stored, self.scale = w.to(torch.bfloat16), None  # (N, K)
        return self

    def dequantized(self) -> Tensor:
        w = self.stored[:, : self.k].to(self.compute_dtype)  # (N, K)
        return w if self.scale is None else w * self.scale.to(self.compute_dtype)[:, None]

    def linear(self, x: Tensor, bias: Tensor | None) -> Tensor:
        if x.shape[:-1].numel() > DECODE_ROWS or x.device.type != "cpu":  # a prefill: one GEMM is faster
            return F.linear(x, self.dequantized(), bias)
        x2 = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)  # (B·T, K)
        if self.scale is None:
            y = x2 @ self.stored.T  # (B·T, N)
        else:
            x2 = F.pad(x2, (0, self.stored.shape[1] - x2.shape[1]))  # (B·T, K8)
            y = torch.ops.aten._weight_int8pack_mm(x2, self.stored, self.scale)  # (B·T, N)
        y = y.to(x.dtype).reshape(*x.shape[:-1], -1)
        return y if bias is None else y + bias

    def rows(self, ids: Tensor) -> Tensor:
        w = self.stored[ids, : self.k].to(self.compute_dtype)  # (..., K)
        return w if self.scale is None else w * self.scale[ids].to(self.compute_dtype)[..., None]

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if func is F.linear and isinstance(args[1], StoredMatrix) and not isinstance(args[0], StoredMatrix):
            return args[1].linear(args[0], args[2] if len(args) > 2 else kwargs.get("bias"))
        if func is F.embedding and isinstance(args[1], StoredMatrix) and all(a is None for a in args[3:4]):
            return args[1].rows(args[0])  # padding_idx only matters for gradients; max_norm (args[3]) must be None
        plain = tree_map(lambda a: a.dequantized() if isinstance(a, StoredMatrix) else a, (args, kwargs))
        with torch._C.DisableTorchFunctionSubclass():
            return func(*plain[0], **plain[1])

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        plain = tree_map(lambda a: a.dequantized() if isinstance(a, StoredMatrix) else a, (args, kwargs or {}))
        return func(*plain[0], **plain[1])


def store_weights(model: GPT, storage: Storage) -> GPT:
    """Store ``model``'s linear weights and its LM head as ``storage`` (in place; ``fp32`` leaves it as it is)."""
    if storage not in STORAGES:
        raise GptzooError(f"weight storage '{storage}': choose one of {', '.join(STORAGES)}")
    if storage == "fp32":
        return model
    if storage == "int8" and not hasattr(torch.ops.aten, "_weight_int8pack_mm"):
        raise GptzooError("int8 weight storage: this torch build has no int8 weight-only kernel; use bf16 or fp32")
    model.requires_grad_(False)
    stored: dict[int, StoredMatrix] = {}  # one StoredMatrix per Parameter: a tied head and embedding share it
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, nn.Parameter) or weight.dim() != 2:
            continue
        if not (isinstance(module, (nn.Linear, nn.Embedding)) or module is model.head):
            continue
        if id(weight) not in stored:
            stored[id(weight)] = StoredMatrix(weight, storage)
        del module.weight
        module.weight = stored[id(weight)]
    return model
