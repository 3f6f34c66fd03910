"""Samples -> token ids and loss masks.

Tekken (Mistral v3) models: every message is encoded on its own with the pieces of this project's
MistralChatEncoder, as mistral-finetune encodes them with mistral_common's instruct tokenizer: `<s>`,
each user turn `[INST]...[/INST]` (the tools block before the last one, the system prompt joined
into the last one), tool results `[TOOL_RESULTS]...[/TOOL_RESULTS]`, each assistant turn its text or
`[TOOL_CALLS][...]` plus `</s>`. Consecutive messages are not merged (training data is encoded as
written). The loss covers an assistant message's tokens (its `</s>` included) when its weight is not
0 and, for samples that train only their last message, when it is the last message; the last
message's tool-call ids are left out ("we don't want to predict a random call id").

Other models (a chat template, e.g. the embedded SmolLM2): the conversation is rendered message by
message; the text a message adds is the rendering of messages[:i+1] minus the rendering of
messages[:i] with the generation prompt (for an assistant message) or without it (others). Each piece
is tokenized on its own, so an assistant message's tokens are exactly what the template writes for
it after the generation prompt (for ChatML: the content, `<|im_end|>` and the newline). A template
whose renderings are not prefixes of each other cannot be split this way and is refused.
"""

from __future__ import annotations

import json
from typing import Any

from mistral_nemo.finetune.data.samples import DataError, InstructSample, TokenSample
from mistral_nemo.tokenizer import MistralChatEncoder, TekkenTokenizer, Tokenizer
from mistral_nemo.tokenizer.chat_messages import Message, ToolCall
from mistral_nemo.tokenizer.errors import ChatFormatError, TokenizerError


def tokenize_pretrain(text: str, tokenizer: Tokenizer) -> TokenSample:
    """`<s>` text `</s>`, every token trained (BOS / EOS only where the tokenizer has them)."""
    ids = tokenizer.encode(text)
    for attr, at_end in (("bos_id", False), ("eos_id", True)):
        try:
            special = getattr(tokenizer, attr)
        except TokenizerError:
            continue
        ids = [*ids, special] if at_end else [special, *ids]
    return TokenSample(ids, [True] * len(ids))


def tokenize_instruct(sample: InstructSample, tokenizer: Tokenizer) -> TokenSample:
    if isinstance(tokenizer, TekkenTokenizer):
        return _tokenize_tekken(sample, MistralChatEncoder(tokenizer))
    return _tokenize_with_template(sample, tokenizer)


def _trained(sample: InstructSample, index: int) -> bool:
    is_last = index == len(sample.messages) - 1
    return sample.weights[index] != 0 and (is_last or not sample.only_last)


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return text


def _text(message: Message) -> str:
    content = message.content
    parts = [content] if isinstance(content, str) else [t for t in content or [] if t]
    return "\n\n".join(parts)


def _tokenize_tekken(sample: InstructSample, encoder: MistralChatEncoder) -> TokenSample:
    tok = encoder.tokenizer
    users = [i for i, m in enumerate(sample.messages) if m.role == "user"]
    last_user = users[-1] if users else -1
    tokens, masks = [encoder.bos], [False]
    for i, message in enumerate(sample.messages):
        if message.role == "user":
            piece: list[int] = []
            text = _text(message)
            if i == last_user and sample.tools:
                tools_json = json.dumps([t.to_prompt_dict() for t in sample.tools], ensure_ascii=False)
                piece += [encoder.tools_start, *tok.encode(tools_json), encoder.tools_end]
            if i == last_user and sample.system_prompt:
                text = sample.system_prompt + "\n\n" + text
            piece += [encoder.inst, *tok.encode(text), encoder.end_inst]
        elif message.role == "tool":
            result = {"content": _json_or_text(_text(message)), "call_id": message.tool_call_id}
            piece = [
                encoder.results_start,
                *tok.encode(json.dumps(result, ensure_ascii=False)),
                encoder.results_end,
            ]
        else:
            piece = _assistant_tokens(message, encoder, is_last=i == len(sample.messages) - 1)
        tokens += piece
        masks += [message.role == "assistant" and _trained(sample, i)] * len(piece)
    return TokenSample(tokens, masks)


def _assistant_tokens(message: Message, encoder: MistralChatEncoder, is_last: bool) -> list[int]:
    if message.tool_calls:
        calls = [ToolCall("" if is_last else c.id, c.name, c.arguments) for c in message.tool_calls]
        ids = encoder.encode_tool_calls(calls)
    else:
        ids = encoder.tokenizer.encode(_text(message).rstrip(" "))
    return [*ids, encoder.eos]


def _as_dict(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role, "content": _text(message)}
    if message.tool_calls:
        out["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": _json_or_text(c.arguments)},
            }
            for c in message.tool_calls
        ]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    return out


def _tokenize_with_template(sample: InstructSample, tokenizer: Tokenizer) -> TokenSample:
    if getattr(tokenizer, "chat_template", None) is None:
        raise DataError("this model's tokenizer has no chat template, so instruct data cannot be encoded")
    chat = ([{"role": "system", "content": sample.system_prompt}] if sample.system_prompt else []) + [
        _as_dict(m) for m in sample.messages
    ]
    offset = len(chat) - len(sample.messages)
    tools = sample.raw_tools

    def render(end: int, generation_prompt: bool) -> str:
        if end == 0:
            return ""
        try:
            return tokenizer.chat_template.render(chat[:end], tools, add_generation_prompt=generation_prompt)
        except ChatFormatError as exc:
            raise DataError(f"the chat template refused the conversation: {exc}") from None

    tokens: list[int] = []
    masks: list[bool] = []
    done = ""
    for end in range(1, len(chat) + 1):
        index = end - 1 - offset  # index in sample.messages (negative: the system message)
        is_assistant = index >= 0 and sample.messages[index].role == "assistant"
        before = render(end - 1, generation_prompt=True) if is_assistant else done
        after = render(end, generation_prompt=False)
        if not before.startswith(done) or not after.startswith(before):
            raise DataError(
                "the model's chat template does not render a conversation as a prefix of its longer "
                "continuations, so the assistant tokens cannot be located"
            )
        prompt_ids = tokenizer.encode(before[len(done) :]) if len(before) > len(done) else []
        answer_ids = tokenizer.encode(after[len(before) :]) if len(after) > len(before) else []
        tokens += prompt_ids + answer_ids
        masks += [False] * len(prompt_ids) + [is_assistant and _trained(sample, index)] * len(answer_ids)
        done = after
    return TokenSample(tokens, masks)
