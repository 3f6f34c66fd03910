"""The NeMo transformer (Mistral/Llama family), readable in one sitting.

Conventions, chosen once; loaders convert to them:
- Linear weights are [out_features, in_features] (nn.Linear), names as in Mistral checkpoints.
- RoPE rotates halves (HF layout): q/k rows of interleaved-pair checkpoints (Mistral
  consolidated, GGUF) are permuted at load time. Angles are computed in fp32 exactly as the
  references do, from the positions given, so any position up to 128k is exact.
- A forward takes token ids, their positions and an optional KV cache object; prefill and
  decode are the same call. Without a cache the sequence attends causally to itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from mistral_nemo.model.args import ModelArgs


class KVCache(Protocol):
    """Stores keys/values and runs attention; the engine's paged cache implements the same call."""

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q [T, n_heads, head_dim], k/v [T, n_kv_heads, head_dim] -> [T, n_heads, head_dim]."""
        ...


@dataclass
class DecodeSlots:
    """A pure decode step (one new token per sequence) as cache slots, for a fused decoder.

    A cache may offer `decode_slots(num_tokens) -> DecodeSlots | None`; None means "not a pure decode
    step" (or a layout the fused path cannot read), and the model runs layer by layer.
    """

    keys: torch.Tensor  # [layers, slots, kv_heads, head_dim] float32, written in place
    values: torch.Tensor
    write_slots: torch.Tensor  # [B] int64: slot of each sequence's new token
    # [B, max_blocks] int64: the cache blocks of each whole context (new token included), in order;
    # position j of sequence b is slot block_tables[b, j // block_size] * block_size + j % block_size.
    block_tables: torch.Tensor
    block_size: int
    ctx_lens: torch.Tensor  # [B] int64


# (h [B, dim], cos [B, 1, head_dim], sin, slots) -> h after every layer; see quant/fused_decode.py.
FusedDecoderFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, DecodeSlots], torch.Tensor]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 whatever the activation dtype, then scale (as mistral-inference and HF do).
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


class Rotary(nn.Module):
    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        # Computed on CPU and moved: on the meta device (build_model) pow has only a Python kernel,
        # whose first use imports torch._dynamo and sympy (~70 MB of RSS, seconds) in every load.
        exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").float() / head_dim
        inv_freq = (1.0 / (theta**exponents)).to(torch.get_default_device())
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        angles = positions.float()[:, None] * self.inv_freq[None, :]
        angles = torch.cat((angles, angles), dim=-1)[:, None, :]  # [T, 1, head_dim]
        return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Attention of a whole sequence to itself; GQA without repeating K/V."""
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), is_causal=True, enable_gqa=True
    )
    return out.transpose(0, 1)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        self.wq = nn.Linear(args.dim, args.q_dim, bias=False)
        self.wk = nn.Linear(args.dim, args.kv_dim, bias=False)
        self.wv = nn.Linear(args.dim, args.kv_dim, bias=False)
        self.wo = nn.Linear(args.q_dim, args.dim, bias=False)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layer: int, cache: KVCache | None
    ) -> torch.Tensor:
        tokens = x.shape[0]
        q = self.wq(x).view(tokens, self.n_heads, self.head_dim)
        k = self.wk(x).view(tokens, self.n_kv_heads, self.head_dim)
        v = self.wv(x).view(tokens, self.n_kv_heads, self.head_dim)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        out = causal_attention(q, k, v) if cache is None else cache.attend(layer, q, k, v)
        return self.wo(out.reshape(tokens, -1))


class FeedForward(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.w1 = nn.Linear(args.dim, args.hidden_dim, bias=False)
        self.w2 = nn.Linear(args.hidden_dim, args.dim, bias=False)
        self.w3 = nn.Linear(args.dim, args.hidden_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.attention = Attention(args)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)
        self.feed_forward = FeedForward(args)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None
    ) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), cos, sin, self.layer, cache)
        return h + self.feed_forward(self.ffn_norm(h))


def _embedding(vocab: int, dim: int) -> nn.Embedding:
    """nn.Embedding, left uninitialised on the meta device: its normal_ init has only a Python meta
    kernel there, which imports torch._dynamo and sympy (~70 MB of RSS, seconds) in every load."""
    if torch.get_default_device().type == "meta":
        return nn.Embedding(vocab, dim, _weight=torch.empty(vocab, dim))
    return nn.Embedding(vocab, dim)


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.args = args
        self.tok_embeddings = _embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(TransformerBlock(args, i) for i in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        if args.tied_embeddings:
            self.output.weight = self.tok_embeddings.weight
        self.rotary = Rotary(args.head_dim, args.rope_theta)
        self.fused_decoder: FusedDecoderFn | None = None  # set by FusedDecoder.attach

    @property
    def dtype(self) -> torch.dtype:
        """The activations' dtype (the norms'); the embedding table may be stored narrower (compute_in)."""
        return self.norm.weight.dtype

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """The tokens' embedding rows, in the activations' dtype."""
        return self.tok_embeddings(tokens).to(self.dtype)

    def compute_in(self, dtype: torch.dtype) -> None:
        """Every float part to `dtype` but the embedding table, whose rows are cast as they are looked up
        (a quantized NeMo 12B on CPU: float32 activations, a 1.3 GB bfloat16 table instead of 2.7 GB)."""
        for name, child in self.named_children():
            if name != "tok_embeddings":
                child.to(dtype)

    @property
    def device(self) -> torch.device:
        return self.tok_embeddings.weight.device

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        cache: KVCache | None = None,
        output_rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """tokens, positions: [T]. Returns logits [T, vocab] (or only for `output_rows`), in model dtype."""
        h = self.embed(tokens)
        cos, sin = self.rotary.cos_sin(positions, h.dtype)
        slots = self._decode_slots(cache, tokens.shape[0])
        if slots is not None:
            h = self.fused_decoder(h, cos, sin, slots)
        else:
            for layer in self.layers:
                h = layer(h, cos, sin, cache)
        if output_rows is not None:
            h = h[output_rows]
        return self.output(self.norm(h))

    def _decode_slots(self, cache: KVCache | None, num_tokens: int) -> DecodeSlots | None:
        if self.fused_decoder is None or cache is None:
            return None
        get = getattr(cache, "decode_slots", None)
        return get(num_tokens) if get is not None else None

    @torch.inference_mode()
    def logits(self, ids: torch.Tensor, start_pos: int = 0) -> torch.Tensor:
        """float32 logits [len(ids), vocab] of one causal forward, the sequence placed at start_pos."""
        ids = ids.to(self.device)
        positions = torch.arange(start_pos, start_pos + ids.shape[0], device=self.device)
        return self.forward(ids, positions).float()
