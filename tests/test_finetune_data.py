"""Training data: token ids equal to mistral_common's per-message encoding (what mistral-finetune
feeds), loss masks by mistral-finetune's rules on its README's examples, malformed lines, mixing."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from mistral_common.protocol.instruct.messages import FinetuningAssistantMessage, ToolMessage, UserMessage
from mistral_common.protocol.instruct.tool_calls import Function, FunctionCall, Tool, ToolCall
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

from mistral_nemo.finetune.data.packing import interleave, pack
from mistral_nemo.finetune.data.samples import DataError, SampleType, TokenSample, instruct_sample
from mistral_nemo.finetune.data.sources import encode_line, parse_sources, read_samples
from mistral_nemo.finetune.data.tokenize import tokenize_instruct, tokenize_pretrain
from mistral_nemo.tokenizer import SpecialTokenPolicy, load_tokenizer
from tests.gguf_fixture import smollm2_gguf_path

# mistral-finetune's README: a multi-turn conversation where the second answer has weight 0.
WEIGHTED = {
    "messages": [
        {"role": "user", "content": "User interaction n°1 contained in document n°2"},
        {"role": "assistant", "content": "Bot interaction n°1 contained in document n°2"},
        {"role": "user", "content": "User interaction n°2 contained in document n°2"},
        {"role": "assistant", "content": "Bot interaction n°2 contained in document n°2", "weight": 0},
        {"role": "user", "content": "User interaction n°3 contained in document n°2"},
        {"role": "assistant", "content": "Bot interaction n°3 contained in document n°2"},
    ]
}

_ANAGRAM_TOOL = {
    "type": "function",
    "function": {
        "name": "generate_anagram",
        "description": "Generate an anagram of a given word",
        "parameters": {
            "type": "object",
            "properties": {"word": {"type": "string", "description": "The word to generate an anagram of"}},
            "required": ["word"],
        },
    },
}


def _call(call_id: str, word: str) -> dict:
    arguments = json.dumps({"word": word})
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": "generate_anagram", "arguments": arguments},
    }


# mistral-finetune's README: function calling (tools present: only the last message is trained).
TOOLS = {
    "messages": [
        {
            "role": "system",
            "content": "You are a helpful assistant who has access to the following functions",
        },
        {"role": "user", "content": 'Can you help me generate an anagram of the word "listen"?'},
        {"role": "assistant", "tool_calls": [_call("TX92Jm8Zi", "listen")]},
        {"role": "tool", "content": '{"anagram": "silent"}', "tool_call_id": "TX92Jm8Zi"},
        {"role": "assistant", "content": 'The anagram of the word "listen" is "silent".'},
        {"role": "user", "content": 'That\'s amazing! Can you generate an anagram for the word "race"?'},
        {"role": "assistant", "tool_calls": [_call("3XhQnxLsT", "race")]},
    ],
    "tools": [_ANAGRAM_TOOL],
}


def _reference_ids(data: dict, tekken_path: Path) -> list[int]:
    """mistral_common's instruct tokenizer, one message at a time, as mistral-finetune calls it."""
    instruct = MistralTokenizer.from_file(str(tekken_path)).instruct_tokenizer
    messages = [m for m in data["messages"] if m["role"] != "system"]
    system = next((m["content"] for m in data["messages"] if m["role"] == "system"), None)
    tools = [Tool(function=Function(**t["function"])) for t in data.get("tools", [])] or None
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    ids = [instruct.tokenizer.bos_id]
    for i, m in enumerate(messages):
        if m["role"] == "user":
            ids += instruct.encode_user_message(
                UserMessage(content=m["content"]), tools, i == users[-1], i == users[0], system
            )[0]
        elif m["role"] == "tool":
            ids += instruct.encode_tool_message(
                ToolMessage(content=m["content"], tool_call_id=m["tool_call_id"]), False
            )[0]
        else:
            last = i == len(messages) - 1
            calls = [
                ToolCall(function=FunctionCall(**c["function"]), **({} if last else {"id": c["id"]}))
                for c in m.get("tool_calls", [])
            ]
            message = FinetuningAssistantMessage(content=m.get("content"), tool_calls=calls or None)
            ids += instruct.encode_assistant_message(message, False)
    return ids


def _trained_texts(sample: TokenSample, tokenizer) -> list[str]:
    """The decoded runs of trained tokens."""
    runs, current = [], []
    for token, trained in zip(sample.tokens, sample.masks, strict=True):
        if trained:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(run, SpecialTokenPolicy.KEEP) for run in runs]


def test_weighted_multi_turn_matches_mistral_common_and_skips_weight_0(tekken, tekken_path):
    sample = tokenize_instruct(instruct_sample(WEIGHTED), tekken)
    assert sample.tokens == _reference_ids(WEIGHTED, tekken_path)
    assert _trained_texts(sample, tekken) == [
        "Bot interaction n°1 contained in document n°2</s>",
        "Bot interaction n°3 contained in document n°2</s>",
    ]


def test_tool_conversation_trains_only_the_last_message_without_its_call_id(tekken, tekken_path):
    sample = tokenize_instruct(instruct_sample(TOOLS), tekken)
    assert sample.tokens == _reference_ids(TOOLS, tekken_path)
    assert _trained_texts(sample, tekken) == [
        '[TOOL_CALLS][{"name": "generate_anagram", "arguments": {"word": "race"}}]</s>'
    ]
    text = tekken.decode(sample.tokens, SpecialTokenPolicy.KEEP)
    assert '"id": "TX92Jm8Zi"' in text and "3XhQnxLsT" not in text  # earlier ids stay in the prompt
    assert text.index("[AVAILABLE_TOOLS]") > text.index("silent")  # tools just before the last [INST]


def test_tool_conversations_are_chunked_so_each_answer_is_trained_once(tekken):
    samples = encode_line(json.dumps(TOOLS), SampleType.INSTRUCT, tekken)
    trained = sorted(t for s in samples for t in _trained_texts(s, tekken))
    assert trained == sorted(
        [
            '[TOOL_CALLS][{"name": "generate_anagram", "arguments": {"word": "race"}}]</s>',
            'The anagram of the word "listen" is "silent".</s>',
            '[TOOL_CALLS][{"name": "generate_anagram", "arguments": {"word": "listen"}}]</s>',
        ]
    )


def test_pretrain_text_is_bos_text_eos_all_trained(tekken):
    sample = tokenize_pretrain("Plain text to learn.", tekken)
    assert sample.tokens == [1, *tekken.encode("Plain text to learn."), 2]
    assert all(sample.masks)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("{not json", "not valid JSON"),
        ('{"text": "x"}', "no 'messages'"),
        ('{"messages": [{"role": "user", "content": "hi"}]}', "last message must be from the assistant"),
        ('{"messages": [{"role": "user", "content": "a"}, '
         '{"role": "assistant", "content": "b", "weight": 2}]}', "'weight' must be 0 or 1"),
        ('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], '
         '"tools": [], "available_tools": []}', "both"),
        ('{"messages": [{"role": "system", "content": "a"}, {"role": "system", "content": "b"}, '
         '{"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]}', "one system message"),
        ('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "tool_calls": '
         '[{"id": "short", "function": {"name": "f", "arguments": "{}"}}]}]}', "9 characters"),
        ('{"messages": [{"role": "user", "content": "a"}, {"role": "tool", "content": "r", "tool_call_id": '
         '"abcdefghi"}, {"role": "assistant", "content": "d"}]}', "cannot follow"),
    ],
)  # fmt: skip
def test_malformed_lines_are_reported_by_file_and_line_and_skipped(tmp_path, tekken, line, reason):
    good = json.dumps(WEIGHTED)
    data = tmp_path / "data.jsonl"
    data.write_text(f"{good}\n{line}\n{good}\n")
    bad: list = []
    samples = list(read_samples(data, SampleType.INSTRUCT, tekken, bad))
    assert len(samples) == 2
    assert [(b.file, b.line) for b in bad] == [(data, 2)]
    assert reason in bad[0].reason


def test_sources_mix_by_normalised_weight(tmp_path, tekken):
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "alpha " * 40}) + "\n")
    folder = tmp_path / "more" / "deeper"
    folder.mkdir(parents=True)
    (folder / "b.jsonl").write_text(json.dumps({"text": "beta " * 40}) + "\n")
    sources = parse_sources(f"{tmp_path / 'a.jsonl'}:5.", f"{tmp_path / 'more'}:1.")
    assert [(s.sample_type, round(s.weight, 6)) for s in sources] == [
        (SampleType.PRETRAIN, round(5 / 6, 6)),
        (SampleType.INSTRUCT, round(1 / 6, 6)),
    ]
    assert sources[1].files == [folder / "b.jsonl"]
    streams = [iter(lambda k=k: k, None) for k in ("a", "b")]  # endless streams of their names
    drawn = list(itertools.islice(interleave(streams, [5 / 6, 1 / 6], np.random.RandomState(0)), 3000))
    assert 0.80 < drawn.count("a") / 3000 < 0.87
    with pytest.raises(DataError, match="strictly positive"):
        parse_sources(f"{tmp_path / 'a.jsonl'}:0", "")
    with pytest.raises(DataError, match="does not exist"):
        parse_sources(str(tmp_path / "missing.jsonl"), "")


def test_packing_splits_samples_into_blocks_and_drops_untrained_pieces():
    a = TokenSample(list(range(10, 20)), [False] * 5 + [True] * 5)
    b = TokenSample(list(range(30, 34)), [False] * 4)  # nothing to train: dropped
    c = TokenSample(list(range(40, 52)), [True] * 12)
    windows = list(pack([a, b, c], seq_len=8, pad_last=True))
    assert [w.sizes for w in windows] == [[8], [1, 7], [4, 4]]
    assert windows[0].x == list(range(10, 18)) and windows[0].y == list(range(11, 19))
    assert windows[1].x == [18, *range(40, 47)]
    assert windows[2].mask == [True] * 4 + [False] * 4  # the padding


def test_chat_template_masks_cover_exactly_the_assistant_answers():
    """SmolLM2 (ChatML template): the trained runs are each answer, its <|im_end|> and newline."""
    tokenizer = load_tokenizer(smollm2_gguf_path())
    sample = tokenize_instruct(instruct_sample(WEIGHTED), tokenizer)
    rendered = tokenizer.chat_template.render(WEIGHTED["messages"], add_generation_prompt=False)
    assert sample.tokens == tokenizer.encode(rendered)
    assert _trained_texts(sample, tokenizer) == [
        "Bot interaction n°1 contained in document n°2<|im_end|>\n",
        "Bot interaction n°3 contained in document n°2<|im_end|>\n",
    ]
