"""Quantized linears (drop-in for bias-free nn.Linear): int8 and group-wise int4 weights, with the
activations quantized to int16 in blocks of 32 (kernels.py says why and how).

Forward strategy, chosen by measurement on 2-core CPUs (bench/quant_linear.py):
- up to small_batch_max tokens (decode, small batches): integer block-dot kernels that read each
  weight row once for all tokens and never make a float copy of the matrix;
- more tokens (prefill): compute-bound, so blocks of rows are dequantized to fp32 and multiplied with
  the same quantized activations by torch's GEMM; blocks bound the temporary to 8 MiB.
Both compute the same sum, so they agree to float rounding. Activations of any float dtype are
computed in fp32 and returned in their dtype. in_features and group sizes are multiples of 32.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from gguf import GGMLQuantizationType as QT
from torch import nn

from mistral_nemo.model.quant import kernels

# fp32 elements dequantized per prefill step (8 MiB). Measured 5120x14336 on 2 cores: 2M- and 8M-element
# blocks run alike (int8 T=64: 100 / 111 ms; T=256: 296 / 297 ms; fp32 nn.Linear 148 / 346 ms).
_BLOCK_ELEMS = 1 << 21


def linear_weight(linear_or_weight: nn.Linear | torch.Tensor) -> torch.Tensor:
    if isinstance(linear_or_weight, nn.Linear):
        if linear_or_weight.bias is not None:
            raise ValueError("quantized linears here have no bias (NeMo's linears have none)")
        return linear_or_weight.weight.detach()
    return linear_or_weight.detach()


def _gguf_blocks(raw: object, qtype: int | str, shape: tuple[int, int], expect: QT) -> np.ndarray:
    """Raw GGUF bytes as a [n_blocks, bytes_per_block] uint8 array (a view when possible)."""
    qt = QT[qtype.strip().upper()] if isinstance(qtype, str) else QT(int(qtype))
    if qt != expect:
        raise ValueError(f"expected {expect.name} blocks, got {qt.name}")
    if isinstance(raw, torch.Tensor):
        arr = raw.contiguous().view(torch.uint8).numpy()
    elif isinstance(raw, bytes | bytearray | memoryview):
        arr = np.frombuffer(raw, dtype=np.uint8)
    else:
        arr = np.asarray(raw).view(np.uint8)
    rows, cols = (int(s) for s in shape)
    if cols % 32:
        raise ValueError(f"{qt.name}: row length {cols} is not a multiple of 32")
    per_block = {QT.Q8_0: 34, QT.Q4_0: 18, QT.Q4_1: 20}[qt]
    n_blocks = rows * cols // 32
    if arr.size != n_blocks * per_block:
        raise ValueError(f"{qt.name}: shape {shape} needs {n_blocks * per_block} bytes, got {arr.size}")
    return arr.reshape(n_blocks, per_block)


def f16_field(blocks: np.ndarray, off: int) -> np.ndarray:
    """The fp16 field at byte `off` of every block, as a strided float16 view [n] (no copy).

    Through a uint16 view of the blocks: one strided pass, about 3x faster than copying byte pairs out
    (5120x14336 Q8_0: 7.9 vs 33 ms, measured); numpy allows the view at any byte alignment.
    """
    return blocks.view(np.uint16)[:, off // 2].view(np.float16)


def put_rows(out: np.ndarray, rows: slice | np.ndarray, src: np.ndarray) -> None:
    """out[rows] = src (casting): torch's strided copy on a slice of rows, numpy's for an index array.

    Measured on 16 MB of Q8_0 blocks (2 cores): int8 out of 34-byte blocks, torch 1.2 ms vs numpy 3.7;
    into permuted rows, numpy 4.9 ms vs torch 9.3 (index_copy_ 14).
    """
    if isinstance(rows, np.ndarray):
        out[rows] = src
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a read-only source (bytes, a map): only read here
        torch.from_numpy(out[rows]).copy_(torch.from_numpy(src))


def put_q8_0_rows(
    blocks: np.ndarray, rows: slice | np.ndarray, qweight: np.ndarray, scale: np.ndarray
) -> None:
    """Q8_0 blocks of whole rows (fp16 d + 32 int8 each) -> qweight[rows] (int8) and scale[rows] (fp32).

    `rows` are the destination rows of the blocks' rows in order (a slice, or indices to permute them).
    """
    per_row = scale.shape[1]
    put_rows(qweight.reshape(-1, per_row, 32), rows, blocks[:, 2:].view(np.int8).reshape(-1, per_row, 32))
    put_rows(scale, rows, f16_field(blocks, 0).reshape(-1, per_row))


def put_q4_rows(
    blocks: np.ndarray,
    rows: slice | np.ndarray,
    packed: np.ndarray,
    scale: np.ndarray,
    zero: np.ndarray,
    q4_1: bool,
) -> None:
    """Q4_0 (d, nibbles: w = d(q - 8)) or Q4_1 (d, m, nibbles: w = dq + m) blocks of whole rows -> rows of
    Int4Linear's packed / scale / zero (G = 32; the nibble order is ours already). Exact."""
    per_row = scale.shape[1]
    put_rows(packed.reshape(-1, per_row, 16), rows, blocks[:, -16:].reshape(-1, per_row, 16))
    d = f16_field(blocks, 0).astype(np.float32).reshape(-1, per_row)
    put_rows(scale, rows, d)
    # Q4_0: exact, fp16 d times a power of two.
    put_rows(zero, rows, f16_field(blocks, 2).reshape(-1, per_row) if q4_1 else d * np.float32(-8.0))


def _check_blocks(in_features: int, group_size: int, allow_16: bool = False) -> None:
    if in_features % kernels.BLOCK or (group_size % kernels.BLOCK and not (allow_16 and group_size == 16)):
        raise ValueError(
            f"in_features ({in_features}) and the group size ({group_size}) must be multiples of "
            f"{kernels.BLOCK}: activations are quantized in blocks of {kernels.BLOCK}"
        )


class QuantLinear(nn.Module):
    # Above this many tokens dequantize + torch GEMM wins: measured crossovers 16-32 (SmolLM2 576x1536:
    # T=16 kernel 1.1-1.5x faster, T=32 0.7-0.9x; NeMo 5120x14336: T=32 1.2-1.3x, T=64 0.65x).
    small_batch_max = 24
    in_features: int
    out_features: int
    group_size: int

    def _small(self, x: np.ndarray, out: np.ndarray) -> None:
        """out = x @ w.T for a few tokens (x float32 [T, in])."""
        raise NotImplementedError

    def _prefill_input(self, x: torch.Tensor) -> torch.Tensor:
        """The activations the prefill GEMM multiplies: those the small kernel sees."""
        return x

    def _dequant_rows(self, start: int, out: np.ndarray) -> None:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features).to(torch.float32).contiguous()
        tokens = x2.shape[0]
        out = torch.empty(tokens, self.out_features, dtype=torch.float32)
        if tokens == 0:
            pass
        elif tokens <= self.small_batch_max:
            self._small(x2.numpy(), out.numpy())
        else:
            xf = self._prefill_input(x2)
            rows = max(16, _BLOCK_ELEMS // self.in_features)
            buf = np.empty((rows, self.in_features), dtype=np.float32)
            for start in range(0, self.out_features, rows):
                block = buf[: min(rows, self.out_features - start)]
                self._dequant_rows(start, block)
                out[:, start : start + block.shape[0]] = xf @ torch.from_numpy(block).T
        return out.to(x.dtype).reshape(*lead, self.out_features)

    @torch.no_grad()
    def dequantize(self) -> torch.Tensor:
        """The float32 weight [out, in] these bytes stand for: forward(x) equals
        _prefill_input(x) @ dequantize().T to float rounding."""
        out = np.empty((self.out_features, self.in_features), dtype=np.float32)
        self._dequant_rows(0, out)
        return torch.from_numpy(out)

    @torch.no_grad()
    def permute_rows(self, perm: torch.Tensor) -> QuantLinear:
        """Reorder output rows (e.g. GGUF q/k interleaved -> rotate-half RoPE); returns self."""
        for name, buf in list(self.named_buffers(recurse=False)):
            setattr(self, name, buf[perm].contiguous())
        return self

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, group={self.group_size}"


class _IntegerLinear(QuantLinear):
    """Int8 / int4 weights: the small kernels round activations to int16 per block of 32, so prefill
    multiplies the same rounded values."""

    def _prefill_input(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(kernels.fake_quantize(x.numpy()))


class Int8Linear(_IntegerLinear):
    """w = scale[n, k // G] * q[n, k], int8 q; G = in_features (per channel) or a block size (Q8_0: 32)."""

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        self.out_features, self.in_features = qweight.shape
        if qweight.dtype != torch.int8 or self.in_features % scale.shape[1]:
            raise ValueError("qweight must be int8 [out, in] and scale [out, in // G] float32")
        self.group_size = self.in_features // scale.shape[1]
        _check_blocks(self.in_features, self.group_size, allow_16=True)  # 16: Q6_K
        self.register_buffer("qweight", qweight.contiguous())
        self.register_buffer("scale", scale.to(torch.float32).contiguous())

    @classmethod
    @torch.no_grad()
    def from_float(
        cls, linear_or_weight: nn.Linear | torch.Tensor, group_size: int | None = None
    ) -> Int8Linear:
        """Symmetric absmax quantization; per output channel unless group_size is given.

        Error bound: |w - w_q| <= scale / 2 = absmax(group) / 254 per element.
        """
        w = linear_weight(linear_or_weight)
        rows, cols = w.shape
        g = group_size or cols
        q = torch.empty(rows, cols, dtype=torch.int8)
        scale = torch.empty(rows, cols // g, dtype=torch.float32)
        step = max(1, _BLOCK_ELEMS // cols)
        for r in range(0, rows, step):  # row blocks: never a full fp32 copy of a bf16 matrix
            blk = w[r : r + step].to(torch.float32).reshape(-1, cols // g, g)
            s = blk.abs().amax(-1) / 127.0
            s = torch.where(s > 0, s, torch.ones_like(s))
            qb = torch.round(blk / s[..., None]).clamp_(-127, 127).to(torch.int8)
            q[r : r + step] = qb.reshape(-1, cols)
            scale[r : r + step] = s
        return cls(q, scale)

    @classmethod
    def from_gguf_blocks(cls, raw: object, qtype: int | str, shape: tuple[int, int]) -> Int8Linear:
        """Q8_0 blocks (fp16 d + 32 int8) -> exact block-scaled int8 (G = 32), no fp32 copy."""
        blocks = _gguf_blocks(raw, qtype, shape, QT.Q8_0)
        rows, cols = shape
        layer = cls(torch.empty(rows, cols, dtype=torch.int8), torch.empty(rows, cols // 32))
        put_q8_0_rows(blocks, slice(None), layer.qweight.numpy(), layer.scale.numpy())
        return layer

    def _small(self, x: np.ndarray, out: np.ndarray) -> None:
        xq, xs, _ = kernels.quantize_activations(x)
        kernels.int8_matmul(xq, xs, self.qweight.numpy(), self.scale.numpy(), out)

    def _dequant_rows(self, start: int, out: np.ndarray) -> None:
        kernels.int8_dequant_rows(self.qweight.numpy(), self.scale.numpy(), start, out)


class Int4Linear(_IntegerLinear):
    """Asymmetric group-wise int4: w = scale * q + zero, q in 0..15, two per byte (layout: kernels.py).

    Asymmetric because it is the Q4_1 form (Q4_0 is the special case zero = -8 * scale), so both
    GGUF types load exactly, and the zero term costs one multiply per group in the kernel.
    """

    def __init__(self, packed: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> None:
        super().__init__()
        self.out_features = packed.shape[0]
        self.in_features = packed.shape[1] * 2
        self.group_size = self.in_features // scale.shape[1]
        if packed.dtype != torch.uint8 or self.in_features % scale.shape[1]:
            raise ValueError("packed must be uint8 [out, in // 2] and scale/zero [out, in // G] float32")
        _check_blocks(self.in_features, self.group_size)
        self.register_buffer("packed", packed.contiguous())
        self.register_buffer("scale", scale.to(torch.float32).contiguous())
        self.register_buffer("zero", zero.to(torch.float32).contiguous())

    @classmethod
    @torch.no_grad()
    def from_float(cls, linear_or_weight: nn.Linear | torch.Tensor, group_size: int = 64) -> Int4Linear:
        """Min/max quantization per group of `group_size` (32, 64 or 128).

        Error bound: |w - w_q| <= scale / 2 = (max - min)(group) / 30 per element.
        """
        w = linear_weight(linear_or_weight)
        rows, cols = w.shape
        if cols % group_size:
            raise ValueError(f"in_features {cols} is not a multiple of the group size {group_size}")
        _check_blocks(cols, group_size)
        ng, per_block = cols // group_size, group_size // kernels.BLOCK
        packed = torch.empty(rows, cols // 2, dtype=torch.uint8)
        scale = torch.empty(rows, ng, dtype=torch.float32)
        zero = torch.empty(rows, ng, dtype=torch.float32)
        step = max(1, _BLOCK_ELEMS // cols)
        for r in range(0, rows, step):
            blk = w[r : r + step].to(torch.float32).reshape(-1, ng, group_size)
            lo, hi = blk.amin(-1), blk.amax(-1)
            s = (hi - lo) / 15.0
            s = torch.where(s > 0, s, torch.ones_like(s))
            q = torch.round((blk - lo[..., None]) / s[..., None]).clamp_(0, 15).to(torch.uint8)
            q = q.reshape(-1, ng * per_block, kernels.BLOCK)  # nibbles pair values j, j + 16 of each block
            packed[r : r + step] = (q[..., :16] | (q[..., 16:] << 4)).reshape(-1, cols // 2)
            scale[r : r + step], zero[r : r + step] = s, lo
        return cls(packed, scale, zero)

    @classmethod
    def from_gguf_blocks(cls, raw: object, qtype: int | str, shape: tuple[int, int]) -> Int4Linear:
        """Q4_0 (d, nibbles: w = d(q - 8)) or Q4_1 (d, m, nibbles: w = dq + m) blocks, G = 32, exact."""
        q4_1 = (QT[qtype.upper()] if isinstance(qtype, str) else QT(int(qtype))) == QT.Q4_1
        blocks = _gguf_blocks(raw, qtype, shape, QT.Q4_1 if q4_1 else QT.Q4_0)
        rows, cols = shape
        groups = cols // 32
        layer = cls(
            torch.empty(rows, cols // 2, dtype=torch.uint8),
            torch.empty(rows, groups),
            torch.empty(rows, groups),
        )
        put_q4_rows(blocks, slice(None), layer.packed.numpy(), layer.scale.numpy(), layer.zero.numpy(), q4_1)
        return layer

    def _small(self, x: np.ndarray, out: np.ndarray) -> None:
        xq, xs, xsum = kernels.quantize_activations(x)
        kernels.int4_matmul(xq, xs, xsum, self.packed.numpy(), self.scale.numpy(), self.zero.numpy(), out)

    def _dequant_rows(self, start: int, out: np.ndarray) -> None:
        kernels.int4_dequant_rows(self.packed.numpy(), self.scale.numpy(), self.zero.numpy(), start, out)
