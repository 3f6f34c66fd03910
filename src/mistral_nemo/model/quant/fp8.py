"""FP8 (float8_e4m3fn) weights: a compact linear, as Mistral ships FP8 checkpoints and as from_float makes.

w[n, k] = fp8[n, k] * weight_scale (per tensor, Mistral's `qscale_weight`) or weight_scale[n] (per channel).

Forward by device:
- CUDA with fp8 tensor cores (sm89+) and dims that are multiples of 16: W8A8 through torch._scaled_mm;
  activations are quantized to fp8 with the static `act_scale` (Mistral's `qscale_act`) when there is
  one, else a dynamic per-tensor scale (see forward_w8a8). Other GPUs / shapes: dequantize + matmul.
- CPU: weight-only (activations stay fp32), as Int8Linear: a fused decode + GEMV numba kernel up to
  32 tokens, dequantized row blocks + torch GEMM above. Measured 5120x14336 on a 2-core AVX2 EPYC,
  best of 10, fp32 activations. Candidates for one token, in one run (prototypes):
    fp8 bits -> fp16 -> fp32 (F16C) GEMV 4.4 ms | 256-entry LUT GEMV 13.8 | LUT-dequantized 8 MiB
    blocks + GEMM 19.3 | torch's fp8->fp32 cast in blocks + GEMM 177 | fp32 nn.Linear 13.4 | int8 3.4.
  The LUT loses: a table lookup is a gather per weight (no fast one on AVX2). As built (same run):
    T=1 fp8 4.7-5.2 | fp32 16.4 | int8 4.7;  T=16 fp8 27.7 | fp32 84 | int8 35;
    T=32 fp8 59 (kernel; blocks 63) | fp32 103 | int8 71;  T=64 fp8 98-99 (blocks) | fp32 143 | int8 96.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch
import torch.nn.functional as F
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic
from torch import nn

from mistral_nemo.model.quant import linear as _linear
from mistral_nemo.model.quant.linear import QuantLinear, linear_weight

FP8 = torch.float8_e4m3fn
E4M3_MAX = 448.0  # torch.finfo(torch.float8_e4m3fn).max
_OPTS = {"parallel": True, "fastmath": True, "cache": True, "nogil": True}


@intrinsic
def _e4m3_over_256(typingctx, code):  # type: ignore[no-untyped-def]
    """The fp32 value of an e4m3fn byte divided by 256, exactly, as vectorisable integer ops + F16C.

    fp16 has the same layout with a 5-bit exponent whose bias is 8 larger: s.eeee.mmm -> s.0eeee.mmm0000000
    is the same number times 2^-8, subnormals included; fp16 -> fp32 is exact. (The NaN codes 0x7F / 0xFF
    read as +-480; from_float never writes them.) Without F16C (pre-2012 x86) LLVM falls back to a libcall.
    """
    if not isinstance(code, types.Integer) or code.bitwidth != 8:
        return None

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        i16 = ir.IntType(16)
        bits = builder.shl(builder.sext(args[0], i16), ir.Constant(i16, 7))  # sign lands in bits 15 and 14
        bits = builder.and_(bits, ir.Constant(i16, 0xBFFF))  # clear bit 14: the exponent's top bit is 0
        return builder.fpext(builder.bitcast(bits, ir.HalfType()), ir.FloatType())

    return types.float32(code), codegen


@njit(**_OPTS)
def _fp8_matmul(x: np.ndarray, q: np.ndarray, scale: np.ndarray, out: np.ndarray) -> None:
    """out[T, N] = x[T, K] @ (scale[n] * decode(q[n, k]) / 256).T; q the e4m3 bytes as uint8 [N, K].

    Four tokens share each decoded weight (decoding, not memory, bounds this kernel: T=4 13 -> 7 ms).
    """
    n_rows, k_dim = q.shape
    n_tok = x.shape[0]
    for n in prange(n_rows):
        s = scale[n]
        t = 0
        while t + 4 <= n_tok:
            a0 = np.float32(0.0)
            a1 = np.float32(0.0)
            a2 = np.float32(0.0)
            a3 = np.float32(0.0)
            for k in range(k_dim):
                w = _e4m3_over_256(q[n, k])
                a0 += w * x[t, k]
                a1 += w * x[t + 1, k]
                a2 += w * x[t + 2, k]
                a3 += w * x[t + 3, k]
            out[t, n] = a0 * s
            out[t + 1, n] = a1 * s
            out[t + 2, n] = a2 * s
            out[t + 3, n] = a3 * s
            t += 4
        while t < n_tok:
            acc = np.float32(0.0)
            for k in range(k_dim):
                acc += _e4m3_over_256(q[n, k]) * x[t, k]
            out[t, n] = acc * s
            t += 1


@njit(**_OPTS)
def _fp8_dequant_rows(q: np.ndarray, scale: np.ndarray, start: int, out: np.ndarray) -> None:
    """out[r, :] = float weights of row start + r; bit-identical to fp8.float() * scale (2^8 is exact)."""
    k_dim = q.shape[1]
    for r in prange(out.shape[0]):
        s = scale[start + r]
        for k in range(k_dim):
            out[r, k] = _e4m3_over_256(q[start + r, k]) * s


@cache
def _has_fp8_mm(device: torch.device) -> bool:
    """_scaled_mm with e4m3fn inputs: NVIDIA sm89+ (ROCm's MI300 wants e4m3fnuz: dequantize there)."""
    if device.type != "cuda" or torch.version.hip is not None or not hasattr(torch, "_scaled_mm"):
        return False
    return torch.cuda.get_device_capability(device) >= (8, 9)


_ROWWISE_FAILED: set[torch.device] = set()  # devices whose torch / GPU refused row-wise scales once


class Fp8Linear(QuantLinear):
    """Drop-in for a bias-free nn.Linear holding float8_e4m3fn weights [out, in].

    Buffers: `weight` (float8_e4m3fn [out, in]); `weight_scale` (float32, shape [] per tensor or [out]
    per channel); `act_scale` (float32 shape [], the static activation scale, or None: always
    registered, so `layer.act_scale is None` means dynamic scaling; a None buffer is not in state_dict).
    """

    small_batch_max = 32  # 5120x14336: T=32 kernel 57 ms vs dequantize + GEMM 63; T=64 blocks win

    def __init__(
        self, weight_fp8: torch.Tensor, weight_scale: torch.Tensor, act_scale: torch.Tensor | None = None
    ) -> None:
        super().__init__()
        if weight_fp8.dtype != FP8 or weight_fp8.dim() != 2:
            got = f"{weight_fp8.dtype} {tuple(weight_fp8.shape)}"
            raise ValueError(f"weight must be float8_e4m3fn [out, in], got {got}")
        self.out_features, self.in_features = weight_fp8.shape
        self.group_size = self.in_features  # one scale spans whole rows (or the whole matrix)
        scale = weight_scale.detach().to(torch.float32)
        if scale.numel() == 1:
            scale = scale.reshape(())
        elif scale.numel() == self.out_features:
            scale = scale.reshape(self.out_features)
        else:
            raise ValueError(f"weight_scale must have 1 or {self.out_features} elements, got {scale.shape}")
        if act_scale is not None:
            if act_scale.numel() != 1:
                raise ValueError(f"act_scale must be one number (static, per tensor), got {act_scale.shape}")
            act_scale = act_scale.detach().to(torch.float32).reshape(())
        self.register_buffer("weight", weight_fp8.contiguous())
        self.register_buffer("weight_scale", scale.contiguous())
        self.register_buffer("act_scale", act_scale)

    @classmethod
    @torch.no_grad()
    def from_float(cls, weight: torch.Tensor | nn.Linear, per_channel: bool = True) -> Fp8Linear:
        """Absmax scaling to the e4m3 range: scale = amax / 448 per output row (or per tensor).

        Error bound (round to nearest, 3 mantissa bits): |w - w_q| <= max(|w| / 16, scale / 1024) per
        element; the second term covers e4m3's subnormals (|w| < 2^-6 scale, step 2^-9 scale).
        """
        w = linear_weight(weight)
        rows, cols = w.shape
        step = max(1, _linear._BLOCK_ELEMS // cols)
        if per_channel:
            scale = torch.empty(rows, dtype=torch.float32)
        else:
            amax = max((w[r : r + step].abs().amax().item() for r in range(0, rows, step)), default=0.0)
            scale = torch.tensor(amax, dtype=torch.float32) / E4M3_MAX
        q = torch.empty(rows, cols, dtype=FP8)
        for r in range(0, rows, step):  # row blocks: never a full fp32 copy of a bf16 matrix
            blk = w[r : r + step].to(torch.float32)
            if per_channel:
                scale[r : r + step] = blk.abs().amax(1) / E4M3_MAX
            s = scale[r : r + step, None] if per_channel else scale
            s = torch.where(s > 0, s, torch.ones_like(s))  # all-zero rows: any scale; keep it finite
            # e4m3fn has no infinity: torch turns values beyond 448 into NaN, so clamp before casting.
            q[r : r + step] = (blk / s).clamp_(-E4M3_MAX, E4M3_MAX).to(FP8)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        return cls(q, scale)

    def _row_scales(self) -> np.ndarray:
        # x256 undoes the kernel's decode, which yields value / 256 (exact: a power of two).
        return (self.weight_scale.expand(self.out_features) * 256.0).contiguous().numpy()

    def _small(self, x: np.ndarray, out: np.ndarray) -> None:
        _fp8_matmul(x, self.weight.view(torch.uint8).numpy(), self._row_scales(), out)

    def _dequant_rows(self, start: int, out: np.ndarray) -> None:
        _fp8_dequant_rows(self.weight.view(torch.uint8).numpy(), self._row_scales(), start, out)

    @torch.no_grad()
    def dequantize(self) -> torch.Tensor:
        """The float32 weight [out, in] (on the weights' device); forward's reference."""
        if self.weight.device.type == "cpu":
            return super().dequantize()
        return self._dequantized(torch.float32)

    def _dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        scale = self.weight_scale[:, None] if self.weight_scale.dim() else self.weight_scale
        return (self.weight.to(torch.float32) * scale).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu":
            return super().forward(x)  # weight-only: numba kernel or dequantized blocks
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        y = self.forward_w8a8(x2) if self._w8a8_fits(x2) else x2 @ self._dequantized(x.dtype).T
        return y.reshape(*lead, self.out_features)

    def _w8a8_fits(self, x2: torch.Tensor) -> bool:
        # _scaled_mm wants K and N multiples of 16 (NeMo's 5120 / 4096 / 1024 / 14336 / 131072 are).
        return (
            _has_fp8_mm(x2.device)
            and self.in_features % 16 == 0
            and self.out_features % 16 == 0
            and x2.dtype in (torch.bfloat16, torch.float16, torch.float32)
            and x2.shape[0] > 0
        )

    @torch.no_grad()
    def forward_w8a8(self, x: torch.Tensor) -> torch.Tensor:
        """x [T, in] -> [T, out] in x's dtype, activations quantized to fp8: what CUDA runs.

        Static act_scale (Mistral's semantics, as vLLM applies `qscale_act`): x_fp8 = clamp(x / act_scale,
        +-448); without one, a dynamic per-tensor scale amax(|x|) / 448. Then y = (x_fp8 act_scale) @
        (w_fp8 weight_scale).T with fp32 accumulation. Runs wherever torch._scaled_mm does (CPU too).
        """
        tokens = x.shape[0]
        if self.act_scale is not None:
            a_scale = self.act_scale
        else:
            a_scale = (x.abs().amax().to(torch.float32) / E4M3_MAX).clamp(min=torch.finfo(torch.float32).tiny)
        xf = x.to(torch.float32)
        pad = -tokens % 16  # old cuBLASLt fp8 kernels wanted M % 16 == 0 too; zero rows cost nothing here
        if pad:
            xf = F.pad(xf, (0, 0, 0, pad))
        x_fp8 = (xf / a_scale).clamp_(-E4M3_MAX, E4M3_MAX).to(FP8).contiguous()  # row-major, as required
        w_t = self.weight.t()  # [in, out] column-major: the layout _scaled_mm needs for its second operand
        if self.weight_scale.dim() == 0:
            y = _scaled_mm(x_fp8, w_t, a_scale, self.weight_scale, x.dtype)
        elif x.dtype == torch.bfloat16 and x.device not in _ROWWISE_FAILED:
            # Row-wise scales fuse the per-channel scale into the GEMM; torch < 2.9 allows them only with
            # bf16 output (and some GPU / torch pairs not at all: then fall through once and for all).
            try:
                a_rows = a_scale.reshape(1, 1).expand(x_fp8.shape[0], 1).contiguous()
                y = _scaled_mm(x_fp8, w_t, a_rows, self.weight_scale.reshape(1, -1), x.dtype)
            except (RuntimeError, ValueError):  # TORCH_CHECK / TORCH_CHECK_VALUE: raised before any launch
                _ROWWISE_FAILED.add(x.device)
                return self.forward_w8a8(x)
        else:  # per-channel otherwise: tensor-wise GEMM to fp32, then the channel scales
            one = torch.ones((), dtype=torch.float32, device=x.device)
            y = (_scaled_mm(x_fp8, w_t, a_scale, one, torch.float32) * self.weight_scale).to(x.dtype)
        return y[:tokens]

    @torch.no_grad()
    def permute_rows(self, perm: torch.Tensor) -> Fp8Linear:
        """Reorder output rows (Mistral's interleaved q/k -> rotate-half RoPE); returns self."""
        self.weight = self.weight[perm].contiguous()
        if self.weight_scale.dim():
            self.weight_scale = self.weight_scale[perm].contiguous()
        return self

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        # nn.Module.to(dtype) / .half() cast every floating buffer, and fp8 counts as floating: keep the
        # fp8 codes and fp32 scales as they are (move them to the new device only).
        def keep_dtype(t: torch.Tensor) -> torch.Tensor:
            moved = fn(t)
            return moved if moved.dtype == t.dtype else t.to(moved.device)

        return super()._apply(keep_dtype, recurse)

    def extra_repr(self) -> str:
        kind = "per-channel" if self.weight_scale.dim() else "per-tensor"
        act = "static" if self.act_scale is not None else "dynamic"
        return f"in_features={self.in_features}, out_features={self.out_features}, {kind}, act={act}"


def _scaled_mm(
    a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor, out_dtype: torch.dtype
) -> torch.Tensor:
    # torch >= 2.4 signature (scales required, one output); keywords work on 2.1-2.3 too, which
    # returned (out, amax).
    y = torch._scaled_mm(a, b, scale_a=scale_a, scale_b=scale_b, out_dtype=out_dtype)
    return y[0] if isinstance(y, tuple) else y
