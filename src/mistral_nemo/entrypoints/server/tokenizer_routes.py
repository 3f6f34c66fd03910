"""POST /tokenize, POST /detokenize, GET /tokenizer_info: the model's tokenizer over HTTP.

Shaped for vLLM's endpoints and for lm-eval's remote tokenizer (`tokenizer_backend=remote`), which
reads `eos_token` / `bos_token` from /tokenizer_info and takes `/tokenize(eos_token)[0]` as the EOS
id. So, as a Hugging Face tokenizer does, the literal text of a control token ("<s>", "</s>",
"[INST]"...) in a prompt encodes to that control id; Tekken's own encoder never does that (text
cannot inject control tokens into a chat), so /tokenize splits the text on control texts itself.
A list of messages (`messages`, or `prompt` as a list, which lm-eval's `--apply_chat_template`
sends) goes through the same chat encoding and checks as /v1/chat/completions.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mistral_nemo.entrypoints.server.chat_prompt import build_prompt
from mistral_nemo.entrypoints.server.errors import APIError, validation_error
from mistral_nemo.entrypoints.server.protocol import ChatCompletionRequest, parse_body
from mistral_nemo.entrypoints.server.state import ServerState, get_state, is_tekken
from mistral_nemo.tokenizer import SpecialTokenPolicy, TekkenTokenizer, Tokenizer

router = APIRouter()

# The Mistral v3-Tekken chat format as a jinja template, for clients that render prompts themselves
# (lm-eval's RemoteTokenizer.apply_chat_template). Plain jinja, no transformers-only helpers: system
# messages joined by "\n\n" before the last user message, as mistral_common does. Tools are refused;
# send them to /tokenize or /v1/chat/completions, which encode them with the real encoder.
TEKKEN_CHAT_TEMPLATE = (
    "{%- set system = messages | selectattr('role', 'equalto', 'system')"
    " | map(attribute='content') | list -%}"
    # consecutive messages of one role are one turn, joined by a blank line (mistral_common's rule)
    "{%- set ns = namespace(turns=[], role=none, text='', last_user=-1) -%}"
    "{%- for m in messages | rejectattr('role', 'equalto', 'system') -%}"
    "{%- if m.role == ns.role -%}{%- set ns.text = ns.text + '\\n\\n' + m.content -%}"
    "{%- else -%}"
    "{%- if ns.role is not none -%}{%- set ns.turns = ns.turns + [(ns.role, ns.text)] -%}{%- endif -%}"
    "{%- set ns.role = m.role -%}{%- set ns.text = m.content -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if ns.role is not none -%}{%- set ns.turns = ns.turns + [(ns.role, ns.text)] -%}{%- endif -%}"
    "{%- for role, text in ns.turns -%}{%- if role == 'user' -%}{%- set ns.last_user = loop.index0 -%}"
    "{%- endif -%}{%- endfor -%}"
    "{{- '<s>' -}}"
    "{%- for role, text in ns.turns -%}"
    "{%- if role == 'user' -%}"
    "{{- '[INST]' -}}"
    "{%- if loop.index0 == ns.last_user and system -%}"
    "{{- system | join('\\n\\n') + '\\n\\n' -}}{%- endif -%}"
    "{{- text + '[/INST]' -}}"
    "{%- elif role == 'assistant' -%}"
    "{{- text -}}{%- if not (loop.last and not add_generation_prompt) -%}{{- '</s>' -}}{%- endif -%}"
    "{%- else -%}"
    "{{- raise_exception('this template renders system, user and assistant messages only; "
    "send tools and tool messages to /tokenize') -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
)


class TokenizeBody(BaseModel):
    """vLLM's /tokenize fields; `prompt` may also be a list of messages (what lm-eval sends)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    prompt: str | list[dict[str, Any]] | None = None
    messages: list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    add_special_tokens: bool = True
    return_token_strs: bool = False


class DetokenizeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    tokens: list[int] = Field(default_factory=list)


class ControlTextSplitter:
    """Text -> ids where each control token's literal text becomes its id (Tekken), BPE elsewhere."""

    def __init__(self, tokenizer: TekkenTokenizer) -> None:
        self.tokenizer = tokenizer
        texts = [tokenizer.id_to_piece(i) for i in range(tokenizer.num_special_tokens)]
        self.ids = {text: i for i, text in enumerate(texts)}
        # Longest first, so "</s>" is never read as "<s" + ... and "[/INST]" never as "[INST]".
        self.pattern = re.compile("|".join(re.escape(t) for t in sorted(self.ids, key=len, reverse=True)))

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        start = 0
        for match in self.pattern.finditer(text):
            ids += self.tokenizer.encode(text[start : match.start()])
            ids.append(self.ids[match.group()])
            start = match.end()
        return ids + self.tokenizer.encode(text[start:])


def encode_prompt_text(state: ServerState, text: str, add_special_tokens: bool) -> list[int]:
    tokenizer = state.tokenizer
    if is_tekken(tokenizer):
        splitter = state.cached("control-text-splitter", lambda: ControlTextSplitter(tokenizer))
        ids = splitter.encode(text)
    else:
        ids = tokenizer.encode(text)  # a BPE tokenizer maps added tokens' texts itself
    if add_special_tokens and tokenizer.add_bos:
        ids.insert(0, tokenizer.bos_id)
    return ids


@router.post("/tokenize")
async def tokenize(request: Request) -> dict[str, Any]:
    """{"prompt": text} (add_special_tokens adds BOS where the model wants one) or a list of messages."""
    state = get_state(request)
    body = await parse_body(request, TokenizeBody)
    state.resolve_model(body.model)
    messages = body.prompt if isinstance(body.prompt, list) else body.messages
    if (body.prompt is None) == (body.messages is None):
        raise APIError(400, "send exactly one of prompt or messages", param="prompt")
    if messages is None:
        if body.tools:
            raise APIError(400, "tools go with messages, not with a text prompt", param="tools")
        ids = encode_prompt_text(state, str(body.prompt), body.add_special_tokens)
    else:
        try:
            chat = ChatCompletionRequest.model_validate({"messages": messages, "tools": body.tools})
        except ValidationError as exc:
            raise validation_error(exc) from None
        ids = build_prompt(state.tokenizer, chat).ids  # the checks and encoding of chat completions
    result: dict[str, Any] = {"count": len(ids), "max_model_len": state.max_model_len, "tokens": ids}
    if body.return_token_strs:
        result["token_strs"] = [state.tokenizer.id_to_piece(t) for t in ids]
    return result


@router.post("/detokenize")
async def detokenize(request: Request) -> dict[str, Any]:
    """{"tokens": ids} -> {"prompt": text}; control tokens are left out, as vLLM does for Mistral models."""
    state = get_state(request)
    body = await parse_body(request, DetokenizeBody)
    state.resolve_model(body.model)
    tokenizer = state.tokenizer
    bad = next((t for t in body.tokens if not 0 <= t < tokenizer.vocab_size), None)
    if bad is not None:
        raise APIError(
            400, f"token id {bad} is outside the vocabulary (0..{tokenizer.vocab_size - 1})", param="tokens"
        )
    return {"prompt": tokenizer.decode(body.tokens, SpecialTokenPolicy.SKIP)}


@router.get("/tokenizer_info")
async def tokenizer_info(request: Request) -> dict[str, Any]:
    state = get_state(request)
    tokenizer = state.tokenizer

    def optional_id(name: str) -> int | None:
        try:
            return int(getattr(tokenizer, name))
        except Exception:  # no such attribute, or TokenizerError: the model has no such token
            return None

    def piece(token_id: int | None) -> str | None:
        return tokenizer.id_to_piece(token_id) if token_id is not None else None

    bos, eos, pad = optional_id("bos_id"), optional_id("eos_id"), optional_id("pad_id")
    info: dict[str, Any] = {
        "tokenizer_class": type(tokenizer).__name__,
        "chat_format": "mistral-v3-tekken" if is_tekken(tokenizer) else "jinja-chat-template",
        "vocab_size": tokenizer.vocab_size,
        "bos_token": piece(bos),
        "bos_token_id": bos,
        "eos_token": piece(eos),
        "eos_token_id": eos,
        "pad_token": piece(pad),
        "pad_token_id": pad,
        "eog_token_ids": sorted(tokenizer.eog_ids),
        "add_bos_token": bool(tokenizer.add_bos),
        "max_model_len": state.max_model_len,
    }
    template = _chat_template_source(tokenizer)
    if template is not None:
        info["chat_template"] = template
    return info


def _chat_template_source(tokenizer: Tokenizer) -> str | None:
    if is_tekken(tokenizer):
        return TEKKEN_CHAT_TEMPLATE
    template = getattr(tokenizer, "chat_template", None)
    return getattr(template, "source", None)
