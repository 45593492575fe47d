"""Matrices stored for decoding, where reading the weights bounds the time per token: in the layout
read fastest (fp32), or in fewer bytes (bf16, int8, int4).

``store_weights(model, "int8")`` swaps every ``nn.Linear`` for a ``StoredLinear`` that keeps its
weight as int8 with one scale per output row (weight-only, symmetric: ``w ≈ scale[n] · q[n, k]``),
multiplied by torch's own CPU kernel for it (``aten._weight_int8pack_mm``, the kernel torchao's
int8 weight-only path calls on a CPU), which reads int8 and takes activations in bf16: the
activations are rounded to bf16 on the way in, the output comes back in the model's dtype. The
kernel reads rows in whole vectors, 8 numbers (AVX2) or 16 (AVX-512), with no code for a shorter tail:
a row of another length crashes it or comes out wrong, so rows are stored zero-padded to a multiple of 16;
it is made for few rows of activations (decoding), so a long prompt's prefill multiplies by the
dequantized matrix instead.
``"int4"`` keeps each group of 32 numbers along a row as 4-bit codes with a bf16 scale and zero point
(weight-only, asymmetric: ``w ≈ (q - 8) · scale + zero``, q in 0..15), multiplied by torch's CPU kernel
for it (``aten._weight_int4pack_mm_for_cpu``) at any number of rows, activations rounded to bf16 on
the way in. The kernel takes the codes in a blocked layout of its own, which differs between its AVX2,
AVX-512 and plain builds, and the number of output rows a multiple of 16 (the rows are zero-padded,
the extra outputs dropped). Its layout has no rows to index, so a matrix that is also looked up (a
tied head's embedding, an untied one) keeps its codes a second time, two a byte along each row
(``StoredLinear.row_table``).
``"bf16"`` keeps the same matrices in bfloat16 and multiplies in bf16 (half the bytes). Where
oneDNN multiplies bf16 natively (a CPU with AVX-512 bf16 or AMX), each matrix is kept in oneDNN's
own blocked layout (``mkldnn._reorder_linear_weight``, as Inductor's freezing packs a bf16 linear)
and multiplied by oneDNN (``mkldnn._linear_pointwise``), which reads it faster than torch's
one-row bf16 product reads the plain matrix; elsewhere the plain (N, K) matrix, multiplied by torch.
A packed matrix cannot be indexed by rows, so one that is also looked up (a tied head's) keeps a plain
copy (``StoredLinear.row_table``).
``"fp32"`` keeps the model's own values and dtype, each matrix in the layout of the longer rows:
a product with one row of activations reads the (N, K) layout as N dot products of K numbers and
the transposed (K, N) one as K rows of N numbers scaled and summed, and BLAS streams the longer
rows nearer the memory's rate. So a matrix that widens (N ≥ K: a vocabulary-sized head, the
query-key-value and up projections) is kept transposed, one that narrows (the down projection)
as it is (the numbers are in docs/design/performance.md).

The language-model head becomes a ``StoredHead`` (its stored matrix, then the head's own scaling
and capping), every ``nn.Embedding`` a ``StoredEmbedding`` that looks single rows up in the stored
form; a tied head and its embedding share one stored matrix (a packed bf16 one keeps its rows as a
plain copy beside it, an int4 one its codes row by row). Everything else (norms, biases, the mixers' own parameters, experts held as
stacked tensors) stays as it was. These are plain modules holding plain tensors, so a decoding step
costs the kernels and a few tensor calls each, with no dispatch through a tensor subclass.

Decoding only: the stored matrices carry no gradients, and the state dict of a stored model is
not written back (commands that save weights never call this).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gptzoo.core import GPT, GptzooError

Storage = Literal["fp32", "bf16", "int8", "int4"]
STORAGES: tuple[Storage, ...] = ("fp32", "bf16", "int8", "int4")
DECODE_ROWS = 32  # activations rows up to which the int8 kernel beats a GEMM on the dequantized matrix
INT8_ROW_MULTIPLE = 16  # the int8 kernel's vector of numbers on AVX-512 (8 on AVX2): it has no code for a tail
INT4_GROUP = 32  # numbers sharing a scale and zero point: the kernel takes 32 to 256, 32 read fastest and closest
INT4_ROWS_MULTIPLE = 16  # the int4 kernel's layout takes output rows (N) in multiples of 16


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX-512 bf16, which AMX processors have too)."""
    supported = getattr(torch.cpu, "_is_avx512_bf16_supported", None)  # private; absent on some builds
    return bool(supported is not None and supported())


def packs_bf16() -> bool:
    """Whether bf16 matrices are kept packed for oneDNN: where it multiplies bf16 natively (oneDNN also takes
    bf16 on AVX-512 without it, emulated, which was never measured)."""
    return bool(torch.backends.mkldnn.is_available() and native_bf16())


def packed_product(x: Tensor, packed: Tensor) -> Tensor:
    """bf16 rows ``x`` (..., K) times a matrix oneDNN packed: (..., N)."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")


@torch.library.custom_op("gptzoo::packed_bf16_linear", mutates_args=())
def packed_bf16_linear(x: Tensor, packed: Tensor, out_features: int) -> Tensor:
    """``packed_product`` as an operator ``torch.compile`` calls as it is: Inductor lowers oneDNN's own operator
    only for matrices it packed itself. Eager calls skip it (the operator's dispatch costs more than the call)."""
    return packed_product(x, packed)


@packed_bf16_linear.register_fake
def _(x: Tensor, packed: Tensor, out_features: int) -> Tensor:
    return x.new_empty(*x.shape[:-1], out_features)


def _int4_groups(w: Tensor) -> tuple[Tensor, Tensor]:
    """The (N, K) matrix ``w`` as 4-bit codes (N16, K32) int32 in 0..15 and each group's scale and zero point
    (K32 / INT4_GROUP, N16, 2) bf16, the kernel's order: ``w ≈ (q - 8) · scale + zero``, padded with zeros to
    N16 rows (a multiple of INT4_ROWS_MULTIPLE) and K32 columns (of INT4_GROUP)."""
    w = F.pad(w.float(), (0, -w.shape[1] % INT4_GROUP, 0, -w.shape[0] % INT4_ROWS_MULTIPLE))  # (N16, K32)
    groups = w.reshape(w.shape[0], -1, INT4_GROUP)  # (N16, K32/G, G)
    low, high = groups.amin(dim=-1), groups.amax(dim=-1)  # (N16, K32/G)
    scale = ((high - low) / 15).clamp_min(torch.finfo(torch.bfloat16).tiny).to(torch.bfloat16)
    zero = (low + 8 * scale.float()).to(torch.bfloat16)  # the value code 8 stands for
    codes = ((groups - zero.float()[..., None]) / scale.float()[..., None] + 8).round().clamp(0, 15)
    return codes.reshape(w.shape).to(torch.int32), torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous()


class StoredLinear(nn.Module):
    """``x @ w.T + b`` with the (N, K) matrix ``w`` kept as 4-bit codes in groups, as int8 rows with scales, as
    bf16, or as fp32 in the layout of the longer rows."""

    # (N16, K32 / 2) uint8 int4 codes in the kernel's layout (None: never multiplied); (N, K16) int8;
    # (N, K) bf16, in oneDNN's blocked layout where packed; fp32 (K, N) where N ≥ K, else (N, K)
    stored: Tensor | None
    scale: Tensor | None  # (N,) bf16 for int8; (K32 / INT4_GROUP, N16, 2) bf16 scales and zero points for int4
    # the matrix again in rows, where it is looked up and ``stored`` has none: (N, K) bf16 where packed,
    # (N16, K32 / 2) uint8 int4 codes two a byte along each row
    row_table: Tensor | None
    bias: Tensor | None  # (N,)

    def __init__(
        self, weight: Tensor, bias: Tensor | None, storage: Storage, multiplied: bool = True, looked_up: bool = False
    ):
        super().__init__()
        w = weight.detach()
        self.in_features, self.out_features, self.compute_dtype = w.shape[1], w.shape[0], w.dtype
        self.storage = storage
        self.transposed = storage == "fp32" and w.shape[0] >= w.shape[1]
        # bf16 is packed for oneDNN where it multiplies bf16 natively; a lookup table alone (not multiplied) stays plain
        self.packed = storage == "bf16" and multiplied and w.device.type == "cpu" and packs_bf16()
        self.register_buffer("row_table", None)
        if storage == "fp32":
            self.register_buffer("stored", w.T.contiguous() if self.transposed else w.contiguous())  # (K, N) or (N, K)
            self.scale = None
        elif storage == "int4":
            codes, scale = _int4_groups(w)  # (N16, K32), (K32/G, N16, 2)
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1) if multiplied else None
            self.register_buffer("stored", packed)
            self.register_buffer("scale", scale)
            if looked_up:
                self.row_table = (codes[:, ::2] | codes[:, 1::2] << 4).to(torch.uint8)  # (N16, K32/2)
        elif storage == "int8":
            w = F.pad(w, (0, -w.shape[1] % INT8_ROW_MULTIPLE))  # (N, K16): K rounded up to the kernel's multiple
            scale = w.abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny) / 127  # (N,)
            self.register_buffer("stored", (w / scale[:, None]).round().clamp(-127, 127).to(torch.int8))  # (N, K16)
            self.register_buffer("scale", scale.to(torch.bfloat16))
        else:
            w = w.to(torch.bfloat16)  # (N, K)
            self.register_buffer("stored", torch.ops.mkldnn._reorder_linear_weight(w, 1) if self.packed else w)
            self.scale = None
            if self.packed and looked_up:
                self.row_table = w  # (N, K): oneDNN's blocked layout has no rows to index
        self.register_buffer("bias", None if bias is None else bias.detach())

    @property
    def weight(self) -> Tensor:
        """The matrix dequantized (N, K), for the few modules that read a linear's weight themselves."""
        if self.storage == "fp32":
            return self.stored.T if self.transposed else self.stored  # (N, K), a view
        if self.packed:
            return self.stored.to_dense().to(self.compute_dtype)  # (N, K): oneDNN reorders it back
        if self.storage == "int4":
            if self.row_table is not None:
                return self.rows(torch.arange(self.out_features, device=self.row_table.device))
            # the kernel's layout is read only by the kernel: it multiplies the identity, to bf16 precision
            eye = torch.eye(self.scale.shape[0] * INT4_GROUP, dtype=torch.bfloat16, device=self.scale.device)
            return self._int4_product(eye)[: self.in_features].T.to(self.compute_dtype)  # (N, K)
        w = self.stored[:, : self.in_features].to(self.compute_dtype)
        return w if self.scale is None else w * self.scale.to(self.compute_dtype)[:, None]

    def _int4_product(self, x2: Tensor) -> Tensor:
        """bf16 rows ``x2`` (M, K) times the int4 matrix: (M, N), bf16."""
        K32 = self.scale.shape[0] * INT4_GROUP
        if x2.shape[1] != K32:
            x2 = F.pad(x2, (0, K32 - x2.shape[1]))  # (M, K32)
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.stored, INT4_GROUP, self.scale)[
            :, : self.out_features
        ]

    def forward(self, x: Tensor) -> Tensor:
        int4 = self.storage == "int4"  # the int4 kernel at any number of rows: it keeps no matrix to dequantize
        if self.storage == "fp32" or (x.shape[:-1].numel() > DECODE_ROWS and not int4) or x.device.type != "cpu":
            return F.linear(x, self.weight, self.bias)  # fp32, or a prefill, where one GEMM is faster
        x2 = x.reshape(-1, x.shape[-1]).to(torch.bfloat16).contiguous()  # (B·T, K): the kernel reads rows whole
        if int4:
            y = self._int4_product(x2)  # (B·T, N)
        elif self.packed:
            compiling = torch.compiler.is_compiling()
            y = packed_bf16_linear(x2, self.stored, self.out_features) if compiling else packed_product(x2, self.stored)
        elif self.scale is None:
            y = x2 @ self.stored.T  # (B·T, N)
        else:
            if self.stored.shape[1] != self.in_features:
                x2 = F.pad(x2, (0, self.stored.shape[1] - self.in_features))  # (B·T, K16)
            y = torch.ops.aten._weight_int8pack_mm(x2, self.stored, self.scale)  # (B·T, N)
        y = y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias

    def rows(self, ids: Tensor) -> Tensor:
        """Rows ``ids`` (...) of the matrix, dequantized: (..., K)."""
        if self.transposed:
            return self.stored[:, ids].movedim(0, -1)  # (K, ...) -> (..., K)
        if (self.packed or self.storage == "int4") and self.row_table is None:
            raise GptzooError(f"this {self.storage} matrix is stored only to be multiplied: it has no rows to look up")
        if self.packed:
            return self.row_table[ids].to(self.compute_dtype)  # (..., K)
        if self.storage == "int4":
            pairs = self.row_table[ids]  # (..., K32/2)
            q = torch.stack([pairs & 15, pairs >> 4], dim=-1).flatten(-2).float()  # (..., K32)
            q = q.unflatten(-1, (-1, INT4_GROUP))  # (..., K32/G, G)
            scale, zero = self.scale[:, ids].movedim(0, -2).float().unbind(-1)  # (..., K32/G) each
            w = (q - 8) * scale[..., None] + zero[..., None]  # (..., K32/G, G)
            return w.flatten(-2)[..., : self.in_features].to(self.compute_dtype)  # (..., K)
        w = self.stored[ids, : self.in_features].to(self.compute_dtype)
        return w if self.scale is None else w * self.scale[ids].to(self.compute_dtype)[..., None]


class StoredEmbedding(nn.Module):
    """A lookup table kept as a ``StoredLinear``'s matrix (a tied head's own)."""

    def __init__(self, matrix: StoredLinear):
        super().__init__()
        self.matrix = matrix

    @property
    def weight(self) -> Tensor:
        """An empty (0, K) tensor: what callers read the model's device and dtype from, without dequantizing
        the table (the rows themselves are read by calling the module)."""
        device = next(self.matrix.buffers()).device
        return torch.empty(0, self.matrix.in_features, dtype=self.matrix.compute_dtype, device=device)

    def forward(self, ids: Tensor) -> Tensor:
        return self.matrix.rows(ids)  # (..., K)


class StoredHead(nn.Module):
    """A language-model head whose projection multiplies its stored matrix; the head's ``finish`` does the rest."""

    def __init__(self, head: nn.Module, matrix: StoredLinear):
        super().__init__()
        self.head, self.matrix = head, matrix

    def forward(self, x: Tensor, pad_mask: Tensor | None = None) -> Tensor:
        finish = cast(Callable[[Tensor], Tensor], self.head.finish)
        return finish(self.matrix(x))  # (B, T, V)


def store_weights(model: GPT, storage: Storage) -> GPT:
    """Store ``model``'s linear weights, embeddings and LM head as ``storage``, in place (``fp32``: the values
    unchanged, each matrix in the layout decoding reads fastest; an untied lookup table stays as it is)."""
    if storage not in STORAGES:
        raise GptzooError(f"weight storage '{storage}': choose one of {', '.join(STORAGES)}")
    kernel = {"int8": "_weight_int8pack_mm", "int4": "_weight_int4pack_mm_for_cpu"}.get(storage)
    if kernel is not None and not hasattr(torch.ops.aten, kernel):
        raise GptzooError(
            f"{storage} weight storage: this torch build has no {storage} weight-only kernel; use bf16 or fp32"
        )
    if storage == "int4" and any(p.device.type != "cpu" for p in model.parameters()):
        raise GptzooError(
            "int4 weight storage multiplies with torch's CPU kernel: decode on the CPU, or use bf16 or int8"
        )
    model.requires_grad_(False)
    stored: dict[int, StoredLinear] = {}  # one per Parameter: a tied head and its embedding share it
    looked_up = {id(m.weight) for m in model.modules() if type(m) is nn.Embedding and m.max_norm is None}

    def matrix(weight: Tensor, bias: Tensor | None, multiplied: bool = True) -> StoredLinear:
        if id(weight) not in stored:
            stored[id(weight)] = StoredLinear(weight, bias, storage, multiplied, looked_up=id(weight) in looked_up)
        return stored[id(weight)]

    head = model.head
    if hasattr(head, "finish") and isinstance(getattr(head, "weight", None), nn.Parameter):
        model.head = StoredHead(head, matrix(head.weight, None))
        del head.weight  # the stored matrix replaces it
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Linear:
                setattr(module, name, matrix(child.weight, child.bias))
            elif (
                type(child) is nn.Embedding
                and child.max_norm is None
                and (storage != "fp32" or id(child.weight) in stored)
            ):
                setattr(module, name, StoredEmbedding(matrix(child.weight, None, multiplied=False)))
    return model
