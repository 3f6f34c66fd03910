"""LoRA on the attention and feed-forward linears: y = W x + scaling * B(A(dropout(x))).

As mistral-finetune defines it: `scaling` is a fixed factor (default 2.0, not alpha / rank), A starts
Kaiming-uniform and B at zero, so a fresh adapter changes nothing. The frozen W may be a float
nn.Linear or one of this project's compact layers (Int8Linear, Int4Linear, Fp8Linear: anything with
`dequantize()`): that is QLoRA. Gradients reach x through a compact W by dequantizing that one layer
inside backward and dropping it at once, so training never holds a float copy of the whole model.

Adapter tensors use mistral-finetune's names (`layers.N.attention.wq.lora_A.weight` [r, in],
`lora_B.weight` [out, r]) and Mistral's interleaved-pair RoPE layout for the rows of wq / wk's B;
the model holds q / k rows in rotate-half order, so B of wq / wk is permuted on the way in and out.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

import torch
from torch import nn

from mistral_nemo.model.args import ModelArgs
from mistral_nemo.model.transformer import Transformer
from mistral_nemo.model.weights import interleaved_to_half

LORA_TARGETS = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")
DEFAULT_SCALING = 2.0


class LoraError(ValueError):
    """An adapter does not fit the model (names, shapes, rank) or is not an adapter at all."""


class _FrozenCompactLinear(torch.autograd.Function):
    """y = layer(x) for a frozen compact layer; backward gives grad_x = grad_y @ W only."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, layer: nn.Module) -> torch.Tensor:
        ctx.layer = layer  # type: ignore[attr-defined]
        with torch.no_grad():
            return layer(x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_y: torch.Tensor) -> tuple[torch.Tensor, None]:
        weight = ctx.layer.dequantize()  # type: ignore[attr-defined]  # float32 [out, in], this layer only
        grad_x = grad_y.reshape(-1, weight.shape[0]).to(weight.dtype) @ weight
        return grad_x.reshape(*grad_y.shape[:-1], weight.shape[1]).to(grad_y.dtype), None


def frozen_linear(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A frozen linear (float or compact) applied so that gradients flow to x."""
    if isinstance(layer, nn.Linear) or not torch.is_grad_enabled() or not x.requires_grad:
        return layer(x)
    return _FrozenCompactLinear.apply(x, layer)


class LoRALinear(nn.Module):
    """A frozen linear plus a trainable low-rank update."""

    def __init__(
        self, base: nn.Module, rank: int, scaling: float = DEFAULT_SCALING, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if rank < 1:
            raise LoraError(f"LoRA rank must be at least 1, got {rank}")
        self.base = base.requires_grad_(False)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank, self.scaling = rank, float(scaling)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        device = next(base.buffers(), next(base.parameters(), torch.empty(0))).device
        self.lora_A = nn.Linear(self.in_features, rank, bias=False, device=device)
        self.lora_B = nn.Linear(rank, self.out_features, bias=False, device=device)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = frozen_linear(self.base, x)
        update = self.lora_B(self.lora_A(self.dropout(x.to(self.lora_A.weight.dtype))))
        return y + (self.scaling * update).to(y.dtype)

    @torch.no_grad()
    def delta(self) -> torch.Tensor:
        """scaling * B @ A, float32 [out, in]."""
        return self.scaling * (self.lora_B.weight.float() @ self.lora_A.weight.float())

    def extra_repr(self) -> str:
        return f"rank={self.rank}, scaling={self.scaling}"


def target_linears(model: Transformer) -> Iterator[tuple[str, nn.Module, str]]:
    """(our name prefix, parent module, child name) of every LoRA target linear."""
    for i, block in enumerate(model.layers):
        for name in LORA_TARGETS:
            part = "attention" if name in ("wq", "wk", "wv", "wo") else "feed_forward"
            yield f"layers.{i}.{part}.{name}", getattr(block, part), name


def add_lora(model: Transformer, rank: int, scaling: float = DEFAULT_SCALING, dropout: float = 0.0) -> None:
    """Wrap every target linear in a fresh LoRALinear (B = 0: the model's outputs are unchanged)."""
    model.requires_grad_(False)
    for _, parent, name in target_linears(model):
        base = getattr(parent, name)
        if isinstance(base, LoRALinear):
            raise LoraError("the model already has LoRA layers")
        setattr(parent, name, LoRALinear(base, rank, scaling, dropout))
    model.fused_decoder = None  # the fused decode path reads the compact layers directly, without LoRA


def lora_layers(model: Transformer) -> Iterator[tuple[str, LoRALinear]]:
    for prefix, parent, name in target_linears(model):
        layer = getattr(parent, name)
        if isinstance(layer, LoRALinear):
            yield prefix, layer


def lora_parameters(model: Transformer) -> list[nn.Parameter]:
    return [p for _, layer in lora_layers(model) for p in (layer.lora_A.weight, layer.lora_B.weight)]


def _rope_heads(prefix: str, args: ModelArgs) -> int | None:
    if prefix.endswith("attention.wq"):
        return args.n_heads
    if prefix.endswith("attention.wk"):
        return args.n_kv_heads
    return None


def half_to_interleaved(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Inverse of interleaved_to_half: rotate-half q / k rows (ours, HF) -> interleaved pairs (Mistral)."""
    rows, cols = weight.shape
    head_dim = rows // n_heads
    return weight.reshape(n_heads, 2, head_dim // 2, cols).transpose(1, 2).reshape(rows, cols)


def lora_state_dict(model: Transformer, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The adapter in mistral-finetune's names and Mistral's q / k row layout."""
    state = {}
    for prefix, layer in lora_layers(model):
        b = layer.lora_B.weight.detach().to(dtype)
        heads = _rope_heads(prefix, model.args)
        state[f"{prefix}.lora_A.weight"] = layer.lora_A.weight.detach().to(dtype).contiguous()
        state[f"{prefix}.lora_B.weight"] = (half_to_interleaved(b, heads) if heads else b).contiguous()
    return state


def adapter_pairs(
    model: Transformer, tensors: Mapping[str, torch.Tensor]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{target prefix: (A, B in our row layout)}; every key must be a known target's A or B."""
    known = {prefix: getattr(parent, name) for prefix, parent, name in target_linears(model)}
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for key in tensors:
        prefix, _, suffix = key.rpartition(".lora_")
        if suffix not in ("A.weight", "B.weight") or prefix not in known:
            raise LoraError(
                f"unexpected tensor {key!r} in the adapter (expected layers.N.attention.wq.lora_A.weight ...)"
            )
    for prefix, layer in known.items():
        a, b = tensors.get(f"{prefix}.lora_A.weight"), tensors.get(f"{prefix}.lora_B.weight")
        if a is None and b is None:
            continue
        if a is None or b is None:
            raise LoraError(f"the adapter has only one of {prefix}.lora_A / lora_B")
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
            raise LoraError(
                f"{prefix}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} are not [r, in] / [out, r]"
            )
        if a.shape[1] != layer.in_features or b.shape[0] != layer.out_features:
            raise LoraError(
                f"{prefix}: the adapter is {a.shape[1]} -> {b.shape[0]} but the model's layer is "
                f"{layer.in_features} -> {layer.out_features}: an adapter for another model?"
            )
        heads = _rope_heads(prefix, model.args)
        pairs[prefix] = (a, interleaved_to_half(b, heads) if heads else b)
    if not pairs:
        raise LoraError("the adapter holds no LoRA tensors")
    return pairs


def load_lora_state_dict(model: Transformer, tensors: Mapping[str, torch.Tensor]) -> None:
    """Copy an adapter (mistral-finetune names and layout) into the model's LoRALinear layers."""
    layers = dict(lora_layers(model))
    for prefix, (a, b) in adapter_pairs(model, tensors).items():
        layer = layers.get(prefix)
        if layer is None or layer.rank != a.shape[0]:
            raise LoraError(
                f"{prefix}: the adapter's rank {a.shape[0]} does not match the model's LoRA layers"
            )
        with torch.no_grad():
            layer.lora_A.weight.copy_(a)
            layer.lora_B.weight.copy_(b)


@torch.no_grad()
def apply_adapter(
    model: Transformer,
    tensors: Mapping[str, torch.Tensor],
    scaling: float = DEFAULT_SCALING,
    merge: bool = True,
) -> int:
    """Put an adapter into a model for inference; returns how many layers were merged.

    merge=True folds scaling * B @ A into float weights (no cost per token); compact (quantized) layers
    cannot take it without re-quantizing, so they keep the adapter beside them (a LoRALinear).
    """
    merged = unmerged = 0
    parents = {prefix: (parent, name) for prefix, parent, name in target_linears(model)}
    for prefix, (a, b) in adapter_pairs(model, tensors).items():
        parent, name = parents[prefix]
        base = getattr(parent, name)
        if isinstance(base, LoRALinear):
            raise LoraError("the model already has LoRA layers; load the base again to apply another adapter")
        if merge and isinstance(base, nn.Linear):
            delta = scaling * (b.float() @ a.float())
            base.weight.copy_((base.weight.float() + delta.to(base.weight.device)).to(base.weight.dtype))
            merged += 1
            continue
        layer = LoRALinear(base, a.shape[0], scaling)
        layer.lora_A.weight.copy_(a)
        layer.lora_B.weight.copy_(b)
        setattr(parent, name, layer.requires_grad_(False))
        unmerged += 1
    if unmerged:
        model.fused_decoder = None  # unmerged layers: the fused decode path would skip them
    return merged
