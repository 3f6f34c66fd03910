"""Several LoRA adapters served at once, chosen per token (vLLM's multi-LoRA, grouped by adapter).

A model wrapped by `AdapterSlots` keeps its base weights unmerged and holds up to `max_loras` adapters
in numbered slots (1..max_loras; slot 0 is the base model). Before each forward the caller says which
slot every token uses (`set_token_slots`); each target linear then computes W x for all tokens and adds
scaling_k * B_k (A_k x) on the rows of adapter k only. So requests for different adapters and for the
base share one batch, adapters may differ in rank and in which layers they cover, and base tokens get
exactly the base model's result (no delta is added to them).

The per-step grouping (which rows belong to which slot) is computed once and read by every layer,
so a layer costs one base matmul plus two small matmuls per adapter present in the step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from mistral_nemo.model.lora import LoraError, adapter_pairs, target_linears
from mistral_nemo.model.transformer import Transformer

# (slot, rows of the step's tokens that use it; None = every token)
TokenGroups = list[tuple[int, torch.Tensor | None]]


class MultiLoRALinear(nn.Module):
    """A frozen linear plus, per slot, an optional low-rank update applied to that slot's tokens."""

    def __init__(self, base: nn.Module, slots: AdapterSlots) -> None:
        super().__init__()
        self.base = base
        self.in_features, self.out_features = base.in_features, base.out_features
        self._slots = [slots]  # a list, so that nn.Module does not register the owner as a child
        # slot -> (A [r, in], B [out, r], scaling); a slot without an entry leaves this layer unchanged
        self.adapters: dict[int, tuple[torch.Tensor, torch.Tensor, float]] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        groups = self._slots[0].groups
        if not groups or not self.adapters:
            return y
        flat_x = x.reshape(-1, self.in_features)
        flat_y = y.reshape(-1, self.out_features)
        for slot, rows in groups:
            adapter = self.adapters.get(slot)
            if adapter is None:
                continue
            a, b, scaling = adapter
            xs = flat_x if rows is None else flat_x.index_select(0, rows)
            delta = ((xs.to(a.dtype) @ a.t()) @ b.t()).mul_(scaling).to(y.dtype)
            flat_y = flat_y + delta if rows is None else flat_y.index_add(0, rows, delta)
        return flat_y.reshape(y.shape)

    def extra_repr(self) -> str:
        return f"adapters in slots {sorted(self.adapters)}"


class AdapterSlots:
    """The adapters a model holds at once and, for the current forward, which slot each token uses."""

    def __init__(self, model: Transformer, max_loras: int) -> None:
        if max_loras < 1:
            raise LoraError(f"max_loras must be at least 1, got {max_loras}")
        self.model = model
        self.max_loras = max_loras
        self.groups: TokenGroups | None = None
        self.layers: dict[str, MultiLoRALinear] = {}
        for prefix, parent, name in target_linears(model):
            base = getattr(parent, name)
            if isinstance(base, MultiLoRALinear):
                raise LoraError("the model already serves several adapters")
            layer = MultiLoRALinear(base, self)
            setattr(parent, name, layer)
            self.layers[prefix] = layer
        model.fused_decoder = None  # the fused decode path reads the base layers directly, without LoRA
        self._device = model.device
        self._dtype = model.dtype

    def load(self, slot: int, tensors: Mapping[str, torch.Tensor], scaling: float) -> None:
        """Put an adapter (mistral-finetune names and layout, checked against the model) into a slot."""
        self._check_slot(slot)
        pairs = adapter_pairs(self.model, tensors)  # raises LoraError naming a bad tensor
        self.unload(slot)
        for prefix, (a, b) in pairs.items():
            self.layers[prefix].adapters[slot] = (
                a.to(self._device, self._dtype).contiguous(),
                b.to(self._device, self._dtype).contiguous(),
                float(scaling),
            )

    def unload(self, slot: int) -> None:
        self._check_slot(slot)
        for layer in self.layers.values():
            layer.adapters.pop(slot, None)

    def set_token_slots(self, slots: Sequence[int] | None) -> None:
        """The slot of every token of the next forward, in order (0 = base); None or all 0: the base."""
        if not slots or not any(slots):
            self.groups = None
            return
        present = sorted(set(slots))
        if len(present) == 1:
            self.groups = [(present[0], None)]
            return
        index = torch.tensor(slots)
        self.groups = [
            (slot, torch.nonzero(index == slot).flatten().to(self._device)) for slot in present if slot != 0
        ]

    def _check_slot(self, slot: int) -> None:
        if not 1 <= slot <= self.max_loras:
            raise LoraError(f"adapter slot {slot} is outside 1..{self.max_loras}")
