"""Several LoRA adapters and the base model in one batch: each request's tokens equal that adapter alone.

References: the same adapter merged into the weights (LLM(model, lora=PATH), which `lora merge` is
tested against in test_lora.py) and the base model without adapters. The adapters are random (B != 0)
on a random NeMo-shaped model, of different ranks, one covering only the first layer.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mistral_nemo import LLM, LoRARequest, SamplingParams
from mistral_nemo.engine.errors import RequestError
from mistral_nemo.model.loading import load
from mistral_nemo.model.lora import LoraError
from mistral_nemo.model.multi_lora import AdapterSlots
from tests.nemo_checkpoints import random_reference_model, write_mistral_folder
from tests.test_lora import random_adapter, write_adapter

GREEDY = SamplingParams(temperature=0, max_tokens=8)
SMALL = {"device": "cpu", "kv_cache_memory": "16MiB"}  # a small KV pool: allocating the default 2 GiB is slow
PROMPTS = [[1, 1050, 1300, 2000], [1, *range(1100, 1140)]]


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    return write_mistral_folder(random_reference_model(seed=11), tmp_path_factory.mktemp("nemo"))


@pytest.fixture(scope="module")
def adapters(model_folder, tmp_path_factory) -> dict[str, Path]:
    args = load(model_folder, device="cpu").args
    root = tmp_path_factory.mktemp("adapters")
    return {
        "a": write_adapter(root / "a", random_adapter(args, rank=4, seed=21)),
        "b": write_adapter(root / "b", random_adapter(args, rank=2, seed=22, layers=1)),
    }


def tokens(llm: LLM, prompts, lora=None) -> list[list[int]]:
    return [r.outputs[0].token_ids for r in llm.generate(prompts, GREEDY, use_tqdm=False, lora_request=lora)]


@pytest.fixture(scope="module")
def expected(model_folder, adapters) -> dict[str | None, list[list[int]]]:
    """Greedy tokens of the base and of each adapter merged into the weights, on its own."""
    want = {None: tokens(LLM(model_folder, **SMALL), PROMPTS)}
    for name, path in adapters.items():
        want[name] = tokens(LLM(model_folder, **SMALL, lora=path), PROMPTS)
    assert want["a"] != want[None] and want["b"] != want[None] and want["a"] != want["b"]
    return want


def test_one_slot_for_every_token_equals_the_merged_adapter(model_folder, adapters):
    ids = torch.tensor(PROMPTS[1])
    merged = load(model_folder, device="cpu", lora=adapters["b"]).model.logits(ids)
    loaded = load(model_folder, device="cpu")
    base = loaded.model.logits(ids)
    slots = AdapterSlots(loaded.model, max_loras=2)
    from mistral_nemo.model.lora_files import read_adapter

    slots.load(2, *read_adapter(adapters["b"], loaded.args))
    slots.set_token_slots([2] * len(ids))
    ours = loaded.model.logits(ids)
    assert (ours - merged).abs().max() <= 1e-4 * (merged.max() - merged.min())
    slots.set_token_slots([0] * len(ids))
    assert torch.equal(loaded.model.logits(ids), base)  # base tokens get no delta at all


def test_two_adapters_and_the_base_in_one_batch_equal_each_alone(model_folder, adapters, expected):
    llm = LLM(model_folder, **SMALL, enable_lora=True, max_loras=2)
    requests = {None: None, "a": LoRARequest("a", 1, adapters["a"]), "b": LoRARequest("b", 2, adapters["b"])}
    steps: list[set[int]] = []
    slots = llm.engine.runner.adapters
    record = slots.set_token_slots
    slots.set_token_slots = lambda s: (steps.append(set(s or [])), record(s))[1]  # see what each step mixed
    order = [name for name in ("a", None, "b") for _ in PROMPTS]
    outs = tokens(llm, PROMPTS * 3, [requests[name] for name in order])
    got = {name: outs[i * len(PROMPTS) : (i + 1) * len(PROMPTS)] for i, name in enumerate(("a", None, "b"))}
    assert got == expected
    assert {0, 1, 2} in steps  # the base and both adapters really shared a forward pass


def test_the_prefix_cache_never_serves_one_adapters_blocks_to_another(model_folder, adapters, expected):
    llm = LLM(model_folder, **SMALL, enable_lora=True, max_loras=2, block_size=4)
    a, b = LoRARequest("a", 1, adapters["a"]), LoRARequest("b", 2, adapters["b"])
    long = [PROMPTS[1]]
    first = llm.generate(long, GREEDY, use_tqdm=False, lora_request=a)[0]
    assert first.num_cached_tokens == 0 and first.outputs[0].token_ids == expected["a"][1]
    for lora, name in ((None, None), (b, "b")):  # same tokens, other weights: nothing may be reused
        out = llm.generate(long, GREEDY, use_tqdm=False, lora_request=lora)[0]
        assert out.num_cached_tokens == 0 and out.outputs[0].token_ids == expected[name][1]
    again = llm.generate(long, GREEDY, use_tqdm=False, lora_request=a)[0]
    assert again.num_cached_tokens > 0 and again.outputs[0].token_ids == expected["a"][1]


def test_adapters_beyond_max_loras_take_the_slot_of_an_idle_one(model_folder, adapters, expected):
    llm = LLM(model_folder, **SMALL, enable_lora=True, max_loras=1)
    for _ in range(2):
        for lora_id, name in ((1, "a"), (2, "b")):
            lora = LoRARequest(name, lora_id, adapters[name])
            assert tokens(llm, PROMPTS, lora) == expected[name]
    assert llm.engine.list_loras() == {2}
    with pytest.raises(RequestError, match="adapter slots are in use"):  # both at once need two slots
        tokens(llm, PROMPTS[:2], [LoRARequest("a", 1, adapters["a"]), LoRARequest("b", 2, adapters["b"])])


def test_lora_requests_are_refused_clearly(model_folder, adapters, tmp_path):
    with pytest.raises(RequestError, match="enable_lora=True"):
        LLM(model_folder, **SMALL).generate(PROMPTS[:1], GREEDY, lora_request=LoRARequest("a", 1, "x"))
    llm = LLM(model_folder, **SMALL, enable_lora=True)
    (tmp_path / "lora.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(LoraError, match=r"lora\.safetensors is not a readable safetensors file"):
        llm.engine.add_lora(LoRARequest("bad", 1, tmp_path))
    llm.engine.add_lora(LoRARequest("a", 1, adapters["a"]))
    with pytest.raises(RequestError, match="already the adapter 'a'"):
        llm.engine.add_lora(LoRARequest("b", 1, adapters["b"]))
    with pytest.raises(ValueError, match="positive integer"):
        LoRARequest("a", 0, adapters["a"])
