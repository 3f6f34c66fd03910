"""Structured output in the engine: JSON (schema / any object), a choice list, a regex, a Lark grammar,
and forced tool calls, as grammar constraints. `LLM.chat` and the server both build them here.

Built on llguidance (no dependencies; masks a 131k vocabulary in ~0.1-0.2 ms; compiles a schema in ~1-10 ms).
Each request gets a ConstraintFactory; the engine asks its constraint for a mask of allowed token ids
before sampling and tells it the token chosen. The end-of-turn ids are allowed exactly when the output
is complete (and nothing else once it cannot go on), so generation stops right after valid output.
If max_tokens runs out first, the output is simply cut (finish_reason "length") and may not parse.

JSON is laid out as json.dumps writes it (", " and ": ", no other whitespace): that is how Mistral's
chat format writes tool calls, and without free whitespace a model cannot pad forever.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import llguidance
import numpy as np
import torch

from mistral_nemo.engine.constraints import ConstraintFactory
from mistral_nemo.engine.sampling_params import StructuredOutputsParams
from mistral_nemo.tokenizer.base import Tokenizer

_JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
_CALL_ID = {"type": "string", "pattern": "^[a-zA-Z0-9]{9}$"}  # Mistral's tool-call id shape
_NO_PARAMETERS = {"type": "object", "properties": {}, "additionalProperties": False}


class GuidedDecodingError(ValueError):
    """A schema, grammar, tool list or tool_choice that cannot become a constraint (HTTP 400)."""


class _Vocab:
    """What llguidance.TokenizerWrapper reads: token bytes, EOS, and an encoder."""

    def __init__(self, tokenizer: Tokenizer, tokens: list[bytes], eos: int) -> None:
        self.tokens, self.eos_token_id, self.bos_token_id = tokens, eos, None
        self.special_token_ids = [i for i in range(len(tokens)) if tokenizer.is_special(i)]
        self._encode = tokenizer.encode

    def __call__(self, text: bytes) -> list[int]:
        return self._encode(text.decode("utf-8", errors="replace"))


class GrammarCompiler:
    """llguidance's view of one tokenizer; building it takes ~1 s at 131k tokens, so make one per model."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        n = tokenizer.vocab_size
        self.vocab_size = n
        self.eog_ids = sorted(tokenizer.eog_ids)
        # A leading 0xFF byte (never in UTF-8) marks control tokens: text can never spell them, and a
        # grammar names them by id (<[9]>).
        tokens = [
            b"\xff" + tokenizer.id_to_bytes(i) if tokenizer.is_special(i) else tokenizer.id_to_bytes(i)
            for i in range(n)
        ]
        vocab = _Vocab(tokenizer, tokens, self.eog_ids[0])
        self.ll_tokenizer = llguidance.LLTokenizer(
            llguidance.TokenizerWrapper(vocab), n_vocab=n, eos_token=self.eog_ids
        )
        self.tool_calls_id = tokenizer.tool_calls_id

    def factory(self, grammar: str) -> ConstraintFactory:
        """Check and compile a grammar once; each sequence then gets a copy of the fresh matcher."""
        template = llguidance.LLMatcher(self.ll_tokenizer, grammar, log_level=0)
        if template.is_error():
            raise GuidedDecodingError(f"unsupported schema for constrained decoding: {template.get_error()}")
        return lambda: GrammarConstraint(template.deep_copy(), self.vocab_size, self.eog_ids)


class GrammarConstraint:
    """One sequence's grammar state (a DecodingConstraint)."""

    def __init__(self, matcher: llguidance.LLMatcher, vocab_size: int, eog_ids: list[int]) -> None:
        self.matcher = matcher
        self._vocab_size = vocab_size
        self._eog = np.array(eog_ids, dtype=np.int64)
        self._eog_set = frozenset(eog_ids)
        self._words = np.zeros((vocab_size + 31) // 32, dtype=np.int32)  # one bit per token

    def allowed_tokens(self) -> torch.Tensor:
        m = self.matcher
        if m.is_error() or m.is_stopped():
            allowed = np.zeros(self._vocab_size, dtype=np.bool_)  # complete (or broken): only stop
        else:
            m.unsafe_compute_mask_ptr(self._words.ctypes.data, self._words.nbytes)
            bits = np.unpackbits(self._words.view(np.uint8), bitorder="little")[: self._vocab_size]
            allowed = bits.view(np.bool_)
            allowed[self._eog] = m.is_accepting()
        if not allowed.any():
            allowed[self._eog] = True  # never leave the sampler nothing to pick
        return torch.from_numpy(allowed)

    def accept(self, token_id: int) -> None:
        if token_id not in self._eog_set:  # an end-of-turn id ends the sequence; the grammar need not see it
            self.matcher.consume_token(token_id)


def json_constraint(compiler: GrammarCompiler, schema: dict[str, Any] | None) -> ConstraintFactory:
    """Output one JSON value valid against `schema`; None means any JSON object (json_object)."""
    if schema is None:
        schema = {"type": "object"}
    _check_schema(schema, "response_format.json_schema.schema")
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, overrides=_JSON_LAYOUT)
    except ValueError as e:
        raise GuidedDecodingError(f"invalid JSON schema: {e}") from None
    return compiler.factory(grammar)


def tool_call_constraint(
    compiler: GrammarCompiler,
    tools: list[dict[str, Any]],
    tool_choice: str | dict[str, Any],
    parallel_tool_calls: bool = True,
) -> ConstraintFactory:
    """Output `[TOOL_CALLS][{"name": ..., "arguments": {...}, "id": ...}, ...]` and stop.

    tool_choice "any" / "required": any of the tools; {"type": "function", "function": {"name": X}}:
    only X. Without parallel_tool_calls the list holds exactly one call.
    """
    if compiler.tool_calls_id is None:
        raise GuidedDecodingError("this model has no tool-call format (no [TOOL_CALLS] token) to force")
    parameters = _tool_parameters(tools)
    names = _forced_names(tool_choice, parameters)
    single = len(names) == 1
    calls = [
        {
            "type": "object",
            "properties": {
                "name": {"const": name},
                # Local $refs of the tool's schema must start from where it now sits in the list schema.
                "arguments": _rebase_refs(
                    parameters[name], ("/items" if single else f"/items/anyOf/{k}") + "/properties/arguments"
                ),
                "id": _CALL_ID,
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for k, name in enumerate(names)
    ]
    schema: dict[str, Any] = {"type": "array", "minItems": 1, "x-guidance": _JSON_LAYOUT}
    schema["items"] = calls[0] if single else {"anyOf": calls}
    if not parallel_tool_calls:
        schema["maxItems"] = 1
    return compiler.factory(f"start: <[{compiler.tool_calls_id}]> calls\ncalls: %json {json.dumps(schema)}\n")


def chat_constraint(
    compiler: GrammarCompiler,
    tools: list[dict[str, Any]] | None,
    tool_choice: str | dict[str, Any] | None,
    response_format: dict[str, Any] | None,
    parallel_tool_calls: bool = True,
) -> ConstraintFactory | None:
    """A chat request's constraint: a forced tool choice, else response_format, else none.

    A named tool_choice forces exactly one call (asking for one function by name is asking for one call).
    """
    if tools and (tool_choice in ("any", "required") or isinstance(tool_choice, dict)):
        single = isinstance(tool_choice, dict) or not parallel_tool_calls
        return tool_call_constraint(compiler, tools, tool_choice, not single)
    fmt = response_format or {}
    if fmt.get("type") == "json_object":
        return json_constraint(compiler, None)
    if fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
            raise GuidedDecodingError('response_format json_schema needs {"json_schema": {"schema": {...}}}')
        return json_constraint(compiler, spec.get("schema") or {"type": "object"})
    if fmt.get("type") not in (None, "text"):
        raise GuidedDecodingError(
            f"response_format type {fmt.get('type')!r} is not one of text, json_object, json_schema"
        )
    return None


def structured_output_constraint(
    compiler: GrammarCompiler, spec: StructuredOutputsParams
) -> ConstraintFactory:
    """The constraint for SamplingParams.structured_outputs (exactly one of its fields is set)."""
    if spec.json is not None:
        schema = json.loads(spec.json) if isinstance(spec.json, str) else spec.json
        return json_constraint(compiler, schema)
    if spec.json_object:
        return json_constraint(compiler, None)
    if spec.choice is not None:
        # Lark string literals take JSON's escapes, so each choice is matched literally.
        return compiler.factory("start: " + " | ".join(json.dumps(c) for c in spec.choice) + "\n")
    if spec.regex is not None:
        return compiler.factory(llguidance.LLMatcher.grammar_from_regex(spec.regex))
    assert spec.grammar is not None
    return compiler.factory(llguidance.LLMatcher.grammar_from_lark(spec.grammar))


def _check_schema(schema: Any, where: str) -> None:
    """Reject what is not a JSON schema with jsonschema's own message (llguidance checks the rest)."""
    if not isinstance(schema, dict):
        raise GuidedDecodingError(f"{where} must be a JSON object, got {type(schema).__name__}")
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as e:
        path = "".join(f"[{p!r}]" for p in e.absolute_path)
        raise GuidedDecodingError(f"{where}{path} is not a valid JSON schema: {e.message}") from None
    except RecursionError:
        raise GuidedDecodingError(f"{where} is nested too deeply") from None


def _tool_parameters(tools: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(tools, list) or not tools:
        raise GuidedDecodingError("forcing a tool call needs a non-empty tools list")
    parameters: dict[str, dict[str, Any]] = {}
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str) or not name:
            raise GuidedDecodingError(f"tools[{i}] needs a function with a name")
        schema = function.get("parameters") or _NO_PARAMETERS
        _check_schema(schema, f"tools[{i}].function.parameters")
        parameters.setdefault(name, schema)
    return parameters


def _forced_names(tool_choice: Any, parameters: dict[str, dict[str, Any]]) -> list[str]:
    if tool_choice in ("any", "required"):
        return list(parameters)
    function = tool_choice.get("function") if isinstance(tool_choice, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str):
        raise GuidedDecodingError(f"tool_choice {tool_choice!r} does not force a call")
    if name not in parameters:
        raise GuidedDecodingError(f"tool_choice names {name!r}, which is not among the tools")
    return [name]


def _rebase_refs(node: Any, prefix: str) -> Any:
    """A copy of `node` with every local "$ref": "#/x" turned into "#<prefix>/x"."""
    if isinstance(node, list):
        return [_rebase_refs(v, prefix) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _rebase_refs(v, prefix) for k, v in node.items()}
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#"):
        out["$ref"] = "#" + prefix + ref[1:]
    return out
