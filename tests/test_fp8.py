"""Fp8Linear: forward equals its dequantized weight, from_float within its stated error, the e4m3fn
encoding agrees with torch's, the W8A8 (_scaled_mm) path has Mistral's activation semantics, and a
Mistral FP8 folder loads into Fp8Linears with the logits of the dequantized load."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mistral_nemo.model.load_mistral import iter_mistral_tensors, mistral_weight_files, read_mistral_args
from mistral_nemo.model.quant import linear as linear_module
from mistral_nemo.model.quant.fp8 import E4M3_MAX, FP8, Fp8Linear
from mistral_nemo.model.weights import build_model
from tests.fp8_checkpoint import LINEARS, write_mistral_fp8_folder
from tests.nemo_checkpoints import random_reference_model

IN, OUT = 256, 96
ALL_CODES = torch.arange(256, dtype=torch.uint8).view(FP8)
NAN_CODES = (0x7F, 0xFF)


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)  # the activations below: every assertion holds for any input, but be repeatable


def _weight(seed: int = 0, rows: int = OUT) -> torch.Tensor:
    # Magnitudes spread over 4 decades per row, so small weights land in e4m3's subnormals too.
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, IN, generator=g) * 10 ** (-4 * torch.rand(rows, IN, generator=g))


def _close(y: torch.Tensor, ref: torch.Tensor, rel: float = 1e-4) -> None:
    # fp32 sums in another order: a few ulps of the largest term.
    torch.testing.assert_close(y, ref, rtol=rel, atol=rel * ref.abs().max().item())


def _error_bound(layer: Fp8Linear, w: torch.Tensor) -> torch.Tensor:
    """from_float's stated bound per element: max(|w| / 16, scale / 1024)."""
    scale = layer.weight_scale[:, None] if layer.weight_scale.dim() else layer.weight_scale
    return torch.maximum(w.abs() / 16, (scale / 1024).expand_as(w))


@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tokens", [1, 4, 5, 64])  # GEMV, 4-token kernel, its 1-token tail, row blocks
def test_forward_equals_dequantized(per_channel: bool, dtype: torch.dtype, tokens: int) -> None:
    layer = Fp8Linear.from_float(_weight(), per_channel=per_channel)
    x = torch.randn(tokens, IN).to(dtype)
    y = layer(x)
    assert y.dtype == dtype and y.shape == (tokens, OUT)
    ref = x.float() @ layer.dequantize().T
    if dtype == torch.float32:
        _close(y, ref)
    else:  # computed in fp32, rounded once to bf16: one bf16 rounding (2^-8 relative) apart at most
        _close(y.float(), ref, rel=2**-7)


def test_leading_dims_and_many_row_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(linear_module, "_BLOCK_ELEMS", 20 * IN)  # 20-row blocks: 4 full, 1 partial
    layer = Fp8Linear.from_float(_weight(1))
    x = torch.randn(5, 8, IN)
    y = layer(x)
    assert y.shape == (5, 8, OUT)
    _close(y, x @ layer.dequantize().T)


@pytest.mark.parametrize("per_channel", [True, False])
def test_dequantize_is_fp8_times_scale_exactly(per_channel: bool) -> None:
    layer = Fp8Linear.from_float(_weight(2), per_channel=per_channel)
    scale = layer.weight_scale[:, None] if per_channel else layer.weight_scale
    assert layer.weight.dtype == FP8 and layer.weight_scale.dtype == torch.float32
    assert layer.weight_scale.shape == ((OUT,) if per_channel else ())
    assert torch.equal(layer.dequantize(), layer.weight.float() * scale)


@pytest.mark.parametrize("per_channel", [True, False])
def test_from_float_error_within_stated_bound(per_channel: bool) -> None:
    w = _weight(3)
    layer = Fp8Linear.from_float(w, per_channel=per_channel)
    bound = _error_bound(layer, w)
    err = (layer.dequantize() - w).abs()
    assert (err <= bound * (1 + 1e-5)).all()
    assert (err / bound).max() > 0.9  # the bound is tight: a coarser encoding would break it
    x = torch.randn(8, IN)
    assert ((layer(x) - x @ w.T).abs() <= x.abs() @ bound.T * 1.001 + 1e-6).all()


def test_from_float_takes_a_linear() -> None:
    lin = nn.Linear(IN, OUT, bias=False)
    assert torch.equal(
        Fp8Linear.from_float(lin).weight.view(torch.uint8),
        Fp8Linear.from_float(lin.weight).weight.view(torch.uint8),
    )
    with pytest.raises(ValueError, match="bias"):
        Fp8Linear.from_float(nn.Linear(IN, OUT))


def test_per_channel_keeps_small_rows_that_per_tensor_loses() -> None:
    # Rows from 1e-6 to 1: under one scale the smallest fall below e4m3's subnormals (2^-9 scale).
    w = torch.randn(OUT, IN, generator=torch.Generator().manual_seed(9)) * torch.logspace(-6, 0, OUT)[:, None]

    def worst_row_error(per_channel: bool) -> float:
        err = (Fp8Linear.from_float(w, per_channel).dequantize() - w).norm(dim=1) / w.norm(dim=1)
        return err.max().item()

    assert worst_row_error(True) < 0.05 < 0.5 < worst_row_error(False)


def test_decoding_matches_torch_for_every_code() -> None:
    layer = Fp8Linear(ALL_CODES.reshape(1, 256), torch.tensor(1.0))
    ours, torchs = layer.dequantize()[0], ALL_CODES.float()
    finite = torch.ones(256, dtype=torch.bool)
    finite[list(NAN_CODES)] = False
    assert torch.equal(ours[finite], torchs[finite])
    assert torch.equal(torch.signbit(ours[finite]), torch.signbit(torchs[finite]))  # -0.0 stays -0.0
    assert ours[0x7F].item() == 480.0 and ours[0xFF].item() == -480.0  # documented: NaN codes read as 480
    # Round trip: torch's encoder gives back every finite code from our decoded value.
    back = ours[finite].to(FP8).view(torch.uint8)
    assert torch.equal(back, ALL_CODES.view(torch.uint8)[finite])


def test_from_float_writes_torchs_encoding_and_no_nan_codes() -> None:
    w = _weight(4)
    w[0, 0] = 5.0  # a row whose absmax lands exactly on 448
    layer = Fp8Linear.from_float(w)
    codes = layer.weight.view(torch.uint8)
    expected = (w / layer.weight_scale[:, None]).clamp(-E4M3_MAX, E4M3_MAX).to(FP8).view(torch.uint8)
    assert torch.equal(codes, expected)
    assert not torch.isin(codes, torch.tensor(NAN_CODES, dtype=torch.uint8)).any()
    assert layer.weight[0, 0].float().item() == E4M3_MAX


def test_permute_rows_and_module_to_dtype() -> None:
    perm = torch.randperm(OUT)
    for per_channel in (True, False):
        layer = Fp8Linear.from_float(_weight(5), per_channel=per_channel)
        before = layer.dequantize()
        assert layer.permute_rows(perm) is layer
        assert torch.equal(layer.dequantize(), before[perm])
    # A model-wide .to(bfloat16) must not cast the fp8 codes or the scales (fp8 counts as floating).
    layer = Fp8Linear(layer.weight, layer.weight_scale, act_scale=torch.tensor(0.5))
    before = layer.dequantize()
    layer.to(torch.bfloat16).half()
    assert layer.weight.dtype == FP8 and layer.weight_scale.dtype == torch.float32
    assert layer.act_scale.dtype == torch.float32 and torch.equal(layer.dequantize(), before)


def test_constructor_shapes() -> None:
    codes = torch.zeros(OUT, IN, dtype=FP8)
    assert Fp8Linear(codes, torch.tensor([2.0])).weight_scale.shape == ()
    assert Fp8Linear(codes, torch.ones(OUT, 1)).weight_scale.shape == (OUT,)
    assert Fp8Linear(codes, torch.tensor(1.0)).act_scale is None
    assert "act_scale" not in Fp8Linear(codes, torch.tensor(1.0)).state_dict()
    assert (
        Fp8Linear(codes, torch.tensor(1.0), torch.tensor([0.1], dtype=torch.bfloat16)).act_scale.shape == ()
    )
    with pytest.raises(ValueError, match="float8_e4m3fn"):
        Fp8Linear(torch.zeros(OUT, IN), torch.tensor(1.0))
    with pytest.raises(ValueError, match="weight_scale"):
        Fp8Linear(codes, torch.ones(3))


# --- W8A8: what CUDA runs. torch._scaled_mm also runs on CPU, so the semantics are checked here. ---


def _quantized_activations(x: torch.Tensor, a_scale: float) -> torch.Tensor:
    """Mistral's static activation quantization, written out: clamp(x / s) to e4m3, times s."""
    return (x.float() / a_scale).clamp(-E4M3_MAX, E4M3_MAX).to(FP8).float() * a_scale


@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])  # bf16 + per-channel: row-wise scales
@pytest.mark.parametrize("tokens", [1, 5, 16, 33])
def test_w8a8_static_act_scale_semantics(per_channel: bool, dtype: torch.dtype, tokens: int) -> None:
    w = _weight(6)
    base = Fp8Linear.from_float(w, per_channel=per_channel)
    x = (torch.randn(tokens, IN) * 3).to(dtype)
    a_scale = x.float().abs().max().item() / E4M3_MAX / 2  # small on purpose: the top values clamp
    layer = Fp8Linear(base.weight, base.weight_scale, torch.tensor(a_scale))
    y = layer.forward_w8a8(x)
    assert y.dtype == dtype and y.shape == (tokens, OUT)
    ref = _quantized_activations(x, a_scale) @ layer.dequantize().T
    _close(y.float(), ref, rel=1e-4 if dtype == torch.float32 else 2**-7)
    # Clamping happened, so it is not the unquantized product.
    assert (y.float() - x.float() @ layer.dequantize().T).abs().max() > 1e-2


@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_w8a8_dynamic_within_activation_rounding_bound(per_channel: bool, dtype: torch.dtype) -> None:
    # Dynamic scale s = amax / 448 never clamps; each activation moves by max(|x| / 16, s / 1024), so
    # |y - x @ W.T| <= that @ |W|.T, plus one bf16 output rounding (2^-8 relative) for bf16.
    layer = Fp8Linear.from_float(_weight(7), per_channel=per_channel)
    x = torch.randn(7, IN).to(dtype)
    y = layer.forward_w8a8(x).float()
    w = layer.dequantize()
    ref = x.float() @ w.T
    s = x.float().abs().max() / E4M3_MAX
    bound = torch.maximum(x.float().abs() / 16, s / 1024) @ w.abs().T
    slack = ref.abs() * 2**-8 if dtype == torch.bfloat16 else 0.0
    assert ((y - ref).abs() <= bound * 1.01 + slack + 1e-5).all()
    assert (y - ref).abs().max() > 1e-4  # activations really were quantized (unlike the CPU forward)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("static", [True, False])
def test_cuda_scaled_mm_path(per_channel: bool, dtype: torch.dtype, static: bool) -> None:
    cpu = Fp8Linear.from_float(_weight(8, rows=128), per_channel=per_channel)
    x = torch.randn(2, 3, IN)
    a_scale = x.abs().max().item() / E4M3_MAX * 1.5 if static else None  # no clamping: the bound holds
    layer = Fp8Linear(cpu.weight, cpu.weight_scale, None if a_scale is None else torch.tensor(a_scale)).cuda()
    xc = x.to("cuda", dtype)
    y = layer(xc)
    assert y.device.type == "cuda" and y.dtype == dtype and y.shape == (2, 3, 128)
    flat = xc.reshape(-1, IN)
    major, minor = torch.cuda.get_device_capability()
    if (major, minor) >= (8, 9):  # fp8 tensor cores: forward must take the _scaled_mm path
        torch.testing.assert_close(y.reshape(-1, 128), layer.forward_w8a8(flat), rtol=0, atol=0)
    w = cpu.dequantize()
    xs = x.reshape(-1, IN).to(dtype).float()
    ref = xs @ w.T
    s = a_scale if a_scale is not None else xs.abs().max().item() / E4M3_MAX
    bound = torch.maximum(xs.abs() / 16, torch.tensor(s / 1024)) @ w.abs().T
    slack = ref.abs() * 2**-8 if dtype == torch.bfloat16 else 0.0
    assert ((y.reshape(-1, 128).float().cpu() - ref).abs() <= bound * 1.01 + slack + 1e-4).all()


# --- A Mistral FP8 folder ---


@pytest.fixture(scope="module")
def reference() -> nn.Module:
    return random_reference_model(seed=3)


def _load(folder, keep_fp8: bool) -> nn.Module:
    args = read_mistral_args(folder)
    tensors = iter_mistral_tensors(mistral_weight_files(folder), args, keep_fp8=keep_fp8)
    return build_model(args, tensors, dtype=torch.float32, device="cpu")


@pytest.mark.parametrize("per_channel", [False, True], ids=["mistral-per-tensor", "per-channel-dynamic"])
def test_mistral_fp8_folder_keeps_fp8_with_dequantized_logits(reference, tmp_path, per_channel: bool) -> None:
    folder = write_mistral_fp8_folder(reference, tmp_path / "fp8", per_channel=per_channel)
    compact, dense = _load(folder, keep_fp8=True), _load(folder, keep_fp8=False)
    for i, (block, dense_block) in enumerate(zip(compact.layers, dense.layers, strict=True)):
        for name in LINEARS:
            parent = "attention" if name in ("wq", "wk", "wv", "wo") else "feed_forward"
            layer = getattr(getattr(block, parent), name)
            assert isinstance(layer, Fp8Linear), f"layers.{i}.{parent}.{name}"
            assert layer.weight.dtype == FP8  # no float copy kept
            assert (layer.act_scale is None) == per_channel
            # Same bytes x same scale, same RoPE row order (q/k rows and, per channel, their scales).
            assert torch.equal(layer.dequantize(), getattr(getattr(dense_block, parent), name).weight)
    assert isinstance(compact.output, nn.Linear)  # Mistral leaves the output projection unquantized
    ids = torch.randint(1000, 4000, (24,), generator=torch.Generator().manual_seed(0))
    ours, expected = compact.logits(ids), dense.logits(ids)
    # Same weights, the kernel's fp32 sums in another order: within 1e-4 of the largest logit.
    _close(ours, expected)
    # And still the float model it came from: e4m3 moves each weight by <= 6.25% (~3.6% rms), which this
    # random 2-layer model amplifies to ~12% of the logits' norm (measured); a wrong scale or RoPE row
    # order gives ~100%.
    with torch.no_grad():
        hf_logits = reference(ids[None]).logits[0]
    assert (ours - hf_logits).norm() < 0.2 * hf_logits.norm()
