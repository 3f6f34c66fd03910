"""The server through the official SDKs, over real HTTP on loopback.

`openai` and `mistralai` are used unchanged, pointed at the server: chat (plain, streamed,
n=2, logprobs), text completions with echo + logprobs (lm-eval's scoring), models, the
tokenizer endpoints, Mistral's random_seed / prefix / safe_prompt, and tool calls parsed from
the model's [TOOL_CALLS] output (the tokens forced by a scripted decoding constraint).
"""

from __future__ import annotations

import json
import math

import httpx
import jsonschema
import pytest
import torch
from openai import OpenAI

from mistral_nemo.entrypoints.server import chat as chat_module
from mistral_nemo.entrypoints.server.chat import Guidance
from mistral_nemo.entrypoints.server.chat_output import openai_finish_reason
from tests.server_fixture import NEMO_NAME, SMOL_NAME, RunningServer, nemo_server, smol_server

try:  # mistralai 1.x
    from mistralai import Mistral  # type: ignore[attr-defined]
except ImportError:  # mistralai 2.x and later
    from mistralai.client import Mistral

__all__ = ["nemo_server", "smol_server"]  # fixtures, imported for pytest

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


BOUNDED_CITY = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 8}},
    "required": ["city"],
    "additionalProperties": False,
}


def openai_client(server: RunningServer) -> OpenAI:
    return OpenAI(base_url=server.v1, api_key=server.api_key, max_retries=0, timeout=120)


def mistral_client(server: RunningServer) -> Mistral:
    return Mistral(api_key=server.api_key, server_url=server.base_url, timeout_ms=120_000)


# ---- openai: chat ------------------------------------------------------------------------------


def test_chat_greedy_answer_and_stream_agree(smol_server: RunningServer) -> None:
    client = openai_client(smol_server)
    answer = client.chat.completions.create(model=SMOL_NAME, messages=QUESTION, temperature=0, max_tokens=20)
    assert answer.id.startswith("chatcmpl-") and answer.object == "chat.completion"
    assert answer.model == SMOL_NAME and answer.created > 0
    choice = answer.choices[0]
    assert "Paris" in choice.message.content
    assert choice.finish_reason == "stop" and choice.message.role == "assistant"
    usage = answer.usage
    assert usage.prompt_tokens > 5 and 0 < usage.completion_tokens <= 20
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens

    chunks = list(
        client.chat.completions.create(
            model=SMOL_NAME,
            messages=QUESTION,
            temperature=0,
            max_tokens=20,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content
    finishing = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishing == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == usage.completion_tokens
    assert chunks[0].choices[0].delta.role == "assistant"


def test_chat_stop_string(smol_server: RunningServer) -> None:
    answer = openai_client(smol_server).chat.completions.create(
        model=SMOL_NAME, messages=QUESTION, temperature=0, max_tokens=20, stop="Paris", presence_penalty=0.5
    )
    assert answer.choices[0].message.content == "The capital of France is "
    assert answer.choices[0].finish_reason == "stop"


def test_chat_n2_and_max_completion_tokens(smol_server: RunningServer) -> None:
    answer = openai_client(smol_server).chat.completions.create(
        model=SMOL_NAME, messages=QUESTION, n=2, temperature=1.0, seed=3, max_completion_tokens=4
    )
    assert sorted(c.index for c in answer.choices) == [0, 1]
    assert all(c.finish_reason in ("stop", "length") for c in answer.choices)
    assert answer.usage.completion_tokens <= 8


def test_chat_logprobs(smol_server: RunningServer) -> None:
    answer = openai_client(smol_server).chat.completions.create(
        model=SMOL_NAME, messages=QUESTION, temperature=0, max_tokens=4, logprobs=True, top_logprobs=3
    )
    choice = answer.choices[0]
    entries = choice.logprobs.content
    assert len(entries) == answer.usage.completion_tokens == 4
    assert "".join(e.token for e in entries) == choice.message.content
    for entry in entries:
        assert len(entry.top_logprobs) == 3
        values = [t.logprob for t in entry.top_logprobs]
        assert values == sorted(values, reverse=True) and all(v <= 0 for v in values)
        assert entry.top_logprobs[0].token == entry.token  # greedy: the chosen token is the best one
        assert math.isclose(entry.logprob, values[0], abs_tol=1e-5)
        assert bytes(entry.bytes).decode("utf-8", errors="replace") == entry.token


def test_prefix_continues_the_answer(smol_server: RunningServer) -> None:
    prefix = "The capital of France is"
    messages = [*QUESTION, {"role": "assistant", "content": prefix, "prefix": True}]
    with smol_server.client() as http:
        body = {"model": SMOL_NAME, "messages": messages, "temperature": 0, "max_tokens": 4}
        answer = http.post("/v1/chat/completions", json=body).json()
    content = answer["choices"][0]["message"]["content"]
    assert content.startswith(prefix) and "Paris" in content[len(prefix) :]


# ---- openai: text completions ------------------------------------------------------------------


def test_completions_echo_scores_the_prompt(smol_server: RunningServer) -> None:
    client = openai_client(smol_server)
    prompt = "The capital of France is"
    scored = client.completions.create(
        model=SMOL_NAME, prompt=prompt, max_tokens=0, echo=True, logprobs=2, temperature=0
    )
    choice = scored.choices[0]
    assert choice.text == prompt and choice.finish_reason == "length"
    lp = choice.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == scored.usage.prompt_tokens
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert all(v <= 0 for v in lp.token_logprobs[1:])
    assert all(1 <= len(top) <= 2 for top in lp.top_logprobs[1:])
    assert scored.usage.completion_tokens == 0

    # The same numbers as generation: the greedy next token's logprob, scored as part of a prompt.
    ids = httpx.post(
        smol_server.base_url + "/tokenize", json={"prompt": prompt}, headers=smol_server.headers
    ).json()["tokens"]
    step = client.completions.create(model=SMOL_NAME, prompt=ids, max_tokens=1, logprobs=1, temperature=0)
    next_id = httpx.post(
        smol_server.base_url + "/tokenize",
        json={"prompt": step.choices[0].text, "add_special_tokens": False},
        headers=smol_server.headers,
    ).json()["tokens"]
    assert len(next_id) == 1
    rescored = client.completions.create(
        model=SMOL_NAME, prompt=ids + next_id, max_tokens=0, echo=True, logprobs=1, temperature=0
    )
    assert math.isclose(
        rescored.choices[0].logprobs.token_logprobs[-1],
        step.choices[0].logprobs.token_logprobs[0],
        abs_tol=1e-3,
    )


def test_completions_lm_eval_style_and_prompt_lists(smol_server: RunningServer) -> None:
    client = openai_client(smol_server)
    # lm-eval local-completions: echo + logprobs + max_tokens 1, then slices [ctxlen:-1]
    out = client.completions.create(model=SMOL_NAME, prompt="Hello", max_tokens=1, echo=True, logprobs=1)
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == out.usage.prompt_tokens + 1
    assert out.choices[0].text.startswith("Hello")
    both = client.completions.create(model=SMOL_NAME, prompt=["One", "Two"], max_tokens=2, temperature=0)
    assert [c.index for c in both.choices] == [0, 1]
    assert both.object == "text_completion" and both.usage.completion_tokens <= 4


def test_completions_echo_logprobs_share_their_context_through_the_prefix_cache(
    smol_server: RunningServer,
) -> None:
    """lm-eval's loglikelihood requests (token ids, echo, logprobs 1, max_tokens 1) for two choices of
    one question: the second takes the shared context's logprobs from the first's and its keys/values
    from the prefix cache, and returns the same numbers as when scored alone."""
    http = smol_server.client()
    context = (
        "Question: A farmer has twelve sheep, four cows and a dog that guards them at night. "
        "Every morning he counts the animals in the field before breakfast. How many legs are "
        "there in the field when all the animals are out? Answer:"
    )
    context_ids = http.post("/tokenize", json={"prompt": context}).json()["tokens"]
    assert len(context_ids) >= 48  # three full blocks of 16 tokens
    endings = [
        http.post("/tokenize", json={"prompt": e, "add_special_tokens": False}).json()["tokens"]
        for e in (" sixty-eight", " twenty")
    ]

    def score(ending: list[int], logprobs: int) -> dict:
        body = {
            "model": SMOL_NAME,
            "prompt": context_ids + ending,
            "echo": True,
            "logprobs": logprobs,
            "max_tokens": 1,
            "temperature": 0,
        }
        return http.post("/v1/completions", json=body).json()

    alone = score(endings[1], 2)  # another top-k: scored from scratch, nothing shared
    hits = smol_server.metric("mistral_nemo:prefix_cache_hits_total")
    first = score(endings[0], 1)
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    second = score(endings[1], 1)
    cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached > 0 and cached % 16 == 0
    assert smol_server.metric("mistral_nemo:prefix_cache_hits_total") - hits == cached
    n = len(context_ids) + len(endings[1])  # the prompt; the generated token comes after it
    got, want = second["choices"][0]["logprobs"], alone["choices"][0]["logprobs"]
    assert got["tokens"][:n] == want["tokens"][:n] and got["token_logprobs"][0] is None
    for mine, theirs in zip(got["token_logprobs"][1:n], want["token_logprobs"][1:n], strict=True):
        assert mine == pytest.approx(theirs, rel=1e-4, abs=1e-5)
    for mine, theirs in zip(got["top_logprobs"][1:n], want["top_logprobs"][1:n], strict=True):
        assert len(mine) == 1 and next(iter(mine)) == next(iter(theirs))  # the same greedy token


def test_completions_stream_matches_the_whole_answer(smol_server: RunningServer) -> None:
    client = openai_client(smol_server)
    kwargs = {
        "model": SMOL_NAME,
        "prompt": "The three primary colours are",
        "max_tokens": 6,
        "temperature": 0,
    }
    whole = client.completions.create(**kwargs)
    chunks = list(client.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


# ---- the other endpoints -----------------------------------------------------------------------


def test_models_and_aliases(smol_server: RunningServer, nemo_server: RunningServer) -> None:
    assert [m.id for m in openai_client(smol_server).models.list()] == [SMOL_NAME]
    nemo_ids = [m.id for m in openai_client(nemo_server).models.list()]
    assert nemo_ids == [NEMO_NAME, "open-mistral-nemo", "open-mistral-nemo-2407"]
    assert openai_client(nemo_server).models.retrieve("open-mistral-nemo").id == "open-mistral-nemo"


def test_tokenizer_endpoints_health_version(nemo_server: RunningServer) -> None:
    with nemo_server.client() as http:
        ids = http.post("/tokenize", json={"prompt": "Hello world"}).json()
        assert ids["tokens"][0] == 1 and ids["count"] == len(ids["tokens"]) and ids["max_model_len"] == 4096
        text = http.post("/detokenize", json={"tokens": ids["tokens"]}).json()["prompt"]
        assert text == "Hello world"
        chat = http.post("/tokenize", json={"messages": QUESTION}).json()["tokens"]
        assert chat[:2] == [1, 3] and chat[-1] == 4  # <s>[INST] ... [/INST]
        info = http.get("/tokenizer_info").json()
        assert info["chat_format"] == "mistral-v3-tekken" and info["eos_token_id"] == 2
    assert httpx.get(nemo_server.base_url + "/health").status_code == 200  # public: no key
    assert httpx.get(nemo_server.base_url + "/version").json()["version"]


# ---- mistralai ---------------------------------------------------------------------------------


def test_mistralai_complete_and_stream(smol_server: RunningServer) -> None:
    client = mistral_client(smol_server)
    answer = client.chat.complete(model=SMOL_NAME, messages=QUESTION, temperature=0, max_tokens=20)
    assert "Paris" in answer.choices[0].message.content and answer.choices[0].finish_reason == "stop"
    assert answer.usage.prompt_tokens > 0
    pieces = [
        event.data.choices[0].delta.content or ""
        for event in client.chat.stream(model=SMOL_NAME, messages=QUESTION, temperature=0, max_tokens=20)
        if event.data.choices
    ]
    assert "".join(pieces) == answer.choices[0].message.content


def test_mistralai_random_seed_and_alias(nemo_server: RunningServer) -> None:
    client = mistral_client(nemo_server)

    def sample(seed: int) -> str:
        answer = client.chat.complete(
            model="open-mistral-nemo-2407",
            messages=QUESTION,
            temperature=1.0,
            max_tokens=12,
            random_seed=seed,
        )
        assert answer.model == "open-mistral-nemo-2407"
        return str(answer.choices[0].message.content)

    first = sample(7)
    assert sample(7) == first
    assert sample(8) != first or sample(9) != first
    streamed = client.chat.stream(
        model="open-mistral-nemo", messages=QUESTION, temperature=1.0, max_tokens=12, random_seed=7
    )
    assert "".join(e.data.choices[0].delta.content or "" for e in streamed if e.data.choices) == first


def test_mistralai_models_list_and_retrieve(nemo_server: RunningServer) -> None:
    """La Plateforme's model cards (type, capabilities...), which the SDK requires; openai reads them too."""
    client = mistral_client(nemo_server)
    listed = client.models.list()
    names = [NEMO_NAME, "open-mistral-nemo", "open-mistral-nemo-2407"]
    assert [card.id for card in listed.data] == names
    card = client.models.retrieve(model_id="open-mistral-nemo")
    assert card.id == "open-mistral-nemo" and card.type == "base"
    assert card.capabilities.completion_chat and card.capabilities.function_calling
    assert not card.capabilities.vision and card.max_context_length == 4096
    assert set(card.aliases) == set(names) - {"open-mistral-nemo"}
    assert [m.id for m in openai_client(nemo_server).models.list()] == names


def test_mistralai_tool_calls_and_tool_results(nemo_server: RunningServer, model_calls_weather: None) -> None:
    client = mistral_client(nemo_server)
    question = [{"role": "user", "content": "Weather in Paris?"}]
    answer = client.chat.complete(model=NEMO_NAME, messages=question, tools=[WEATHER_TOOL], max_tokens=60)
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    streamed = [
        call
        for event in client.chat.stream(
            model=NEMO_NAME, messages=question, tools=[WEATHER_TOOL], max_tokens=60
        )
        if event.data.choices
        for call in event.data.choices[0].delta.tool_calls or []
    ]
    assert [c.function.name for c in streamed] == ["get_weather"]
    # The SDK's own message objects go back as the conversation, with the tool's result.
    follow_up = [
        *question,
        choice.message,
        {"role": "tool", "tool_call_id": call.id, "name": "get_weather", "content": '{"temperature": 21}'},
    ]
    final = client.chat.complete(
        model=NEMO_NAME, messages=follow_up, tools=[WEATHER_TOOL], tool_choice="none", max_tokens=3
    )
    assert final.choices[0].finish_reason in ("stop", "length") and final.usage.prompt_tokens > 0


def test_safe_prompt_is_prepended(nemo_server: RunningServer) -> None:
    client = mistral_client(nemo_server)
    plain = client.chat.complete(model=NEMO_NAME, messages=QUESTION, max_tokens=1)
    safe = client.chat.complete(model=NEMO_NAME, messages=QUESTION, max_tokens=1, safe_prompt=True)
    assert safe.usage.prompt_tokens > plain.usage.prompt_tokens + 20


# ---- tool calls --------------------------------------------------------------------------------


class _Script:
    """A decoding constraint that forces the given tokens, then end of sequence."""

    def __init__(self, ids: list[int], vocab: int) -> None:
        self.ids, self.vocab, self.pos = ids, vocab, 0

    def allowed_tokens(self) -> torch.Tensor:
        mask = torch.zeros(self.vocab, dtype=torch.bool)
        mask[self.ids[self.pos] if self.pos < len(self.ids) else self.ids[-1]] = True
        return mask

    def accept(self, token_id: int) -> None:
        self.pos += 1


@pytest.fixture
def model_calls_weather(nemo_server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The NeMo model answers with [TOOL_CALLS][{"name": "get_weather", ...}]</s>."""
    tok = nemo_server.engine.tokenizer
    calls = [{"name": "get_weather", "arguments": {"city": "Paris"}}]
    script = [tok.special_id("[TOOL_CALLS]"), *tok.encode(json.dumps(calls)), tok.eos_id]
    real = chat_module.guidance

    async def scripted(body, tokenizer, state):  # type: ignore[no-untyped-def]
        guide: Guidance = await real(body, tokenizer, state)
        guide.constraint = lambda: _Script(script, tok.vocab_size)
        return guide

    monkeypatch.setattr(chat_module, "guidance", scripted)


def test_tool_calls_in_responses(nemo_server: RunningServer, model_calls_weather: None) -> None:
    client = openai_client(nemo_server)
    weather = [{"role": "user", "content": "Weather in Paris?"}]
    answer = client.chat.completions.create(
        model=NEMO_NAME, messages=weather, tools=[WEATHER_TOOL], max_tokens=60
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls" and not choice.message.content
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert len(call.id) == 9 and call.id.isalnum()

    stream = client.chat.completions.create(
        model=NEMO_NAME, messages=weather, tools=[WEATHER_TOOL], max_tokens=60, stream=True
    )
    deltas, reasons = [], []
    for chunk in stream:
        deltas += chunk.choices[0].delta.tool_calls or []
        reasons += [chunk.choices[0].finish_reason] if chunk.choices[0].finish_reason else []
    assert reasons == ["tool_calls"] and [d.index for d in deltas] == [0]
    assert deltas[0].function.name == "get_weather" and json.loads(deltas[0].function.arguments) == {
        "city": "Paris"
    }


def test_tool_conversation_with_openai_ids(nemo_server: RunningServer) -> None:
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_abc123DEF456ghi789",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_abc123DEF456ghi789", "content": '{"temperature": 21}'},
    ]
    answer = openai_client(nemo_server).chat.completions.create(
        model=NEMO_NAME, messages=messages, tools=[WEATHER_TOOL], max_tokens=4, tool_choice="none"
    )
    assert answer.choices[0].finish_reason in ("stop", "length") and not answer.choices[0].message.tool_calls


def test_forced_tool_choice_and_json_schema_go_through_guided_decoding(nemo_server: RunningServer) -> None:
    """The wiring of guided.py (its own tests cover the grammars): a random model still answers validly."""
    client = openai_client(nemo_server)
    weather = [{"role": "user", "content": "Weather in Paris?"}]
    tool = {**WEATHER_TOOL, "function": {**WEATHER_TOOL["function"], "parameters": BOUNDED_CITY}}
    answer = client.chat.completions.create(
        model=NEMO_NAME, messages=weather, tools=[tool], tool_choice="required", max_tokens=300, seed=1
    )
    assert answer.choices[0].finish_reason == "tool_calls"
    call = answer.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and set(json.loads(call.function.arguments)) == {"city"}
    mistral = mistral_client(nemo_server).chat.complete(
        model=NEMO_NAME, messages=weather, tools=[tool], tool_choice="any", max_tokens=300, random_seed=1
    )
    assert mistral.choices[0].message.tool_calls[0].function.name == "get_weather"
    schema = {"name": "city", "schema": BOUNDED_CITY}
    answer = client.chat.completions.create(
        model=NEMO_NAME,
        messages=weather,
        response_format={"type": "json_schema", "json_schema": schema},
        max_tokens=300,
        seed=1,
    )
    document = json.loads(answer.choices[0].message.content)
    jsonschema.validate(document, BOUNDED_CITY)
    assert set(document) == {"city"}


def test_finish_reasons() -> None:
    assert openai_finish_reason("context", False, "model_length") == "model_length"
    assert openai_finish_reason("context", False) == "length"  # legacy completions
    assert openai_finish_reason("length", True, "model_length") == "length"
    assert openai_finish_reason("stop", True) == "tool_calls"
    assert openai_finish_reason("stop", False) == "stop"
    assert openai_finish_reason(None, False) is None
