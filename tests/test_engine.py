"""The batching engine: each request gets exactly what it would get alone, whatever else runs."""

from __future__ import annotations

import pytest
import torch

from mistral_nemo.engine.config import EngineConfig, parse_size
from mistral_nemo.engine.errors import ContextLengthError, NeverFitsError, QueueFullError, RequestError
from mistral_nemo.engine.generate import generate
from mistral_nemo.engine.llm_engine import LLMEngine
from mistral_nemo.engine.outputs import RequestOutput
from mistral_nemo.engine.sampling_params import SamplingParams
from mistral_nemo.model.loading import LoadedModel, load
from tests.nemo_checkpoints import random_reference_model, write_mistral_folder

QUESTIONS = [
    "What is the capital of France?",
    "Hi",
    "Write a haiku about autumn leaves falling in a quiet garden at dusk.",
    "What is 2+2?",
    "List three primary colours, then explain how they mix to make secondary colours.",
    "Who wrote Hamlet?",
    "Translate 'good morning' into Spanish.",
    "Why is the sky blue? Answer in one sentence.",
    "Name a mammal that lives in the ocean.",
    "What is the boiling point of water in Celsius at sea level?",
    "Give me a synonym for happy.",
    "How many days are in a leap year?",
    "What is the largest planet in our solar system, and how many moons does it have roughly?",
    "Spell 'cat' backwards.",
    "What colour is a ripe banana?",
    "Describe a bicycle in exactly two short sentences for a child who has never seen one.",
]


@pytest.fixture(scope="module")
def smollm2(smollm2_loaded: LoadedModel) -> LoadedModel:
    return smollm2_loaded  # loaded once per session (conftest)


@pytest.fixture(scope="module")
def nemo(tmp_path_factory) -> LoadedModel:
    folder = write_mistral_folder(random_reference_model(seed=21), tmp_path_factory.mktemp("nemo"))
    return load(folder, dtype=torch.float32, device="cpu")


def chat_prompts(loaded: LoadedModel) -> list[list[int]]:
    return [loaded.tokenizer.encode_chat([{"role": "user", "content": q}]) for q in QUESTIONS]


def run_all(engine: LLMEngine) -> dict[str, RequestOutput]:
    finished: dict[str, RequestOutput] = {}
    for _ in range(10_000):
        if not engine.has_unfinished_requests():
            return finished
        for output in engine.step():
            if output.finished:
                finished[output.request_id] = output
    raise AssertionError("the engine did not finish")


def assert_all_blocks_free(engine: LLMEngine) -> None:
    assert engine.blocks.num_free == engine.blocks.num_blocks
    assert not engine.scheduler.running and not engine.scheduler.waiting


@pytest.mark.parametrize("which", ["smollm2", "nemo"])
def test_sixteen_requests_together_equal_each_alone(which: str, request: pytest.FixtureRequest) -> None:
    loaded: LoadedModel = request.getfixturevalue(which)
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=which == "nemo")
    prompts = chat_prompts(loaded)
    assert len({len(p) for p in prompts}) >= 8  # really different lengths
    engine = LLMEngine(loaded, EngineConfig(num_blocks=400, max_num_batched_tokens=256))
    for i, prompt in enumerate(prompts):
        engine.add_request(str(i), prompt, params)
    together = run_all(engine)
    for i, prompt in enumerate(prompts):
        alone = generate(loaded.model, loaded.tokenizer, prompt, params)
        assert together[str(i)].outputs[0].token_ids == alone.token_ids, QUESTIONS[i]
        assert together[str(i)].outputs[0].text == alone.text
    assert_all_blocks_free(engine)


def test_seeded_sampling_alone_equals_in_batch(nemo: LoadedModel) -> None:
    prompts = chat_prompts(nemo)[:6]
    seeded = SamplingParams(max_tokens=10, temperature=0.9, top_p=0.95, seed=123, ignore_eos=True)
    alone_engine = LLMEngine(nemo, EngineConfig(num_blocks=200))
    alone_engine.add_request("x", prompts[0], seeded)
    alone = run_all(alone_engine)["x"].outputs[0].token_ids
    batch_engine = LLMEngine(nemo, EngineConfig(num_blocks=200))
    batch_engine.add_request("x", prompts[0], seeded)
    for i, prompt in enumerate(prompts[1:]):  # others: unseeded, greedy, different settings
        other = SamplingParams(
            max_tokens=7, temperature=[0, 1.3][i % 2], top_k=[0, 5][i % 2], ignore_eos=True
        )
        batch_engine.add_request(f"o{i}", prompt, other)
    assert run_all(batch_engine)["x"].outputs[0].token_ids == alone


def test_prefix_cache_hit_gives_the_same_output(nemo: LoadedModel) -> None:
    system = "You are a careful assistant. " * 12  # a long shared prefix (several blocks)
    first = nemo.tokenizer.encode_chat(
        [{"role": "system", "content": system}, {"role": "user", "content": "A?"}]
    )
    second = nemo.tokenizer.encode_chat(
        [{"role": "system", "content": system}, {"role": "user", "content": "B?"}]
    )
    params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    engine = LLMEngine(nemo, EngineConfig(num_blocks=100, block_size=8))
    engine.add_request("first", first, params)
    assert run_all(engine)["first"].num_cached_tokens == 0
    engine.add_request("second", second, params)
    cached = run_all(engine)["second"]
    shared = next(i for i, (a, b) in enumerate(zip(first, second, strict=False)) if a != b)
    assert cached.num_cached_tokens == shared // 8 * 8 > 0
    assert engine.stats().prefix_cache_hits == cached.num_cached_tokens
    uncached_engine = LLMEngine(nemo, EngineConfig(num_blocks=100, block_size=8, enable_prefix_caching=False))
    uncached_engine.add_request("second", second, params)
    uncached = run_all(uncached_engine)["second"]
    assert uncached.num_cached_tokens == 0
    assert cached.outputs[0].token_ids == uncached.outputs[0].token_ids
    assert_all_blocks_free(engine)


def test_tiny_pool_preempts_and_still_matches(nemo: LoadedModel) -> None:
    prompts = chat_prompts(nemo)[:8]
    params = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
    longest = max(len(p) for p in prompts) + 24
    engine = LLMEngine(nemo, EngineConfig(num_blocks=longest // 4 + 4, block_size=4))  # about one at a time
    for i, prompt in enumerate(prompts):
        engine.add_request(str(i), prompt, params)
    results = run_all(engine)
    assert engine.stats().preemptions > 0
    for i, prompt in enumerate(prompts):
        assert (
            results[str(i)].outputs[0].token_ids
            == generate(nemo.model, nemo.tokenizer, prompt, params).token_ids
        )
    assert_all_blocks_free(engine)


def test_chunked_prefill_matches(nemo: LoadedModel) -> None:
    prompt = chat_prompts(nemo)[4]
    params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    engine = LLMEngine(
        nemo, EngineConfig(num_blocks=64, max_num_batched_tokens=7)
    )  # prompt in 7-token chunks
    engine.add_request("c", prompt, params)
    assert (
        run_all(engine)["c"].outputs[0].token_ids
        == generate(nemo.model, nemo.tokenizer, prompt, params).token_ids
    )


def test_abort_frees_running_and_waiting(nemo: LoadedModel) -> None:
    engine = LLMEngine(nemo, EngineConfig(num_blocks=64, max_num_seqs=2))
    params = SamplingParams(max_tokens=50, temperature=0, ignore_eos=True)
    for i, prompt in enumerate(chat_prompts(nemo)[:5]):
        engine.add_request(str(i), prompt, params)
    engine.step()
    engine.step()
    assert len(engine.scheduler.running) == 2 and len(engine.scheduler.waiting) == 3
    assert engine.blocks.num_free < engine.blocks.num_blocks
    for i in range(5):
        assert engine.abort_request(str(i))
    assert not engine.abort_request("0")  # already gone
    assert_all_blocks_free(engine)
    assert engine.step() == []


def test_admission_errors_are_distinct(nemo: LoadedModel) -> None:
    engine = LLMEngine(
        nemo, EngineConfig(num_blocks=8, block_size=4, max_num_seqs=1, max_queue=2, max_model_len=64)
    )
    info = engine.info  # the public facts a server reads
    assert (info.model_name, info.max_model_len, info.vocab_size) == (nemo.name, 64, nemo.args.vocab_size)
    assert (info.kv_cache_blocks, info.kv_cache_tokens, info.capacity_tokens, info.max_sequences) == (
        8,
        32,
        32,
        3,
    )
    with pytest.raises(ContextLengthError, match=r"64 tokens.*10 prompt tokens.*100 more") as too_long:
        engine.add_request("long", list(range(1000, 1010)), SamplingParams(max_tokens=100))
    assert too_long.value.code == "context_length_exceeded"
    with pytest.raises(NeverFitsError, match="whole cache holds 32") as never:
        engine.add_request("big", list(range(1000, 1010)), SamplingParams(max_tokens=40))
    assert never.value.code is None and "server" not in str(never.value)
    with pytest.raises(RequestError, match="outside the vocabulary"):
        engine.add_request("bad", [10**7], SamplingParams(max_tokens=1))
    with pytest.raises(RequestError, match="stop_token_ids names a token id outside"):
        engine.add_request("stop", [1000], SamplingParams(max_tokens=1, stop_token_ids=[10**7]))
    with pytest.raises(RequestError, match="empty"):
        engine.add_request("empty", [], SamplingParams(max_tokens=1))
    engine.add_request("a", [1000, 1001], SamplingParams(max_tokens=2))
    engine.add_request("b", [1000, 1001], SamplingParams(max_tokens=2))
    engine.add_request("c", [1000, 1001], SamplingParams(max_tokens=2))  # the free running slot
    with pytest.raises(QueueFullError, match="overloaded") as full:
        engine.add_request("d", [1000, 1001], SamplingParams(max_tokens=2))
    assert full.value.code == "overloaded" and "server" not in str(full.value)
    assert not isinstance(QueueFullError("x"), ValueError)  # 503, not a client error


def test_stop_string_across_tokens_and_logprobs(nemo: LoadedModel) -> None:
    prompt = chat_prompts(nemo)[0]
    free_params = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True, logprobs=3)
    engine = LLMEngine(nemo, EngineConfig(num_blocks=64))
    engine.add_request("free", prompt, free_params)
    free = run_all(engine)["free"].outputs[0]
    # Logprobs are those of the model's own distribution at each step.
    sequence = list(prompt)
    for token, entry in zip(free.token_ids, free.logprobs or [], strict=True):
        expected = torch.log_softmax(nemo.model.logits(torch.tensor(sequence))[-1], -1)
        assert entry.token_id == token
        assert entry.logprob == pytest.approx(expected[token].item(), abs=1e-4)
        assert [t for t, _ in entry.top or []] == expected.topk(3).indices.tolist()
        sequence.append(token)
    # A stop string made of the end of one token and the start of the next is found and not shown.
    pieces = [nemo.tokenizer.decode([t]) for t in free.token_ids]
    boundary = next(i for i in range(2, len(pieces)) if pieces[i - 1] and pieces[i])
    stop = pieces[boundary - 1][-1] + pieces[boundary][0]
    engine.add_request("stopped", prompt, free_params.clone(stop=[stop]))
    stopped = run_all(engine)["stopped"].outputs[0]
    assert stopped.finish_reason == "stop" and stopped.stop_reason == stop
    assert stopped.text == free.text[: free.text.find(stop)]
    assert stop not in stopped.text


def test_prompt_logprobs_and_n(nemo: LoadedModel) -> None:
    prompt = chat_prompts(nemo)[2]
    engine = LLMEngine(nemo, EngineConfig(num_blocks=128, max_num_batched_tokens=9))  # chunked
    engine.add_request("p", prompt, SamplingParams(max_tokens=2, temperature=0, prompt_logprobs=2))
    result = run_all(engine)["p"]
    expected = torch.log_softmax(nemo.model.logits(torch.tensor(prompt)), -1)
    assert result.prompt_logprobs is not None and result.prompt_logprobs[0] is None
    assert len(result.prompt_logprobs) == len(prompt)
    for t in range(1, len(prompt)):
        entry = result.prompt_logprobs[t]
        assert entry is not None and entry.token_id == prompt[t]
        assert entry.logprob == pytest.approx(expected[t - 1, prompt[t]].item(), abs=1e-4)
    params = SamplingParams(max_tokens=5, temperature=1.0, seed=9, n=3, ignore_eos=True)
    engine.add_request("n", prompt, params)
    outputs = run_all(engine)["n"].outputs
    assert [o.index for o in outputs] == [0, 1, 2]
    assert len({tuple(o.token_ids) for o in outputs}) > 1  # siblings sample differently
    assert engine.stats().prefix_cache_hits > 0  # siblings reused the prompt's blocks
    assert_all_blocks_free(engine)


def test_parse_size() -> None:
    assert parse_size("4GiB") == 4 << 30
    assert parse_size("512MB") == 512 << 20
    assert parse_size("1000") == 1000
    with pytest.raises(ValueError, match="not a size"):
        parse_size("lots")
