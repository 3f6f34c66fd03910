"""References for layers that quantize their activations to int16 (Int8Linear / Int4Linear), written
in torch independently of the numba kernels, and the tolerance of whole models built from them."""

from __future__ import annotations

import torch

BLOCK = 32


def act_quantized(x: torch.Tensor) -> torch.Tensor:
    """What the layers multiply: x rounded to int16 per block of 32 (scale absmax / 32767)."""
    blocks = x.float().reshape(*x.shape[:-1], -1, BLOCK)
    top = blocks.abs().amax(-1, keepdim=True)
    inv = torch.where(top > 0, 32767.0 / top, torch.zeros_like(top))
    return (torch.round(blocks * inv) * (top / 32767.0)).reshape(x.shape)


def act_half_step(x: torch.Tensor) -> torch.Tensor:
    """Half a quantization step of each activation: the most rounding moves it (absmax / 65534)."""
    top = x.float().reshape(*x.shape[:-1], -1, BLOCK).abs().amax(-1, keepdim=True)
    return (top / 65534.0).expand(*x.shape[:-1], x.shape[-1] // BLOCK, BLOCK).reshape(x.shape)


def assert_logits_agree_to_quantization_noise(
    got: torch.Tensor, want: torch.Tensor, rel: float = 1e-3
) -> None:
    """Two runs of one quantized model whose float arithmetic differs (summation order, another kernel):
    an activation near a rounding edge can land one int16 step apart, so logits agree to that noise
    (measured 1.0-1.2e-4 of the logits' range on SmolLM2 and NeMo-shaped models, where the float
    kernels agreed to 7e-7; a wrong layer gives ~1), and each greedy pick of `got` is within `rel` of
    the range of `want`'s best (near-ties may swap)."""
    scale = want.abs().max().item()
    torch.testing.assert_close(got, want, rtol=0, atol=rel * scale)
    picked = want.gather(-1, got.argmax(-1, keepdim=True)).squeeze(-1)
    assert (picked >= want.max(-1).values - rel * scale).all()
