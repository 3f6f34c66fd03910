"""A first answer that is right: the model's own sampling defaults, used by every caller, flags win.

The embedded SmolLM2-135M samples badly ("L'Étoile, la Cité, ..." about half the time at NeMo's 0.3),
so its default is greedy; an HF folder's generation_config.json and NeMo's 0.3 are read for other models.
"""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import pytest
import torch

from mistral_nemo import LLM
from mistral_nemo.engine.sampling_params import SamplingParams
from mistral_nemo.entrypoints.chat_cmd import LocalConversation
from mistral_nemo.entrypoints.cli import build_parser
from mistral_nemo.entrypoints.model_options import sampling_params, single_request_engine
from mistral_nemo.entrypoints.server.common import sampling_params as server_sampling_params
from mistral_nemo.entrypoints.server.config import ServerConfig
from mistral_nemo.entrypoints.server.protocol import ChatCompletionRequest
from mistral_nemo.model.generation_defaults import EMBEDDED, NEMO, GenerationConfigError
from mistral_nemo.model.loading import LoadedModel, load
from mistral_nemo.model.weights import CheckpointError
from tests.conftest import console_script
from tests.gguf_fixture import smollm2_gguf_path
from tests.nemo_checkpoints import random_reference_model, write_hf_folder, write_mistral_folder

QUESTION = "What is the capital of France?"
# Simple factual questions the embedded model answers right under its defaults (README lists the
# ones it gets wrong: "What is the capital of Italy?" starts "Il Coriobella").
FACTS = [
    ("What is the capital of Germany?", "Berlin"),
    ("What is the capital of Japan?", "Tokyo"),
    ("How many days are in a week?", "7"),
    ("What is 2 + 2?", "4"),
    ("Who wrote Romeo and Juliet?", "Shakespeare"),
]


def chat_answer(loaded: LoadedModel, argv: list[str], question: str) -> str:
    """What `mistral-nemo chat MODEL --prompt QUESTION argv...` answers: the command's own parsing and
    sampling defaults, on an already loaded model."""
    args = build_parser().parse_args(["chat", "--prompt", question, *argv])
    conversation = LocalConversation(
        single_request_engine(loaded), sampling_params(args, loaded.generation_defaults)
    )
    return conversation.reply(question, out=io.StringIO())


def test_the_readme_command_answers_paris() -> None:
    gguf = smollm2_gguf_path()
    env_home = {"MISTRAL_NEMO_HOME": str(gguf.parent.parent)}
    result = subprocess.run(
        [console_script("mistral-nemo"), "chat", "--prompt", QUESTION],
        capture_output=True, text=True, timeout=300, env={**__import__("os").environ, **env_home},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout


def test_the_readme_question_answers_paris_whatever_the_seed(smollm2_loaded: LoadedModel) -> None:
    assert smollm2_loaded.generation_defaults == EMBEDDED
    for seed in range(10):
        assert "Paris" in chat_answer(
            smollm2_loaded, ["--seed", str(seed), "--max-tokens", "12"], QUESTION
        ), seed


@pytest.mark.parametrize(("question", "answer"), FACTS)
def test_simple_facts_come_out_right(smollm2_loaded: LoadedModel, question: str, answer: str) -> None:
    assert answer in chat_answer(smollm2_loaded, ["--seed", "1", "--max-tokens", "32"], question)


def test_a_users_temperature_wins(smollm2_loaded: LoadedModel) -> None:
    args = build_parser().parse_args(["chat", "--temperature", "1.2", "--top-k", "50", "--seed", "3"])
    params = sampling_params(args, smollm2_loaded.generation_defaults)
    assert (params.temperature, params.top_k, params.seed, params.max_tokens) == (1.2, 50, 3, 512)
    greedy = chat_answer(smollm2_loaded, ["--max-tokens", "6"], QUESTION)
    sampled = {chat_answer(smollm2_loaded, ["--max-tokens", "6", "--temperature", "1.5", "--seed", str(s)],
                           QUESTION) for s in range(3)}  # fmt: skip
    assert sampled != {greedy}  # hot sampling really happened


def test_llm_without_params_uses_the_models_defaults(smollm2_loaded: LoadedModel) -> None:
    llm = LLM(smollm2_loaded)
    first = llm.chat([{"role": "user", "content": QUESTION}], use_tqdm=False)[0].outputs[0]
    again = llm.chat([{"role": "user", "content": QUESTION}], use_tqdm=False)[0].outputs[0]
    assert first.token_ids == again.token_ids  # greedy, although no seed was given
    assert "Paris" in first.text


def test_server_fills_left_out_fields_from_the_model() -> None:
    body = ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "hi"}]})
    config = ServerConfig(sampling_defaults=NEMO)
    params = server_sampling_params(body, config, vocab_size=100, max_tokens=5, seed=None)
    assert params.temperature == 0.3
    assert (
        server_sampling_params(body, ServerConfig(), vocab_size=100, max_tokens=5, seed=None).temperature == 1
    )
    own = ChatCompletionRequest.model_validate({"messages": [], "temperature": 0.9, "top_p": 0.5})
    params = server_sampling_params(own, config, vocab_size=100, max_tokens=5, seed=None)
    assert (params.temperature, params.top_p) == (0.9, 0.5)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory) -> Path:
    return write_hf_folder(random_reference_model(seed=5), tmp_path_factory.mktemp("hf-small"))


def test_generation_config_json_gives_the_defaults(hf_folder: Path) -> None:
    (hf_folder / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 1, "temperature": 0.6, "top_p": 0.9, "top_k": 20,
                    "repetition_penalty": 1.1, "max_new_tokens": 77})
    )  # fmt: skip
    loaded = load(hf_folder, dtype=torch.float32, device="cpu")
    d = loaded.generation_defaults
    assert (d.temperature, d.top_p, d.top_k, d.repetition_penalty, d.max_tokens) == (0.6, 0.9, 20, 1.1, 77)
    args = build_parser().parse_args(["generate", str(hf_folder), "--prompt", "x", "--top-k", "5"])
    params = sampling_params(args, d)
    assert (params.temperature, params.top_k, params.max_tokens) == (0.6, 5, 77)  # the flag wins
    (hf_folder / "generation_config.json").write_text(json.dumps({"do_sample": False, "temperature": 0.6}))
    assert load(hf_folder, dtype=torch.float32, device="cpu").generation_defaults.temperature == 0.0
    (hf_folder / "generation_config.json").write_text('{"temperature": ')
    with pytest.raises(GenerationConfigError, match=r"generation_config\.json is not valid JSON"):
        load(hf_folder, dtype=torch.float32, device="cpu")
    (hf_folder / "generation_config.json").unlink()
    # No generation_config.json: the folder has NeMo's Tekken tokenizer, so NeMo's documented 0.3.
    assert load(hf_folder, dtype=torch.float32, device="cpu").generation_defaults == NEMO


def test_mistral_folder_samples_at_nemos_temperature(tmp_path: Path) -> None:
    folder = write_mistral_folder(random_reference_model(seed=6), tmp_path / "nemo")
    loaded = load(folder, dtype=torch.float32, device="cpu")
    assert loaded.generation_defaults == NEMO
    params = sampling_params(build_parser().parse_args(["chat", "--prompt", "x"]), loaded.generation_defaults)
    assert params == SamplingParams(max_tokens=512, temperature=0.3)
    with pytest.raises(CheckpointError):  # not a model: the loader, not the defaults, says so
        load(tmp_path, dtype=torch.float32, device="cpu")
