"""Numba kernels for a whole decode step of a quantized CPU model: every layer in one call.

A decode step of a small model does little work per layer (SmolLM2: 3.5 MB of int8 weights), so
per-operator dispatch dominated it: ~40 PyTorch and numba calls per layer cost more than reading the
weights. Here the layer loop, RMSNorm, RoPE, the KV-cache write, attention over each sequence's cache
slots, SwiGLU and the residuals all run inside one compiled function; only the GEMVs and attention
start parallel regions. Arithmetic follows transformer.py in fp32 and the linears' own kernels
(activations quantized per block of 32, see kernels.py); sums may be ordered differently, so results
agree to float rounding, see tests/test_fused_decode.py.

Linears are given as parallel lists indexed layer * 7 + j, j over LINEARS, each int8 (kind 0:
`q8`, `scale`) or int4 (kind 1: `p4`, `scale`, `zero`); the unused arrays of a kind are empty.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from mistral_nemo.model.quant.kernels import int4_matmul, int8_matmul, quantize_activations

LINEARS = ("wq", "wk", "wv", "wo", "w1", "w3", "w2")
KIND_INT8, KIND_INT4 = 0, 1
_OPTS = {"fastmath": True, "cache": True, "nogil": True}


@njit(**_OPTS)
def _linear(i, xq, xs, xsum, kinds, q8s, p4s, scales, zeros, n_out):
    """Linear i on activations quantized once by quantize_activations (shared by wq/wk/wv, w1/w3)."""
    out = np.empty((xq.shape[0], n_out), dtype=np.float32)
    if kinds[i] == KIND_INT8:
        int8_matmul(xq, xs, q8s[i], scales[i], out)
    else:
        int4_matmul(xq, xs, xsum, p4s[i], scales[i], zeros[i], out)
    return out


@njit(**_OPTS)
def _rms_norm(h, weight, eps):
    out = np.empty_like(h)
    dim = h.shape[1]
    for t in range(h.shape[0]):
        ss = np.float32(0.0)
        for k in range(dim):
            ss += h[t, k] * h[t, k]
        inv = np.float32(1.0) / np.sqrt(ss / np.float32(dim) + np.float32(eps))
        for k in range(dim):
            out[t, k] = h[t, k] * inv * weight[k]
    return out


@njit(**_OPTS)
def _rope(x, n_heads, cos, sin):
    """Rotate-half RoPE in place on x [T, n_heads * head_dim]; cos/sin [T, head_dim]."""
    head_dim = cos.shape[1]
    half = head_dim // 2
    for t in range(x.shape[0]):
        for h in range(n_heads):
            base = h * head_dim
            for d in range(half):
                a = x[t, base + d]
                b = x[t, base + half + d]
                x[t, base + d] = a * cos[t, d] - b * sin[t, d]
                x[t, base + half + d] = b * cos[t, half + d] + a * sin[t, half + d]


@njit(parallel=True, **_OPTS)
def decode_attention(q, keys, values, block_tables, block_size, ctx_lens, n_heads, out):
    """out[b, h*D:(h+1)*D] = softmax(q_bh . K_b / sqrt(D)) V_b over the cache slots of sequence b.

    q [B, n_heads * D]; keys / values [slots, n_kv_heads, D] (one layer's pool); position j of
    sequence b lives in slot block_tables[b, j // block_size] * block_size + j % block_size, for
    j < ctx_lens[b] (block tables, not per-token slots: the engine builds them per step at
    1/block_size of the cost). Grouped-query: head h reads kv head h // (n_heads / kv).
    """
    n_seq = q.shape[0]
    n_kv, head_dim = keys.shape[1], keys.shape[2]
    group = n_heads // n_kv
    scale = np.float32(1.0 / math.sqrt(head_dim))
    # Scratch for every (sequence, head) task allocated once: per-task allocations inside the parallel
    # loop cost more than the arithmetic at short contexts (measured 3x at 16 sequences x 100 tokens).
    all_scores = np.empty((n_seq * n_heads, ctx_lens.max()), dtype=np.float32)
    all_acc = np.zeros((n_seq * n_heads, head_dim), dtype=np.float32)
    for bh in prange(n_seq * n_heads):
        b = bh // n_heads
        h = bh % n_heads
        kv = h // group
        n = ctx_lens[b]
        # 1-D views of the query and of each cached row: contiguous to LLVM, which then vectorises the
        # 64-wide dot products and updates (2.3x over indexing the 2-D / 3-D arrays in the loops)
        qv = q[b, h * head_dim : (h + 1) * head_dim]
        scores = all_scores[bh]
        acc_v = all_acc[bh]
        top = np.float32(-np.inf)
        # block by block, not j // block_size per position: that integer division cost more than the
        # 64-wide dot product at short contexts
        for blk in range((n + block_size - 1) // block_size):
            first = blk * block_size
            base = block_tables[b, blk] * block_size - first
            for j in range(first, min(n, first + block_size)):
                k = keys[base + j, kv]
                acc = np.float32(0.0)
                for d in range(head_dim):
                    acc += qv[d] * k[d]
                acc *= scale
                scores[j] = acc
                top = max(top, acc)
        total = np.float32(0.0)
        for j in range(n):
            e = np.exp(scores[j] - top)
            scores[j] = e
            total += e
        for blk in range((n + block_size - 1) // block_size):
            first = blk * block_size
            base = block_tables[b, blk] * block_size - first
            for j in range(first, min(n, first + block_size)):
                v = values[base + j, kv]
                w = scores[j]
                for d in range(head_dim):
                    acc_v[d] += w * v[d]
        inv = np.float32(1.0) / total
        for d in range(head_dim):
            out[b, h * head_dim + d] = acc_v[d] * inv


@njit(**_OPTS)
def decode_layers(
    h, cos, sin, attn_norms, ffn_norms, eps, n_heads, n_kv_heads,
    kinds, q8s, p4s, scales, zeros, out_dims,
    keys, values, write_slots, block_tables, block_size, ctx_lens,
):  # fmt: skip
    """Run every layer for B new tokens (one per sequence): h [B, dim] in, hidden states out.

    keys / values [layers, slots, n_kv_heads, head_dim]: the new tokens' K/V are written at
    write_slots[b] before attention, so block_tables / ctx_lens include them.
    """
    n_layers = attn_norms.shape[0]
    n_seq = h.shape[0]
    head_dim = keys.shape[3]
    h = h.copy()
    for layer in range(n_layers):
        i = layer * 7
        xq, xs, xsum = quantize_activations(_rms_norm(h, attn_norms[layer], eps))
        q = _linear(i, xq, xs, xsum, kinds, q8s, p4s, scales, zeros, out_dims[i])
        k = _linear(i + 1, xq, xs, xsum, kinds, q8s, p4s, scales, zeros, out_dims[i + 1])
        v = _linear(i + 2, xq, xs, xsum, kinds, q8s, p4s, scales, zeros, out_dims[i + 2])
        _rope(q, n_heads, cos, sin)
        _rope(k, n_kv_heads, cos, sin)
        for b in range(n_seq):
            slot = write_slots[b]
            for kvh in range(n_kv_heads):
                for d in range(head_dim):
                    keys[layer, slot, kvh, d] = k[b, kvh * head_dim + d]
                    values[layer, slot, kvh, d] = v[b, kvh * head_dim + d]
        attn = np.empty_like(q)
        decode_attention(q, keys[layer], values[layer], block_tables, block_size, ctx_lens, n_heads, attn)
        xq, xs, xsum = quantize_activations(attn)
        h += _linear(i + 3, xq, xs, xsum, kinds, q8s, p4s, scales, zeros, out_dims[i + 3])
        xq, xs, xsum = quantize_activations(_rms_norm(h, ffn_norms[layer], eps))
        gate = _linear(i + 4, xq, xs, xsum, kinds, q8s, p4s, scales, zeros, out_dims[i + 4])
        up = _linear(i + 5, xq, xs, xsum, kinds, q8s, p4s, scales, zeros, out_dims[i + 5])
        for t in range(n_seq):
            for j in range(gate.shape[1]):
                g = gate[t, j]
                gate[t, j] = g / (np.float32(1.0) + np.exp(-g)) * up[t, j]
        xq, xs, xsum = quantize_activations(gate)
        h += _linear(i + 6, xq, xs, xsum, kinds, q8s, p4s, scales, zeros, out_dims[i + 6])
    return h
