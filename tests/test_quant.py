"""Quantized linears: exact vs their dequantized weights times the int16-quantized activations, within
the stated error of fp32 (GGUF blocks: test_gguf_direct.py), and a real model (SmolLM2) still answering
factual prompts after int8 / int4."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mistral_nemo.engine.generate import generate
from mistral_nemo.engine.sampling_params import SamplingParams
from mistral_nemo.model.loading import load
from mistral_nemo.model.quant import Int4Linear, Int8Linear, quantize_model, weight_bytes
from mistral_nemo.model.quant import linear as linear_module
from tests.activation_reference import act_half_step, act_quantized
from tests.gguf_fixture import smollm2_gguf_path

IN, OUT = 256, 96


def _linear(seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(IN, OUT, bias=False)


def _close(y: torch.Tensor, ref: torch.Tensor, rel: float = 1e-4) -> None:
    # Relative to the output's scale: float sums in another order differ by a few ulps of the largest term.
    torch.testing.assert_close(y, ref, rtol=rel, atol=rel * ref.abs().max().item())


QUANTIZERS = {
    "int8": lambda lin: Int8Linear.from_float(lin),
    "int8-g32": lambda lin: Int8Linear.from_float(lin, group_size=32),
    "int4-g32": lambda lin: Int4Linear.from_float(lin, group_size=32),
    "int4-g64": lambda lin: Int4Linear.from_float(lin, group_size=64),
    "int4-g128": lambda lin: Int4Linear.from_float(lin, group_size=128),
}


@pytest.mark.parametrize("kind", sorted(QUANTIZERS))
@pytest.mark.parametrize("tokens", [1, 4, 64])  # GEMV, small-batch kernel, dequantize + GEMM
def test_layer_equals_its_dequantized_weight(kind: str, tokens: int) -> None:
    layer = QUANTIZERS[kind](_linear())
    x = torch.randn(tokens, IN)
    _close(layer(x), act_quantized(x) @ layer.dequantize().T)


def test_a_token_gets_the_same_answer_whatever_its_batch() -> None:
    layer = QUANTIZERS["int8-g32"](_linear())
    x = torch.randn(40, IN)
    alone = torch.cat([layer(x[i : i + 1]) for i in range(8)])
    assert torch.equal(layer(x[:8]), alone)  # small-batch kernel: bit for bit
    _close(layer(x)[:8], alone)  # prefill (dequantize + GEMM): the same sum, to float rounding


@pytest.mark.parametrize("kind", sorted(QUANTIZERS))
def test_every_small_batch_gives_each_token_its_single_token_bits(kind: str) -> None:
    # 40 outputs: two groups of 16 rows (the row-group kernel) and 8 rows left over (per-block sums and
    # row_chain); 2-20 tokens: one tile, a full tile of 8, tiles of 8 plus a remainder.
    torch.manual_seed(2)
    layer = QUANTIZERS[kind](nn.Linear(IN, 40, bias=False))
    x = torch.randn(20, IN)
    alone = torch.cat([layer(x[i : i + 1]) for i in range(20)])
    for tokens in (2, 5, 8, 9, 16, 20):
        assert torch.equal(layer(x[:tokens]), alone[:tokens]), tokens


@pytest.mark.parametrize("kind", sorted(QUANTIZERS))
def test_row_groups_and_left_over_rows_compute_the_same_chain(kind: str) -> None:
    # Row 16 is left over from the group of rows 0-15 and holds row 0's weights: the two paths agree bitwise.
    torch.manual_seed(3)
    weight = torch.randn(17, IN)
    weight[16] = weight[0]
    layer = QUANTIZERS[kind](weight)
    y = layer(torch.randn(5, IN))
    assert torch.equal(y[:, 16], y[:, 0])


@pytest.mark.parametrize("kind", ["int8", "int4-g64"])
def test_prefill_in_many_row_blocks(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(linear_module, "_BLOCK_ELEMS", 20 * IN)  # 20-row blocks: 4 full, 1 partial
    layer = QUANTIZERS[kind](_linear())
    x = torch.randn(40, IN)
    _close(layer(x), act_quantized(x) @ layer.dequantize().T)


@pytest.mark.parametrize("kind", sorted(QUANTIZERS))
def test_quantization_error_within_stated_bound(kind: str) -> None:
    # Stated bound: every weight is within half a step (scale / 2) of the original and every activation
    # within half a step (absmax(block) / 65534) of its own, so each output is within
    # sum_k |x_k| * scale_k / 2 + |w_q,k| * step_k / 2 of the fp32 linear's.
    lin = _linear(1)
    layer = QUANTIZERS[kind](lin)
    half_step = (layer.scale / 2).repeat_interleave(layer.group_size, dim=1)
    err = (layer.dequantize() - lin.weight).abs()
    assert (err <= half_step * (1 + 1e-5) + 1e-7).all()
    x = torch.randn(8, IN)
    bound = x.abs() @ half_step.T + act_half_step(x) @ layer.dequantize().abs().T
    with torch.no_grad():
        assert ((layer(x) - lin(x)).abs() <= bound * 1.001 + 1e-5).all()


@pytest.mark.parametrize("kind", ["int8", "int4-g64"])
def test_bf16_activations_come_back_in_bf16(kind: str) -> None:
    layer = QUANTIZERS[kind](_linear())
    x = torch.randn(3, 2, IN, dtype=torch.bfloat16)
    y = layer(x)
    assert y.dtype == torch.bfloat16 and y.shape == (3, 2, OUT)
    _close(y.float(), (act_quantized(x) @ layer.dequantize().T).bfloat16().float(), rel=2e-2)


@pytest.mark.parametrize("kind", ["int8-g32", "int4-g32"])
def test_permute_rows_equals_permuting_the_weight(kind: str) -> None:
    layer = QUANTIZERS[kind](_linear())
    perm = torch.randperm(OUT)
    before = layer.dequantize()
    assert torch.equal(layer.permute_rows(perm).dequantize(), before[perm])


@pytest.fixture(scope="module")
def gguf_path():
    return smollm2_gguf_path()


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantized_smollm2_still_answers(gguf_path, mode: str) -> None:
    loaded = load(gguf_path, dtype=torch.float32, device="cpu", quantization="none")
    before = weight_bytes(loaded.model)
    # The file is already Q4_1 in blocks of 32: int4 with group 32 lands on (nearly) the same grid, while
    # requantizing 135M parameters to a coarser grid changes greedy arithmetic answers.
    # The output projection (tied to the Q8_0 embedding) is int8 in both modes: in int4 it changed the
    # arithmetic answer of this 135M model (as llama.cpp's Q4 files, the output keeps more bits).
    model = quantize_model(loaded.model, mode, group_size=32, output_mode="int8")
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    assert isinstance(model.tok_embeddings, nn.Embedding)  # the lookup table stays float
    after = weight_bytes(model)
    assert after < before * (0.35 if mode == "int8" else 0.3)
    for question, answer in [("What is the capital of France?", "Paris"), ("What is 2+2?", "4")]:
        ids = loaded.tokenizer.encode_chat([{"role": "user", "content": question}])
        result = generate(model, loaded.tokenizer, ids, SamplingParams(max_tokens=40, temperature=0))
        assert answer in result.text, (mode, question, result.text)
