"""The fused decode step (all layers in one numba call) equals the layer-by-layer model it replaces:
the first layer's K/V to float rounding, the logits and cache to quantization noise, the same greedy
tokens in the batched engine."""

from __future__ import annotations

import pytest
import torch

from mistral_nemo.engine.config import EngineConfig
from mistral_nemo.engine.dense_cache import DenseKVCache
from mistral_nemo.engine.llm_engine import LLMEngine
from mistral_nemo.engine.sampling_params import SamplingParams
from mistral_nemo.model.loading import LoadedModel, float32_activations, load
from mistral_nemo.model.quant import Int4Linear, Int8Linear, quantize_model
from mistral_nemo.model.quant.fused_decode import FusedDecoder
from tests.activation_reference import assert_logits_agree_to_quantization_noise
from tests.gguf_fixture import smollm2_gguf_path
from tests.nemo_checkpoints import random_reference_model, write_mistral_folder


def _float_smollm2() -> LoadedModel:
    return load(smollm2_gguf_path(), dtype=torch.float32, device="cpu", quantization="none")


@pytest.fixture(scope="module")
def smollm2_int8() -> LoadedModel:
    loaded = _float_smollm2()
    quantize_model(loaded.model, "int8")
    return loaded


@pytest.fixture(scope="module")
def smollm2_int4() -> LoadedModel:
    loaded = _float_smollm2()
    quantize_model(loaded.model, "int4", group_size=32, output_mode="int8")
    return loaded


@pytest.fixture(scope="module")
def nemo_mixed(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    """NeMo-shaped (head_dim 128 != dim / heads, GQA 4/2), int8 with some int4 layers mixed in and int8
    ones with a scale per 16 values (GGUF Q6_K's, another kernel)."""
    folder = write_mistral_folder(random_reference_model(seed=5), tmp_path_factory.mktemp("nemo"))
    loaded = load(folder, dtype=torch.float32, device="cpu", quantization="none")
    quantize_model(loaded.model, "int8")
    first = loaded.model.layers[0]
    first.attention.wk = Int4Linear.from_float(first.attention.wk.dequantize(), group_size=32)
    first.feed_forward.w2 = Int4Linear.from_float(first.feed_forward.w2.dequantize(), group_size=64)
    first.attention.wv = Int8Linear.from_float(first.attention.wv.dequantize(), group_size=16)
    last = loaded.model.layers[-1]
    last.feed_forward.w3 = Int8Linear.from_float(last.feed_forward.w3.dequantize(), group_size=16)
    return loaded


def _decode(loaded: LoadedModel, fused: bool, prompt_len: int = 21, steps: int = 6):
    """Prefill layer by layer, then decode `steps` tokens; returns (logits per step, cache)."""
    model = loaded.model
    FusedDecoder.attach(model) if fused else setattr(model, "fused_decoder", None)
    cache = DenseKVCache(model.args, prompt_len + steps, dtype=torch.float32)
    torch.manual_seed(0)
    ids = torch.randint(0, 3000, (prompt_len + steps,)) + 1000
    rows = []
    with torch.inference_mode():
        model(ids[:prompt_len], torch.arange(prompt_len), cache)
        cache.advance(prompt_len)
        for i in range(prompt_len, prompt_len + steps):
            rows.append(model(ids[i : i + 1], torch.tensor([i]), cache)[0])
            cache.advance(1)
    model.fused_decoder = None
    return torch.stack(rows), cache


@pytest.mark.parametrize("which", ["smollm2_int8", "smollm2_int4", "nemo_mixed"])
def test_fused_decode_equals_layer_by_layer(which: str, request: pytest.FixtureRequest) -> None:
    loaded: LoadedModel = request.getfixturevalue(which)
    assert FusedDecoder.supports(loaded.model)
    fused, fused_cache = _decode(loaded, fused=True)
    layered, layered_cache = _decode(loaded, fused=False)
    # Same weights and formulas, sums in another order. Layer 0 reads the same input on both paths, so
    # its K/V agree to float rounding (a wiring error of norm, quantization, q/k/v, RoPE or the cache
    # write shows here).
    torch.testing.assert_close(fused_cache.keys[0], layered_cache.keys[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fused_cache.values[0], layered_cache.values[0], rtol=1e-4, atol=1e-5)
    # Later layers read inputs that differ by float rounding: agreement to int16 rounding noise.
    assert_logits_agree_to_quantization_noise(fused, layered)
    for got, want in ((fused_cache.keys, layered_cache.keys), (fused_cache.values, layered_cache.values)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-3 * want.abs().max().item())


def test_only_cpu_float32_models_with_every_linear_quantized(smollm2_int8: LoadedModel) -> None:
    assert not FusedDecoder.supports(_float_smollm2().model)
    model = smollm2_int8.model
    saved = model.layers[3].feed_forward.w1
    model.layers[3].feed_forward.w1 = torch.nn.Linear(saved.in_features, saved.out_features, bias=False)
    try:
        assert not FusedDecoder.supports(model)
        assert not FusedDecoder.attach(model) and model.fused_decoder is None
    finally:
        model.layers[3].feed_forward.w1 = saved


def test_a_bf16_model_with_every_linear_quantized_computes_in_float32_on_the_fused_step() -> None:
    """What load() does for NeMo 12B on CPU (bfloat16 by default above 2B parameters): when every linear,
    the output included, is int8 / int4, the model turns float32 and decodes on the fused step."""
    loaded = load(smollm2_gguf_path(), dtype=torch.bfloat16, device="cpu")  # explicit: stays bf16
    model = loaded.model
    assert model.dtype == torch.bfloat16 and model.fused_decoder is None
    assert FusedDecoder.layers_supported(model) and not FusedDecoder.supports(model)
    assert float32_activations(model, FusedDecoder.layers_supported(model))
    assert not float32_activations(model, layers_compact=False)
    assert not float32_activations(_float_smollm2().model, layers_compact=True)  # float32 already
    float_output = load(smollm2_gguf_path(), dtype=torch.bfloat16, device="cpu", quantization="none").model
    assert not float32_activations(float_output, layers_compact=True)  # a float output projection
    model.compute_in(torch.float32)
    assert model.dtype == torch.float32 and model.tok_embeddings.weight.dtype == torch.bfloat16
    assert FusedDecoder.attach(model)
    want = load(smollm2_gguf_path(), device="cpu")  # float32 from the start
    ids = torch.tensor(loaded.tokenizer.encode_chat([{"role": "user", "content": "Name three colours."}]))
    # the same greedy tokens as a float32 load: the bf16 rounding of the embedding does not change them
    assert _greedy(model, ids, 8) == _greedy(want.model, ids, 8)


def _greedy(model: torch.nn.Module, ids: torch.Tensor, n: int) -> list[int]:
    cache = DenseKVCache(model.args, len(ids) + n, dtype=model.dtype, device="cpu")
    with torch.inference_mode():
        logits = model(ids, torch.arange(len(ids)), cache)
        cache.advance(len(ids))
        out = []
        for _ in range(n):
            out.append(int(logits[-1].argmax()))
            logits = model(torch.tensor([out[-1]]), torch.tensor([cache.length]), cache)
            cache.advance(1)
    return out


class _CountingDecoder:
    """The real fused decoder, counting the batch sizes it ran (to prove the engine took that path)."""

    def __init__(self, inner: FusedDecoder) -> None:
        self.inner, self.batch_sizes = inner, []

    def __call__(self, h, cos, sin, slots):
        self.batch_sizes.append(h.shape[0])
        return self.inner(h, cos, sin, slots)


def _engine_tokens(loaded: LoadedModel, prompts: list[list[int]]) -> dict[str, list[int]]:
    params = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)
    engine = LLMEngine(loaded, EngineConfig(num_blocks=200, block_size=8))
    for i, prompt in enumerate(prompts):
        engine.add_request(str(i), prompt, params)
    done: dict[str, list[int]] = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out.outputs[0].token_ids
    return done


def test_batched_engine_decodes_through_the_fused_step(smollm2_int8: LoadedModel) -> None:
    questions = ["Hi", "What is 2+2?", "Name a mammal that lives in the ocean.", "Who wrote Hamlet?"]
    prompts = [smollm2_int8.tokenizer.encode_chat([{"role": "user", "content": q}]) for q in questions]
    model = smollm2_int8.model
    model.fused_decoder = None
    layered = _engine_tokens(smollm2_int8, prompts)
    counter = _CountingDecoder(FusedDecoder(model))
    model.fused_decoder = counter
    try:
        fused = _engine_tokens(smollm2_int8, prompts)
    finally:
        model.fused_decoder = None
    assert fused == layered
    assert max(counter.batch_sizes) == len(prompts)  # several sequences in one fused step


def test_replacing_a_layer_after_attach_is_an_error_not_a_stale_answer(smollm2_int8: LoadedModel) -> None:
    model = smollm2_int8.model
    FusedDecoder.attach(model)
    saved = model.layers[2].attention.wv
    model.layers[2].attention.wv = type(saved)(saved.qweight.clone(), saved.scale.clone())
    cache = DenseKVCache(model.args, 8, dtype=torch.float32)
    try:
        with torch.inference_mode(), pytest.raises(RuntimeError, match="attach again"):
            model(torch.tensor([1000]), torch.tensor([0]), cache)
    finally:
        model.layers[2].attention.wv = saved
        model.fused_decoder = None
