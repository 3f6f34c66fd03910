"""The embedded SmolLM2-135M-Instruct GGUF: same logits as transformers on the same file, right answers."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

from mistral_nemo.engine.generate import generate
from mistral_nemo.engine.sampling_params import SamplingParams
from mistral_nemo.model.loading import LoadedModel, load
from tests.activation_reference import assert_logits_agree_to_quantization_noise
from tests.conftest import console_script
from tests.gguf_fixture import smollm2_gguf_path


@pytest.fixture(scope="module")
def gguf_path() -> Path:
    return smollm2_gguf_path()


@pytest.fixture(scope="module")
def smollm2(smollm2_loaded: LoadedModel) -> LoadedModel:
    return smollm2_loaded  # loaded once per session (conftest)


def test_args_from_gguf_metadata(smollm2: LoadedModel) -> None:
    args = smollm2.args
    assert (args.dim, args.n_layers, args.n_heads, args.n_kv_heads, args.head_dim) == (576, 30, 9, 3, 64)
    assert args.tied_embeddings and args.vocab_size == 49152 and args.rope_theta == 100000.0
    # Loaded as the file is (quantization "auto"): the tied output reads the same Q8_0 blocks as the
    # embedding, as a compact int8 layer; dequantized, the two are the same matrix.
    from mistral_nemo.model.quant import Int4Linear, Int8Linear

    model = smollm2.model
    assert isinstance(model.output, Int8Linear) and model.output.group_size == 32
    assert torch.equal(model.output.dequantize(), model.tok_embeddings.weight)
    assert isinstance(model.layers[0].feed_forward.w2, Int4Linear)  # the file's Q4_1 blocks
    assert model.fused_decoder is not None


def test_float_load_ties_the_output_to_the_embedding(gguf_path: Path) -> None:
    model = load(gguf_path, dtype=torch.float32, device="cpu", quantization="none").model
    assert model.output.weight is model.tok_embeddings.weight


def test_logits_equal_transformers_on_the_same_gguf(smollm2: LoadedModel, gguf_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    reference = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
    ).eval()
    ids = smollm2.tokenizer.encode_chat([{"role": "user", "content": "Name three colours of the rainbow."}])
    with torch.no_grad():
        expected = reference(input_ids=torch.tensor([ids])).logits[0].float()
    ours = smollm2.model.logits(torch.tensor(ids))
    # The same weights (transformers dequantizes the file to fp32); our compact layers round their
    # activations to int16 per block of 32, which moves logits by ~3e-4 of their range (float: 2e-4 abs).
    assert_logits_agree_to_quantization_noise(ours, expected)
    assert torch.equal(ours.argmax(-1), expected.argmax(-1))


@pytest.mark.parametrize(
    ("question", "answer"),
    [
        ("What is the capital of France?", "Paris"),
        ("What is 2+2?", "4"),
    ],
)
def test_greedy_answers_are_right(smollm2: LoadedModel, question: str, answer: str) -> None:
    ids = smollm2.tokenizer.encode_chat([{"role": "user", "content": question}])
    result = generate(smollm2.model, smollm2.tokenizer, ids, SamplingParams(max_tokens=40, temperature=0))
    assert answer in result.text
    assert result.finish_reason == "stop"  # it ends its turn with <|im_end|>


def test_chat_prompt_command_prints_only_the_answer(gguf_path: Path) -> None:
    cli = console_script("mistral-nemo")
    env = {**os.environ, "MISTRAL_NEMO_HOME": str(gguf_path.parent.parent)}
    result = subprocess.run(
        [cli, "chat", "--prompt", "What is the capital of France?", "--temperature", "0"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout
    assert "Loaded" not in result.stdout  # notes go to stderr
    assert "Loaded" in result.stderr


@pytest.mark.parametrize("keep_bytes", [2_000, 50_000_000])
def test_truncated_gguf_is_a_clear_error(gguf_path: Path, tmp_path: Path, keep_bytes: int) -> None:
    # Cut inside the header (vocabulary) and inside the tensor data.
    broken = tmp_path / "model.gguf"
    with gguf_path.open("rb") as src:
        broken.write_bytes(src.read(keep_bytes))
    with pytest.raises(ValueError, match="truncated"):
        load(broken, dtype=torch.float32, device="cpu")


@pytest.mark.parametrize("quantization", ["int8", "int4"])
def test_quantized_chat_prompt_stays_right(gguf_path: Path, quantization: str) -> None:
    env = {**os.environ, "MISTRAL_NEMO_HOME": str(gguf_path.parent.parent)}
    result = subprocess.run(
        [console_script("mistral-nemo"), "chat", "--prompt", "What is the capital of France?",
         "--temperature", "0", "--quantization", quantization],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout


def test_quantized_load_shrinks_the_weights(gguf_path: Path) -> None:
    from mistral_nemo.model.quant import weight_bytes

    fp32 = load(gguf_path, dtype=torch.float32, device="cpu", quantization="none")
    int8 = load(gguf_path, dtype=torch.float32, device="cpu", quantization="int8")
    assert weight_bytes(int8.model) < weight_bytes(fp32.model) / 3
    with pytest.raises(ValueError, match="quantization must be one of"):
        load(gguf_path, quantization="int3")
