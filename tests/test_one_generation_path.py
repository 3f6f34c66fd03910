"""One generation path: `mistral-nemo generate`, `mistral-chat` and `LLM.generate` give the same tokens for
the same prompt and sampling parameters (penalties, min_tokens, stop strings, seeds), because all of them
run the engine; and the engine's greedy tokens equal the dense-cache oracle's (engine/generate.py)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

from mistral_nemo import LLM, SamplingParams
from mistral_nemo.engine.generate import generate as oracle_generate
from mistral_nemo.entrypoints.cli import main
from mistral_nemo.entrypoints.mistral_compat import SEPARATOR, mistral_chat, mistral_demo
from mistral_nemo.model.loading import LoadedModel, load
from tests.nemo_checkpoints import random_reference_model, write_mistral_folder

PROMPT = "The sea is"
GRID = [  # (generate flags, the same as SamplingParams fields)
    (["--temperature", "0"], {"temperature": 0.0}),
    (["--temperature", "0.8", "--seed", "1", "--repetition-penalty", "1.3"],
     {"temperature": 0.8, "seed": 1, "repetition_penalty": 1.3}),
    (["--temperature", "1", "--seed", "2", "--presence-penalty", "0.5", "--frequency-penalty", "0.3",
      "--min-tokens", "10"],
     {"temperature": 1.0, "seed": 2, "presence_penalty": 0.5, "frequency_penalty": 0.3, "min_tokens": 10}),
    (["--temperature", "0.7", "--seed", "5", "--top-k", "20", "--top-p", "0.9", "--min-p", "0.05"],
     {"temperature": 0.7, "seed": 5, "top_k": 20, "top_p": 0.9, "min_p": 0.05}),
]  # fmt: skip
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_mistral_folder(random_reference_model(seed=11), tmp_path_factory.mktemp("Nemo-grid"))


@pytest.fixture(scope="module")
def llm(folder: Path) -> LLM:
    return LLM(load(folder, dtype=torch.float32, device="cpu"))


def cli_generate(folder: Path, flags: list[str], capsys) -> str:
    assert main(["generate", str(folder), "--prompt", PROMPT, "--max-tokens", str(MAX_TOKENS), *flags]) == 0
    return capsys.readouterr().out.removesuffix("\n")


def offline(llm: LLM, **fields) -> tuple[str, list[int]]:
    fields = {"temperature": 0.3, "max_tokens": MAX_TOKENS, **fields}  # 0.3: the NeMo folder's default
    out = llm.generate(PROMPT, SamplingParams(**fields), use_tqdm=False)[0].outputs[0]
    return out.text, list(out.token_ids)


@pytest.mark.parametrize(("flags", "fields"), GRID)
def test_generate_command_and_llm_agree(folder: Path, llm: LLM, capsys, flags, fields) -> None:
    text, token_ids = offline(llm, **fields)
    assert cli_generate(folder, flags, capsys) == text
    if fields.get("min_tokens"):
        assert len(token_ids) >= fields["min_tokens"]


def test_stop_strings_agree(folder: Path, llm: LLM, capsys) -> None:
    free, _ = offline(llm, temperature=0.0)
    stop = free[5:8]
    assert stop.strip(), free
    for include, flag in ((False, []), (True, ["--include-stop"])):
        text, _ = offline(llm, temperature=0.0, stop=[stop], include_stop_str_in_output=include)
        assert text == free[: free.find(stop)] + (stop if include else "")
        assert cli_generate(folder, ["--temperature", "0", "--stop", stop, *flag], capsys) == text


@pytest.mark.parametrize(("temperature", "seed"), [(0.0, None), (0.8, 1), (1.0, 2)])
def test_mistral_chat_and_llm_agree(folder, llm, capsys, monkeypatch, temperature, seed) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(PROMPT + "\n"))
    argv = [str(folder), "--max_tokens", str(MAX_TOKENS), "--temperature", str(temperature)]
    assert mistral_chat([*argv, *(["--seed", str(seed)] if seed is not None else [])]) == 0
    answer = capsys.readouterr().out.split("Prompt: ")[1].split("\n" + SEPARATOR)[0]
    assert answer == offline(llm, temperature=temperature, seed=seed)[0]


def test_greedy_stays_bit_identical_to_the_dense_oracle(folder: Path, llm: LLM, capsys) -> None:
    loaded: LoadedModel = llm.loaded
    ids = loaded.tokenizer.encode(PROMPT, bos=True)
    oracle = oracle_generate(
        loaded.model, loaded.tokenizer, ids, SamplingParams(max_tokens=20, temperature=0)
    )
    engine = llm.generate([ids], SamplingParams(max_tokens=20, temperature=0), use_tqdm=False)[0].outputs[0]
    assert list(engine.token_ids) == oracle.token_ids
    assert mistral_demo([str(folder), "--max_tokens", "20"]) == 0
    first_block = capsys.readouterr().out.split(SEPARATOR + "\n")[0]
    demo_ids = loaded.tokenizer.encode("This is a test", bos=True)
    demo_oracle = oracle_generate(
        loaded.model, loaded.tokenizer, demo_ids, SamplingParams(max_tokens=20, temperature=0)
    )
    assert first_block == "This is a test" + demo_oracle.text + "\n"
