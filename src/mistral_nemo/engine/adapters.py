"""Which adapters sit in the model's slots, who uses them, and the prefix-cache salt of each.

The engine asks `acquire` for every request that names a LoRARequest: an adapter already loaded is
shared (counted per request), a new one takes a free slot or evicts the least recently used adapter
that no unfinished request uses. Each load gets a fresh cache salt: the prefix cache keys blocks on
it, so blocks computed under adapter A are never served to the base model or to adapter B (nor to
another adapter loaded later into A's slot).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass

from mistral_nemo.engine.errors import RequestError
from mistral_nemo.engine.lora_request import LoRARequest
from mistral_nemo.model.args import ModelArgs
from mistral_nemo.model.lora_files import read_adapter
from mistral_nemo.model.multi_lora import AdapterSlots

_salts = itertools.count(1)


@dataclass
class LoadedAdapter:
    request: LoRARequest
    slot: int  # 1..max_loras in the model's AdapterSlots
    cache_salt: int  # the prefix cache's seed for blocks computed under this adapter
    users: int = 0  # unfinished requests running with it


class AdapterRegistry:
    def __init__(self, slots: AdapterSlots, args: ModelArgs) -> None:
        self.slots = slots
        self.args = args
        self._loaded: OrderedDict[int, LoadedAdapter] = OrderedDict()  # lora_int_id -> adapter, LRU first

    def add(self, lora: LoRARequest) -> LoadedAdapter:
        """Load an adapter (if not yet loaded) without a user; raises LoraError naming a bad file."""
        loaded = self._loaded.get(lora.lora_int_id)
        if loaded is not None:
            if loaded.request.path != lora.path or loaded.request.lora_name != lora.lora_name:
                raise RequestError(
                    f"lora_int_id {lora.lora_int_id} is already the adapter {loaded.request.lora_name!r} "
                    f"({loaded.request.path}); give {lora.lora_name!r} its own id"
                )
            self._loaded.move_to_end(lora.lora_int_id)
            return loaded
        tensors, scaling = read_adapter(lora.path, self.args)
        slot = self._free_slot()
        self.slots.load(slot, tensors, scaling)
        loaded = LoadedAdapter(lora, slot, hash(("lora", lora.lora_int_id, next(_salts))))
        self._loaded[lora.lora_int_id] = loaded
        return loaded

    def acquire(self, lora: LoRARequest) -> LoadedAdapter:
        """The loaded adapter for one more request (loaded now if needed)."""
        loaded = self.add(lora)
        loaded.users += 1
        return loaded

    def release(self, lora_int_id: int) -> None:
        loaded = self._loaded.get(lora_int_id)
        if loaded is not None and loaded.users > 0:
            loaded.users -= 1

    def remove(self, lora_int_id: int) -> bool:
        """Unload an adapter nobody uses; False if it is unknown or in use."""
        loaded = self._loaded.get(lora_int_id)
        if loaded is None or loaded.users:
            return False
        self.slots.unload(loaded.slot)
        del self._loaded[lora_int_id]
        return True

    def list(self) -> list[LoRARequest]:
        return [loaded.request for loaded in self._loaded.values()]

    def _free_slot(self) -> int:
        used = {loaded.slot for loaded in self._loaded.values()}
        free = next((s for s in range(1, self.slots.max_loras + 1) if s not in used), None)
        if free is not None:
            return free
        idle = next((i for i, loaded in self._loaded.items() if loaded.users == 0), None)
        if idle is None:
            raise RequestError(
                f"all {self.slots.max_loras} adapter slots are in use by unfinished requests; "
                "retry later or raise max_loras"
            )
        slot = self._loaded[idle].slot
        self.remove(idle)
        return slot
