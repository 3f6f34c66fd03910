"""`LLM`: the offline batch API (vLLM's shape) over LLMEngine: all prompts in at once, results in order.

>>> from mistral_nemo import LLM, SamplingParams
>>> llm = LLM()  # the embedded model; or a Mistral / HF folder or a GGUF file
>>> outs = llm.generate(["Hello", "The sky is"], SamplingParams(max_tokens=32, temperature=0))
>>> outs[1].outputs[0].text
>>> llm.chat([{"role": "user", "content": "Hi!"}])  # one conversation, or a list of them
"""

from __future__ import annotations

import dataclasses
import itertools
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from mistral_nemo.engine.config import EngineConfig, parse_size
from mistral_nemo.engine.errors import QueueFullError
from mistral_nemo.engine.llm_engine import LLMEngine
from mistral_nemo.engine.lora_request import LoRARequest
from mistral_nemo.engine.outputs import RequestOutput
from mistral_nemo.engine.sampling_params import SamplingParams
from mistral_nemo.model.loading import LoadedModel, load
from mistral_nemo.tokenizer.base import Tokenizer
from mistral_nemo.tokenizer.tool_parser import parse_tool_calls

# text, token ids, or a dict {"prompt": text} / {"prompt_token_ids": ids} (vLLM's TextPrompt / TokensPrompt)
Prompt = str | Sequence[int] | Mapping[str, Any]
Message = Mapping[str, Any]
# request id, prompt, params, adapter: not yet in the engine
_Pending = tuple[str, Prompt, SamplingParams, LoRARequest | None]
LoRAArg = LoRARequest | Sequence[LoRARequest | None] | None  # one for all prompts, or one per prompt

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_CONFIG_FIELDS = {f.name for f in dataclasses.fields(EngineConfig)}


def engine_config(**options: Any) -> EngineConfig:
    """EngineConfig from keyword options; sizes may be strings ("1GiB"), unknown names are refused."""
    unknown = sorted(set(options) - _CONFIG_FIELDS)
    if unknown:
        raise TypeError(f"unknown engine option(s) {unknown}; known: {sorted(_CONFIG_FIELDS)}")
    if isinstance(options.get("kv_cache_memory"), str):
        options["kv_cache_memory"] = parse_size(options["kv_cache_memory"])
    return EngineConfig(**{k: v for k, v in options.items() if v is not None})


def split_tool_calls(
    tokenizer: Tokenizer, token_ids: Sequence[int], text: str
) -> tuple[str, list[dict] | None]:
    """(content, tool calls) of a generation: the calls as OpenAI dicts, or None when there are none.

    Only tokenizers with a [TOOL_CALLS] control token (Tekken) have a tool-call format; for others,
    and for output without a well-formed call list, the text comes back unchanged with None.
    """
    marker = tokenizer.tool_calls_id
    if marker is None or marker not in token_ids:
        return text, None
    parsed = parse_tool_calls(tokenizer, token_ids)
    if parsed.malformed or not parsed.tool_calls:
        return text, None
    calls = [
        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
        for c in parsed.tool_calls
    ]
    return parsed.content, calls


class LLM:
    """A model and a batching engine; `generate` / `chat` run many prompts together and return in order."""

    def __init__(
        self,
        model: str | Path | LoadedModel | None = None,
        *,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
        quantization: str | None = "auto",
        lora: str | Path | None = None,
        tensor_parallel_size: int = 1,
        **engine_options: Any,
    ) -> None:
        config = engine_config(**engine_options)
        self._tensor_parallel = None
        if tensor_parallel_size != 1:
            self._start_tensor_parallel(
                model, tensor_parallel_size, dtype, device, quantization, lora, config
            )
            return
        if isinstance(model, LoadedModel):
            self.loaded = model
            if lora is not None:  # an adapter on an already loaded model: applied to it in place
                from mistral_nemo.model.lora import apply_adapter
                from mistral_nemo.model.lora_files import read_adapter

                adapter, scaling = read_adapter(lora, model.args)
                apply_adapter(model.model, adapter, scaling)
        else:
            if isinstance(dtype, str) and dtype != "auto":
                if dtype not in _DTYPES:
                    raise ValueError(f"dtype must be one of {sorted(_DTYPES)} or 'auto', got {dtype!r}")
                dtype = _DTYPES[dtype]
            self.loaded = load(
                model,
                dtype=dtype if isinstance(dtype, torch.dtype) else None,
                device=device,
                quantization=quantization,
                lora=lora,
            )
        self.engine = LLMEngine(self.loaded, config)
        self._ids = itertools.count()

    def _start_tensor_parallel(
        self,
        model: str | Path | LoadedModel | None,
        size: int,
        dtype: torch.dtype | str | None,
        device: torch.device | str | None,
        quantization: str | None,
        lora: str | Path | None,
        config: EngineConfig,
    ) -> None:
        """Rank 0 here, ranks 1..size-1 spawned (or torchrun's); under torchrun a rank other than 0
        serves steps inside this call and then exits the process, as its work is done."""
        from mistral_nemo.engine.distributed_launch import TensorParallelGroup

        if isinstance(model, LoadedModel):
            raise ValueError("tensor_parallel_size needs a model path (each rank loads its own part)")
        if lora is not None:
            raise ValueError("a LoRA adapter cannot be loaded tensor-parallel yet; merge it first")
        if isinstance(dtype, str) and dtype != "auto":
            if dtype not in _DTYPES:
                raise ValueError(f"dtype must be one of {sorted(_DTYPES)} or 'auto', got {dtype!r}")
            dtype = _DTYPES[dtype]
        group = TensorParallelGroup.start(
            size,
            None if device is None else str(device),
            path=model,
            dtype=dtype if isinstance(dtype, torch.dtype) else None,
            quantization=quantization,
        )
        if group.rank != 0:
            group.run_worker()
            sys.exit(0)
        self._tensor_parallel = group
        self.loaded = group.load()
        self.engine = LLMEngine(self.loaded, config)
        group.attach(self.engine)
        self._ids = itertools.count()

    def close(self) -> None:
        """Stop the other tensor-parallel ranks (nothing to do for one process)."""
        if self._tensor_parallel is not None:
            self._tensor_parallel.close()
            self._tensor_parallel = None

    def get_tokenizer(self) -> Tokenizer:
        return self.loaded.tokenizer

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
        *,
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        lora_request: LoRAArg = None,
    ) -> list[RequestOutput]:
        """One finished RequestOutput per prompt, in input order. A list of ints is one prompt of ids.

        `lora_request` (needs LLM(..., enable_lora=True)): the adapter of every prompt, or a list with one
        per prompt (None: the base model); prompts on different adapters run in the same batches.
        """
        return self._run(_as_prompt_list(prompts), params or sampling_params, use_tqdm, lora_request)

    def chat(
        self,
        messages: Sequence[Message] | Sequence[Sequence[Message]],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        use_tqdm: bool = True,
        *,
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        tool_choice: str | Mapping[str, Any] = "auto",
        response_format: Mapping[str, Any] | None = None,
        parallel_tool_calls: bool = True,
        lora_request: LoRAArg = None,
    ) -> list[RequestOutput]:
        """One conversation (a list of message dicts) or a list of them, in the model's chat format.

        Tool calls the model makes are parsed into `outputs[k].tool_calls` (OpenAI dicts), and
        `outputs[k].text` is then the content around them. `tool_choice` "auto" lets the model choose,
        "none" forbids calls, "any" / "required" force at least one call and
        `{"type": "function", "function": {"name": X}}` exactly one call of X; `response_format`
        `{"type": "json_object"}` or `{"type": "json_schema", "json_schema": {"schema": {...}}}`
        constrains the answer to JSON (the server runs the same code).
        """
        single = len(messages) == 0 or isinstance(messages[0], Mapping)
        conversations = [messages] if single else messages
        tokenizer = self.loaded.tokenizer
        tool_list = [dict(t) for t in tools] if tools else None
        prompts: list[Prompt] = [
            tokenizer.encode_chat(list(c), tools=tool_list)  # type: ignore[arg-type]
            for c in conversations
        ]
        params = self._chat_params(params or sampling_params, tool_list, tool_choice, response_format,
                                   parallel_tool_calls)  # fmt: skip
        results = self._run(prompts, params, use_tqdm, lora_request)
        for result in results:
            for out in result.outputs:
                out.text, out.tool_calls = split_tool_calls(tokenizer, out.token_ids, out.text)
        return results

    def _chat_params(
        self,
        params: SamplingParams | Sequence[SamplingParams] | None,
        tools: list[dict[str, Any]] | None,
        tool_choice: str | Mapping[str, Any],
        response_format: Mapping[str, Any] | None,
        parallel_tool_calls: bool,
    ) -> SamplingParams | Sequence[SamplingParams] | None:
        """The params with the constraint that tool_choice / response_format ask for, compiled once."""
        if tool_choice not in ("auto", "none", "any", "required") and not isinstance(tool_choice, Mapping):
            raise ValueError(
                f"tool_choice must be auto, none, any, required or a named function, got {tool_choice!r}"
            )
        if (isinstance(tool_choice, Mapping) or tool_choice in ("any", "required")) and not tools:
            raise ValueError(f"tool_choice {tool_choice!r} needs tools")
        changes: dict[str, Any] = {}
        if tool_choice == "none" and tools:
            tool_calls_id = self.loaded.tokenizer.tool_calls_id
            if tool_calls_id is not None:  # the model may see the tools but not call them
                changes["logit_bias"] = {tool_calls_id: -100.0}
        else:
            from mistral_nemo.engine.structured_output import chat_constraint  # llguidance, on demand

            choice = dict(tool_choice) if isinstance(tool_choice, Mapping) else tool_choice
            fmt = dict(response_format) if response_format is not None else None
            factory = chat_constraint(self.engine.grammar_compiler(), tools, choice, fmt, parallel_tool_calls)
            if factory is not None:
                changes["constraint"] = factory
        if not changes:
            return params
        if params is None or isinstance(params, SamplingParams):
            return _with_changes(params or SamplingParams(), changes)
        return [_with_changes(p, changes) for p in params]

    # ---- internals -----------------------------------------------------------------------------

    def _run(
        self,
        prompts: list[Prompt],
        params: SamplingParams | Sequence[SamplingParams] | None,
        use_tqdm: bool,
        lora_request: LoRAArg = None,
    ) -> list[RequestOutput]:
        if params is None:  # the model's own sampling settings (generation_config.json, NeMo's 0.3, ...)
            params = SamplingParams(**self.loaded.generation_defaults.sampling_fields())
        if isinstance(params, SamplingParams):
            per_prompt = [params] * len(prompts)
        else:
            per_prompt = list(params)
            if len(per_prompt) != len(prompts):
                raise ValueError(f"{len(per_prompt)} sampling params for {len(prompts)} prompts")
        if lora_request is None or isinstance(lora_request, LoRARequest):
            loras = [lora_request] * len(prompts)
        else:
            loras = list(lora_request)
            if len(loras) != len(prompts):
                raise ValueError(f"{len(loras)} lora requests for {len(prompts)} prompts")
        ids = [f"llm-{next(self._ids)}" for _ in prompts]
        pending: list[_Pending] = list(zip(ids, prompts, per_prompt, loras, strict=True))
        for _, prompt, _, _ in pending:  # refuse bad input before anything runs
            _check_prompt(prompt)
        results: dict[str, RequestOutput] = {}
        mine = set(ids)
        progress = _Progress(len(prompts), use_tqdm)
        try:
            while pending or self.engine.has_unfinished_requests():
                pending = self._submit(pending)
                for output in self.engine.step():
                    if output.finished and output.request_id in mine:
                        results[output.request_id] = output
                        progress.update(sum(len(c.token_ids) for c in output.outputs))
        except BaseException:
            for request_id in ids:
                self.engine.abort_request(request_id)
            raise
        finally:
            progress.close()
        return [results[i] for i in ids]

    def _submit(self, pending: list[_Pending]) -> list[_Pending]:
        """Queue as many requests as the engine takes now; return the rest."""
        for k, (request_id, prompt, params, lora) in enumerate(pending):
            if isinstance(prompt, Mapping):
                text = prompt.get("prompt")
                prompt = prompt.get("prompt_token_ids", text)
            else:
                text = prompt if isinstance(prompt, str) else None
            try:
                self.engine.add_request(
                    request_id,
                    prompt,
                    params,
                    prompt_text=text,
                    lora_request=lora,  # type: ignore[arg-type]
                )
            except QueueFullError:
                if not self.engine.has_unfinished_requests():
                    raise
                return pending[k:]
        return []


def _with_changes(params: SamplingParams, changes: dict[str, Any]) -> SamplingParams:
    bias = {**(params.logit_bias or {}), **changes.get("logit_bias", {})}
    return params.clone(**{**changes, "logit_bias": bias or None})


def _as_prompt_list(prompts: Prompt | Sequence[Prompt]) -> list[Prompt]:
    if isinstance(prompts, str | Mapping):
        return [prompts]
    prompts = list(prompts)
    if prompts and all(isinstance(p, int) for p in prompts):
        return [prompts]  # one prompt of token ids
    return prompts


def _check_prompt(prompt: Prompt) -> None:
    if isinstance(prompt, Mapping):
        if "prompt_token_ids" not in prompt and "prompt" not in prompt:
            raise ValueError("a prompt dict needs 'prompt' or 'prompt_token_ids'")
    elif not isinstance(prompt, str) and not all(isinstance(t, int) for t in prompt):
        raise TypeError(f"a prompt is a string or a list of token ids, got {prompt!r:.80}")


class _Progress:
    """tqdm when installed, else a one-line counter on stderr; nothing when disabled."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.done, self.tokens, self.enabled = total, 0, 0, enabled and total > 0
        self._bar: Any = None
        self._started = time.perf_counter()
        if self.enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                return
            self._bar = tqdm(total=total, desc="Processed prompts", unit="prompt", dynamic_ncols=True)

    def update(self, new_tokens: int) -> None:
        self.done += 1
        self.tokens += new_tokens
        if self._bar is not None:
            speed = self.tokens / max(time.perf_counter() - self._started, 1e-9)
            self._bar.set_postfix_str(f"output {speed:.1f} tok/s", refresh=False)
            self._bar.update(1)
        elif self.enabled:
            print(f"\rProcessed prompts: {self.done}/{self.total}", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.enabled:
            print(file=sys.stderr)
