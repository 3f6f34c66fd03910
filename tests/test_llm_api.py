"""The offline `LLM` API on real models: SmolLM2 (embedded GGUF) and a small random NeMo-shaped folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mistral_nemo.engine.generate import generate
from mistral_nemo.engine.llm import LLM, split_tool_calls
from mistral_nemo.engine.sampling_params import SamplingParams
from mistral_nemo.model.loading import LoadedModel
from mistral_nemo.tokenizer import MistralChatEncoder
from mistral_nemo.tokenizer.chat_messages import ToolCall
from tests.nemo_checkpoints import random_reference_model, write_mistral_folder

GREEDY = SamplingParams(max_tokens=6, temperature=0)


@pytest.fixture(scope="module")
def smollm2(smollm2_loaded: LoadedModel) -> LoadedModel:
    return smollm2_loaded  # loaded once per session (conftest)


@pytest.fixture(scope="module")
def llm(smollm2: LoadedModel) -> LLM:
    return LLM(smollm2, kv_cache_memory="32MiB")


def alone(loaded: LoadedModel, ids: list[int], params: SamplingParams = GREEDY) -> tuple[str, list[int]]:
    result = generate(loaded.model, loaded.tokenizer, ids, params)
    return result.text, result.token_ids


def test_import_is_light_and_exports_the_api() -> None:
    code = (
        "import sys, mistral_nemo\n"
        "assert 'torch' not in sys.modules\n"
        "from mistral_nemo import SamplingParams\n"
        "assert 'torch' not in sys.modules\n"
        "from mistral_nemo import LLM\n"
        "from mistral_nemo.engine.llm import LLM as L2\n"
        "assert LLM is L2 and 'LLM' in dir(mistral_nemo)\n"
        "try:\n    mistral_nemo.nothing\nexcept AttributeError:\n    print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_generate_batch_keeps_order_and_equals_single_generation(llm: LLM, smollm2: LoadedModel) -> None:
    tok = smollm2.tokenizer
    chat_ids = tok.encode_chat([{"role": "user", "content": "Name a colour."}])
    prompts: list = ["The sky is", chat_ids, "1, 2, 3, 4,", "Once upon a time there was a"]
    outputs = llm.generate(prompts, GREEDY, use_tqdm=False)
    assert len(outputs) == len(prompts)
    for prompt, out in zip(prompts, outputs, strict=True):
        ids = tok.encode(prompt, bos=tok.add_bos) if isinstance(prompt, str) else prompt
        assert out.finished and out.prompt_token_ids == ids
        assert out.prompt == (prompt if isinstance(prompt, str) else None)
        assert len(out.outputs) == 1
        assert (out.outputs[0].text, out.outputs[0].token_ids) == alone(smollm2, ids)


def test_single_prompts_give_one_result(llm: LLM, smollm2: LoadedModel) -> None:
    ids = smollm2.tokenizer.encode("Hello, my name is")
    by_text = llm.generate("Hello, my name is", GREEDY, use_tqdm=False)
    by_ids = llm.generate(ids, sampling_params=GREEDY, use_tqdm=False)  # a list of ints is one prompt
    by_dict = llm.generate({"prompt_token_ids": ids}, GREEDY, use_tqdm=False)
    assert len(by_text) == len(by_ids) == len(by_dict) == 1
    assert by_ids[0].outputs[0].token_ids == by_dict[0].outputs[0].token_ids == alone(smollm2, ids)[1]
    assert llm.generate([], GREEDY) == []


def test_n_samples_and_per_prompt_params(llm: LLM) -> None:
    sampled = SamplingParams(max_tokens=4, temperature=1.0, seed=7, n=2)
    [out] = llm.generate(["The weather today"], sampled, use_tqdm=False)
    assert [c.index for c in out.outputs] == [0, 1]
    assert all(len(c.token_ids) == 4 and c.finish_reason == "length" for c in out.outputs)
    short, longer = llm.generate(
        ["a", "b"], [SamplingParams(max_tokens=2, temperature=0), SamplingParams(max_tokens=5, temperature=0)]
    )
    assert (len(short.outputs[0].token_ids), len(longer.outputs[0].token_ids)) == (2, 5)
    with pytest.raises(ValueError, match="2 sampling params for 1 prompts"):
        llm.generate(["a"], [GREEDY, GREEDY])


def test_bad_input_is_refused_before_anything_runs(llm: LLM) -> None:
    with pytest.raises(TypeError, match="a prompt is"):
        llm.generate(["fine", [1, "x"]], GREEDY)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="maximum context length"):
        llm.generate(["fine", "too long"], [GREEDY, SamplingParams(max_tokens=10**6)])  # the first was queued
    assert not llm.engine.has_unfinished_requests()


def test_more_prompts_than_the_queue_holds(smollm2: LoadedModel) -> None:
    small = LLM(smollm2, num_blocks=16, max_queue=2, max_num_seqs=2)
    prompts = [f"Number {i} is" for i in range(5)]
    outputs = small.generate(prompts, SamplingParams(max_tokens=2, temperature=0), use_tqdm=False)
    assert [o.prompt for o in outputs] == prompts
    assert all(o.finished for o in outputs)


def test_engine_options(smollm2: LoadedModel) -> None:
    llm = LLM(smollm2, kv_cache_memory="1MiB", max_model_len=128, enable_prefix_caching=False)
    assert llm.engine.config.kv_cache_memory == 1 << 20 and llm.engine.max_model_len == 128
    assert llm.get_tokenizer() is smollm2.tokenizer
    with pytest.raises(TypeError, match="unknown engine option"):
        LLM(smollm2, kv_cache_size="1GiB")


def test_chat_one_conversation_and_a_list(llm: LLM, smollm2: LoadedModel) -> None:
    first = [{"role": "user", "content": "What is the capital of France?"}]
    second = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}]
    [single] = llm.chat(first, GREEDY, use_tqdm=False)
    both = llm.chat([first, second], GREEDY, use_tqdm=False)
    assert len(both) == 2 and both[0].outputs[0].text == single.outputs[0].text
    for conversation, out in zip([first, second], both, strict=True):
        ids = smollm2.tokenizer.encode_chat(conversation)
        assert out.prompt_token_ids == ids
        assert out.outputs[0].text == alone(smollm2, ids)[0]
        assert out.outputs[0].tool_calls is None  # no tool-call format for this tokenizer


def test_progress_goes_to_stderr_only_when_asked(llm: LLM, capsys: pytest.CaptureFixture[str]) -> None:
    llm.generate(["x"], SamplingParams(max_tokens=1), use_tqdm=False)
    assert capsys.readouterr().err == ""
    llm.generate(["x", "y"], SamplingParams(max_tokens=1), use_tqdm=True)
    captured = capsys.readouterr()
    assert "2/2" in captured.err and captured.out == ""


# ---- tool calls ----------------------------------------------------------------------------------


def tool_call_ids(tekken, text_before: str = "") -> list[int]:
    calls = [
        ToolCall(id="a1b2c3d4e", name="get_weather", arguments=json.dumps({"city": "Paris"})),
        ToolCall(id="call_42", name="get_time", arguments="{}"),  # not a Mistral id: a fresh one
    ]
    return [*tekken.encode(text_before), *MistralChatEncoder(tekken).encode_tool_calls(calls), tekken.eos_id]


def test_split_tool_calls_on_tekken(tekken) -> None:
    ids = tool_call_ids(tekken, "Let me check.")
    content, calls = split_tool_calls(tekken, ids, tekken.decode(ids))
    assert content == "Let me check."
    assert calls is not None and len(calls) == 2
    assert calls[0] == {
        "id": "a1b2c3d4e",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
    assert calls[1]["function"] == {"name": "get_time", "arguments": "{}"}
    assert len(calls[1]["id"]) == 9 and calls[1]["id"].isalnum()


def test_split_tool_calls_leaves_other_output_alone(tekken, smollm2: LoadedModel) -> None:
    plain = tekken.encode("No tools needed.")
    assert split_tool_calls(tekken, plain, "No tools needed.") == ("No tools needed.", None)
    broken = [tekken.special_id("[TOOL_CALLS]"), *tekken.encode('[{"name": ')]
    assert split_tool_calls(tekken, broken, "as generated") == ("as generated", None)
    bpe_ids = smollm2.tokenizer.encode("hello")
    assert split_tool_calls(smollm2.tokenizer, bpe_ids, "hello") == ("hello", None)


class _Script:
    """A decoding constraint that allows only the next token of a fixed script."""

    def __init__(self, script: list[int], vocab: int) -> None:
        self.script, self.vocab, self.pos = script, vocab, 0

    def allowed_tokens(self) -> torch.Tensor:
        mask = torch.zeros(self.vocab, dtype=torch.bool)
        mask[self.script[min(self.pos, len(self.script) - 1)]] = True
        return mask

    def accept(self, token_id: int) -> None:
        self.pos += 1


def test_chat_fills_tool_calls_on_a_nemo_shaped_model(tmp_path: Path) -> None:
    # Random weights say nothing; a scripted constraint makes the model "write" a tool call.
    folder = write_mistral_folder(random_reference_model(seed=5), tmp_path / "nemo")
    llm = LLM(folder, dtype="float32", device="cpu", num_blocks=32)
    tekken, vocab = llm.get_tokenizer(), llm.loaded.args.vocab_size
    script = tool_call_ids(tekken, "Sure.")
    params = SamplingParams(
        max_tokens=len(script) + 5, temperature=0, constraint=lambda: _Script(script, vocab)
    )
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    [out] = llm.chat(messages, params, tools=tools, use_tqdm=False)
    assert out.prompt_token_ids == tekken.encode_chat(messages, tools=tools)
    completion = out.outputs[0]
    assert completion.token_ids == script and completion.finish_reason == "stop"
    assert completion.text == "Sure."
    assert completion.tool_calls is not None
    assert [c["function"]["name"] for c in completion.tool_calls] == ["get_weather", "get_time"]
    assert completion.tool_calls[0]["id"] == "a1b2c3d4e"
