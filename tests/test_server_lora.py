"""`serve --lora NAME=PATH`: adapters served as models of their own, over real HTTP on loopback.

Two adapters (random, different ranks) on a random NeMo-shaped model with NeMo's Tekken tokenizer;
each request's greedy answer must equal that adapter alone (merged into the weights, test_multi_lora.py
checks the same in-process), the base model's must equal the base alone, while they run together.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mistral_nemo import LLM, LoRARequest, SamplingParams
from mistral_nemo.engine.config import EngineConfig
from mistral_nemo.entrypoints.cli import main
from mistral_nemo.entrypoints.server import ServerConfig
from mistral_nemo.model.loading import load
from tests.nemo_checkpoints import random_reference_model, write_mistral_folder
from tests.server_fixture import API_KEY, NEMO_NAME, RunningServer, serve
from tests.test_lora import random_adapter, write_adapter

PROMPT = [1, *range(1100, 1130)]
MAX_TOKENS = 12
SMALL = {"device": "cpu", "kv_cache_memory": "16MiB"}


@pytest.fixture(scope="module")
def files() -> dict[str, Path]:
    root = Path(tempfile.mkdtemp(prefix="mistral-nemo-lora-server-"))
    folder = write_mistral_folder(random_reference_model(seed=5), root / "nemo")
    args = load(folder, device="cpu").args
    return {
        "base": folder,
        "sql": write_adapter(root / "sql", random_adapter(args, rank=4, seed=31)),
        "poem": write_adapter(root / "poem", random_adapter(args, rank=2, seed=32, layers=1)),
    }


@pytest.fixture(scope="module")
def server(files) -> Iterator[RunningServer]:
    loras = [LoRARequest("sql", 1, str(files["sql"])), LoRARequest("poem", 2, str(files["poem"]))]
    engine = EngineConfig(kv_cache_memory=16 << 20, max_num_seqs=4, enable_lora=True, max_loras=2)
    config = ServerConfig(api_key=API_KEY, served_model_names=[NEMO_NAME])
    yield from serve(load(files["base"], device="cpu"), engine, config, loras)


def alone(files: dict[str, Path], adapter: str | None) -> str:
    """The greedy answer of the base, or of one adapter merged into the weights, on its own."""
    llm = LLM(files["base"], **SMALL, lora=files[adapter] if adapter else None)
    greedy = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    return llm.generate([PROMPT], greedy, use_tqdm=False)[0].outputs[0].text


def test_models_lists_each_adapter_with_the_base_as_parent(server, files):
    with server.client() as client:
        cards = {card["id"]: card for card in client.get("/v1/models").json()["data"]}
        assert {"sql", "poem", NEMO_NAME} <= set(cards)
        assert cards["sql"]["parent"] == NEMO_NAME and cards["sql"]["root"] == str(files["sql"])
        assert cards[NEMO_NAME]["parent"] is None and "sql" not in cards[NEMO_NAME]["aliases"]
        assert client.get("/v1/models/poem").json()["parent"] == NEMO_NAME
        missing = client.post("/v1/completions", json={"model": "nope", "prompt": PROMPT, "max_tokens": 1})
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_concurrent_requests_on_two_adapters_and_the_base_equal_each_alone(server, files):
    want = {name: alone(files, None if name == NEMO_NAME else name) for name in ("sql", "poem", NEMO_NAME)}
    assert len(set(want.values())) == 3  # the adapters really change the answer
    steps: list[set[int]] = []
    slots = server.engine.engine.runner.adapters
    record = slots.set_token_slots
    slots.set_token_slots = lambda s: (steps.append(set(s or [])), record(s))[1]  # see what each step mixed

    def complete(model: str) -> str:
        body = {
            "model": model,
            "prompt": PROMPT,
            "max_tokens": MAX_TOKENS,
            "temperature": 0,
            "ignore_eos": True,
        }
        with server.client() as client:
            response = client.post("/v1/completions", json=body)
        assert response.status_code == 200, response.text
        return response.json()["choices"][0]["text"]

    try:
        with ThreadPoolExecutor(3) as pool:
            got = dict(zip(want, pool.map(complete, want), strict=True))
    finally:
        slots.set_token_slots = record
    assert got == want
    assert any(len(s) >= 2 for s in steps)  # requests on different adapters shared a forward pass


def test_chat_completions_run_on_the_adapter(server, files):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0}
    with server.client() as client:
        texts = {
            m: client.post("/v1/chat/completions", json={**body, "model": m}).json()
            for m in ("sql", NEMO_NAME)
        }
    assert texts["sql"]["model"] == "sql"
    assert texts["sql"]["choices"][0]["message"] != texts[NEMO_NAME]["choices"][0]["message"]


def test_serve_refuses_bad_adapters_by_name(files, tmp_path, capsys):
    def error(*argv: str) -> str:
        assert main(["serve", str(files["base"]), "--port", "0", *argv]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err, err
        return err

    assert "LoRA adapter not found: /no/such" in error("--lora", "a=/no/such")
    assert "expected NAME=PATH" in error("--lora-modules", "=x")
    assert 'expected {"name": NAME, "path": PATH}' in error("--lora-modules", '{"name": 1}')
    assert "'a' is given twice" in error(
        "--lora", f"a={files['sql']}", "--lora-modules", f"a={files['poem']}"
    )
    bad = tmp_path / "lora.safetensors"
    bad.write_bytes(json.dumps({"not": "safetensors"}).encode())
    assert f"{bad} is not a readable safetensors file" in error("--lora", f"bad={tmp_path}")
