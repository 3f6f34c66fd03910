"""LLMEngine: requests in (text or ids), one batched step at a time, `RequestOutput`s out.

The public composition of the engine core (core.py: ids, scheduling, the model, sampling) and the
output processor (output_processor.py: text, stop strings, outputs). `LLM`, `AsyncLLMEngine`, the
server and the CLI use only this.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mistral_nemo.engine.block_manager import BlockManager
from mistral_nemo.engine.config import EngineConfig
from mistral_nemo.engine.core import EngineCore, EngineStats
from mistral_nemo.engine.info import EngineInfo
from mistral_nemo.engine.lora_request import LoRARequest
from mistral_nemo.engine.model_runner import ModelRunner
from mistral_nemo.engine.output_processor import OutputProcessor
from mistral_nemo.engine.outputs import RequestOutput
from mistral_nemo.engine.paged_cache import PagedKVCache
from mistral_nemo.engine.sampling_params import SamplingParams
from mistral_nemo.engine.scheduler import Scheduler
from mistral_nemo.engine.sequence import FinishReason
from mistral_nemo.engine.speculative.decoder import SpeculativeDecoder
from mistral_nemo.model.loading import LoadedModel
from mistral_nemo.tokenizer import Tokenizer

if TYPE_CHECKING:
    from mistral_nemo.engine.structured_output import GrammarCompiler

__all__ = ["EngineInfo", "EngineStats", "LLMEngine"]


class LLMEngine:
    def __init__(self, loaded: LoadedModel, config: EngineConfig | None = None) -> None:
        self.core = EngineCore(loaded, config)
        self.tokenizer: Tokenizer = loaded.tokenizer
        self.processor = OutputProcessor(self.tokenizer)

    # ---- what it runs --------------------------------------------------------------------------

    @property
    def info(self) -> EngineInfo:
        """The served model, its context, the KV capacity and the engine's limits."""
        return self.core.info

    @property
    def config(self) -> EngineConfig:
        return self.core.config

    @property
    def loaded(self) -> LoadedModel:
        return self.core.loaded

    @property
    def max_model_len(self) -> int:
        return self.core.max_model_len

    @property
    def capacity_tokens(self) -> int:
        """The most tokens one sequence can ever hold: the context, or the whole KV pool if smaller."""
        return self.core.capacity_tokens

    @property
    def scheduler(self) -> Scheduler:
        return self.core.scheduler

    @property
    def blocks(self) -> BlockManager:
        return self.core.blocks

    @property
    def cache(self) -> PagedKVCache:
        return self.core.cache

    @property
    def runner(self) -> ModelRunner:
        return self.core.runner

    @property
    def speculator(self) -> SpeculativeDecoder | None:
        return self.core.speculator

    def grammar_compiler(self) -> GrammarCompiler:
        """The tokenizer's grammar view for structured output, built on first use (~1 s at 131k tokens)."""
        return self.core.grammar_compiler()

    # ---- requests ------------------------------------------------------------------------------

    def add_request(
        self,
        request_id: str,
        prompt: str | list[int],
        params: SamplingParams,
        prompt_text: str | None = None,
        lora_request: LoRARequest | None = None,
    ) -> None:
        """Queue a request. Raises RequestError / ContextLengthError / NeverFitsError / QueueFullError."""
        self.core.check_request_id(request_id)
        if isinstance(prompt, str):
            prompt_text, prompt_ids = prompt, self.tokenizer.encode(prompt, bos=self.tokenizer.add_bos)
        else:
            prompt_ids = [int(t) for t in prompt]
        self.core.add_request(request_id, prompt_ids, params, lora_request)
        self.processor.add_request(request_id, prompt_ids, params, prompt_text)

    def abort_request(self, request_id: str) -> bool:
        """Stop a request at once and free all its blocks; False if it is unknown or already done."""
        self.core.abort_request(request_id)
        return self.processor.abort_request(request_id)

    def has_unfinished_requests(self) -> bool:
        return self.processor.has_unfinished_requests()

    # ---- LoRA adapters (enable_lora=True; vLLM's names) ----------------------------------------

    def add_lora(self, lora_request: LoRARequest) -> bool:
        """Load an adapter ahead of its requests (raises LoraError naming a bad file)."""
        return self.core.add_lora(lora_request)

    def remove_lora(self, lora_int_id: int) -> bool:
        """Unload an adapter no unfinished request uses; False if unknown or in use."""
        return self.core.remove_lora(lora_int_id)

    def list_loras(self) -> set[int]:
        return self.core.list_loras()

    def lora_requests(self) -> list[LoRARequest]:
        """The adapters loaded now, least recently used first (the server lists them as models)."""
        return self.core.lora_requests()

    def request_ids(self) -> list[str]:
        return self.processor.request_ids()

    # ---- stepping ------------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """Run one batched forward pass; return the outputs of every request that moved."""
        processed = self.processor.process_outputs(self.core.step())
        for request_id, index in processed.seqs_to_finish:  # stop strings, seen only in the text
            self.core.finish_seq(request_id, index, FinishReason.STOP)
        return processed.request_outputs

    def stats(self) -> EngineStats:
        return self.core.stats()
