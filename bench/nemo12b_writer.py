"""Write a GGUF (llama.cpp's `llama` architecture) with NeMo-12B geometry and random Q8_0 weights.

Used by bench/nemo12b.py. The file is valid for llama.cpp and for our loader:
- every linear, the token embedding and the output projection are Q8_0 blocks (an fp16 scale, then
  32 int8 values), written straight from a pool of random blocks: no float weights, no quantizer;
- the norms are F32 ones;
- the vocabulary is NeMo's real Tekken one (131072 ids, mistral_common's tekken_240718.json) as a
  byte-level BPE (`tokenizer.ggml.model = "gpt2"`, `pre = "tekken"`), merges derived from the ranks
  the way transformers' MistralConverter derives them.

Generation: one pool of 2^21 random blocks (68 MiB) per input width, values in [-127, 127] (Q8_0's
range: llama.cpp's AVX2 dot product takes |q| and -128 has none) and scales uniform in
[0.5, 1.5] / (73 sqrt(width)), so a linear's outputs keep roughly unit RMS through the 40 layers. Each
tensor is the pool read from a random offset (wrapping). The bytes go from the pool to the file
without a copy; the writer never holds more than the pools, and the time is the disk's.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter, TokenType

from mistral_nemo.model.args import ModelArgs

Q8_0_BLOCK = 34  # bytes: fp16 scale + 32 x int8
POOL_BLOCKS = 1 << 21
FORMAT_VERSION = 1  # bump when the written file changes (the --keep check compares it)


def tekken_path() -> Path:
    import mistral_common

    return Path(mistral_common.__file__).parent / "data" / "tekken_240718.json"


def tekken_vocabulary(vocab_size: int) -> dict[str, Any]:
    """NeMo's Tekken vocabulary as GGUF byte-level BPE fields: tokens, token types, merges, ids."""
    from mistral_nemo.tokenizer.bpe_pretokenize import byte_to_unicode
    from mistral_nemo.tokenizer.tekken import DEFAULT_CONTROL_TOKENS, FILLER_TEMPLATE

    raw = json.loads(tekken_path().read_text(encoding="utf-8"))
    config = raw["config"]
    n_special = int(config["default_num_special_tokens"])
    if int(config["default_vocab_size"]) != vocab_size:
        raise ValueError(f"tekken vocabulary has {config['default_vocab_size']} ids, the model {vocab_size}")
    specials = [t["token_str"] for t in raw["special_tokens"]] if "special_tokens" in raw else []
    specials = specials or list(DEFAULT_CONTROL_TOKENS)
    specials += [FILLER_TEMPLATE.format(id=i) for i in range(len(specials), n_special)]
    pieces = [base64.b64decode(t["token_bytes"]) for t in raw["vocab"][: vocab_size - n_special]]
    ranks = {piece: rank for rank, piece in enumerate(pieces)}
    spell = byte_to_unicode()
    text = ["".join(spell[b] for b in piece) for piece in pieces]
    merges: list[str] = []
    for piece in pieces:  # transformers' MistralConverter._extract_merges, in rank order
        if len(piece) < 2:
            continue
        local = [
            (ranks[piece[:i]], ranks[piece[i:]])
            for i in range(1, len(piece))
            if piece[:i] in ranks and piece[i:] in ranks
        ]
        merges.extend(f"{text[a]} {text[b]}" for a, b in sorted(local))
    tokens = specials + text
    types = [int(TokenType.CONTROL)] * n_special + [int(TokenType.NORMAL)] * len(text)
    return {
        "tokens": tokens,
        "types": types,
        "merges": merges,
        "bos": specials.index("<s>"),
        "eos": specials.index("</s>"),
        "unk": specials.index("<unk>"),
    }


def tensor_plan(args: ModelArgs) -> list[tuple[str, tuple[int, int] | tuple[int], str]]:
    """(GGUF name, numpy shape [out, in] or [n], "Q8_0" | "F32") in file order."""
    linear = {
        "attn_q": (args.q_dim, args.dim),
        "attn_k": (args.kv_dim, args.dim),
        "attn_v": (args.kv_dim, args.dim),
        "attn_output": (args.dim, args.q_dim),
        "ffn_gate": (args.hidden_dim, args.dim),
        "ffn_up": (args.hidden_dim, args.dim),
        "ffn_down": (args.dim, args.hidden_dim),
    }
    plan: list[tuple[str, Any, str]] = [("token_embd.weight", (args.vocab_size, args.dim), "Q8_0")]
    for i in range(args.n_layers):
        plan.append((f"blk.{i}.attn_norm.weight", (args.dim,), "F32"))
        plan += [(f"blk.{i}.{n}.weight", s, "Q8_0") for n, s in linear.items() if n.startswith("attn")]
        plan.append((f"blk.{i}.ffn_norm.weight", (args.dim,), "F32"))
        plan += [(f"blk.{i}.{n}.weight", s, "Q8_0") for n, s in linear.items() if n.startswith("ffn")]
    plan.append(("output_norm.weight", (args.dim,), "F32"))
    if not args.tied_embeddings:
        plan.append(("output.weight", (args.vocab_size, args.dim), "Q8_0"))
    return plan


def tensor_nbytes(shape: tuple[int, ...], kind: str) -> int:
    n = int(np.prod(shape))
    return n // 32 * Q8_0_BLOCK if kind == "Q8_0" else n * 4


def block_pool(rng: np.random.Generator, width: int, n_blocks: int = POOL_BLOCKS) -> np.ndarray:
    """[n_blocks, 34] uint8: random Q8_0 blocks for a linear whose rows are `width` long."""
    pool = np.empty((n_blocks, Q8_0_BLOCK), dtype=np.uint8)
    pool[:, 2:] = rng.integers(-127, 128, size=(n_blocks, 32), dtype=np.int8).view(np.uint8)
    scales = rng.uniform(0.5, 1.5, size=n_blocks) / (73.0 * np.sqrt(width))
    pool[:, :2] = scales.astype(np.float16).view(np.uint8).reshape(n_blocks, 2)
    return pool


def gguf_args_metadata(writer: GGUFWriter, args: ModelArgs, name: str) -> None:
    writer.add_name(name)
    writer.add_file_type(7)  # LLAMA_FTYPE_MOSTLY_Q8_0
    writer.add_quantization_version(2)
    writer.add_context_length(args.max_seq_len)
    writer.add_embedding_length(args.dim)
    writer.add_block_count(args.n_layers)
    writer.add_feed_forward_length(args.hidden_dim)
    writer.add_head_count(args.n_heads)
    writer.add_head_count_kv(args.n_kv_heads)
    writer.add_key_length(args.head_dim)
    writer.add_value_length(args.head_dim)
    writer.add_rope_dimension_count(args.head_dim)
    writer.add_rope_freq_base(args.rope_theta)
    writer.add_layer_norm_rms_eps(args.norm_eps)
    writer.add_vocab_size(args.vocab_size)


def write_gguf(
    path: Path, args: ModelArgs, seed: int = 0, log: Callable[[str], None] = lambda _: None
) -> dict[str, Any]:
    """Write the file (to `path`.part, renamed when complete); returns what was written."""
    start = time.perf_counter()
    vocab = tekken_vocabulary(args.vocab_size)
    log(
        f"tekken vocabulary: {len(vocab['tokens'])} tokens, {len(vocab['merges'])} merges "
        f"({time.perf_counter() - start:.1f} s)"
    )
    part = path.with_name(path.name + ".part")
    writer = GGUFWriter(part, "llama")
    gguf_args_metadata(writer, args, f"NeMo-12B geometry, random Q8_0 ({args.n_layers} layers)")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("tekken")
    writer.add_token_list(vocab["tokens"])
    writer.add_token_types(vocab["types"])
    writer.add_token_merges(vocab["merges"])
    writer.add_bos_token_id(vocab["bos"])
    writer.add_eos_token_id(vocab["eos"])
    writer.add_unk_token_id(vocab["unk"])
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    plan = tensor_plan(args)
    for name, shape, kind in plan:
        qtype = GGMLQuantizationType.Q8_0 if kind == "Q8_0" else GGMLQuantizationType.F32
        # numpy order [out, in]; the writer reverses to GGUF's fastest-first dims
        writer.add_tensor_info(name, shape, np.dtype(np.float32), tensor_nbytes(shape, kind), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    assert writer.fout is not None
    out = writer.fout[0]
    rng = np.random.default_rng(seed)
    pools: dict[int, np.ndarray] = {}
    ones = np.ones(args.dim, dtype=np.float32)
    written = 0
    header_s = time.perf_counter() - start
    for index, (name, shape, kind) in enumerate(plan):
        writer.write_padding(out, out.tell())
        if kind == "F32":
            out.write(ones.tobytes())
        else:
            width = shape[1]
            if width not in pools:
                pools[width] = block_pool(rng, width)
            pool = pools[width]
            remaining = shape[0] * width // 32
            pos = int(rng.integers(len(pool)))
            while remaining:
                n = min(len(pool) - pos, remaining)
                out.write(memoryview(pool[pos : pos + n]).cast("B"))
                remaining -= n
                pos = 0
        nbytes = tensor_nbytes(shape, kind)
        writer.write_padding(out, nbytes)
        written += nbytes
        if index % 9 == 0:
            log(f"{name}: {written / 1e9:.2f} GB written ({time.perf_counter() - start:.0f} s)")
    out.flush()
    os.fsync(out.fileno())
    writer.close()
    os.replace(part, path)
    return {
        "file_bytes": path.stat().st_size,
        "tensor_bytes": written,
        "q8_0_bytes": sum(tensor_nbytes(s, k) for _, s, k in plan if k == "Q8_0"),
        "tensors": len(plan),
        "header_s": round(header_s, 1),
        "write_s": round(time.perf_counter() - start, 1),
    }


# ---- the same weights in our quantized folder format (`mistral-nemo quantize`'s output) -------------

_ROWS_PER_STEP = 4096


def _read_rows(f: Any, offset: int, row_bytes: int, start: int, count: int) -> np.ndarray:
    f.seek(offset + start * row_bytes)
    buf = np.empty(count * row_bytes, dtype=np.uint8)
    if f.readinto(memoryview(buf)) != buf.size:
        raise ValueError("the GGUF file ends inside a tensor")
    return buf


def write_quantized_folder(
    gguf: Path, folder: Path, log: Callable[[str], None] = lambda _: None
) -> dict[str, Any]:
    """Our quantized format (model/quant/checkpoint.py) holding the GGUF's own int8 values and scales.

    Each Q8_0 linear becomes an Int8Linear (G=32): `qweight` int8 [out, in], `scale` float32 [out, in/32],
    q/k rows in our rotate-half order (the permutation the GGUF loader applies); the embedding is
    dequantized to bf16 (what the GGUF load keeps), norms stay F32. Streamed in row chunks: the
    writer holds one tensor's scales (84 MB at most), never a model.
    """
    import shutil

    import torch

    from mistral_nemo.formats.gguf import read_gguf_header
    from mistral_nemo.model.load_gguf import gguf_name, read_gguf_args
    from mistral_nemo.model.quant.checkpoint import FORMAT, PARAMS, VERSION, WEIGHTS
    from mistral_nemo.model.quant.quantize import rope_row_perm

    start = time.perf_counter()
    meta, infos = read_gguf_header(gguf)
    args = read_gguf_args(meta, infos)
    header: dict[str, Any] = {}
    layers: dict[str, dict[str, Any]] = {}
    jobs = []
    offset = 0

    def add(key: str, dtype: str, shape: tuple[int, ...], nbytes: int) -> None:
        nonlocal offset
        header[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes

    for info in infos:
        ours = gguf_name(info.name)
        if ours is None:
            continue
        shape = tuple(reversed(info.dims))
        if info.qtype == GGMLQuantizationType.F32:
            add(ours, "F32", shape, int(np.prod(shape)) * 4)
            jobs.append(("f32", ours, info, shape))
            continue
        if info.qtype != GGMLQuantizationType.Q8_0:
            raise ValueError(f"{info.name}: only Q8_0 and F32 tensors are expected")
        rows, cols = shape
        if ours == "tok_embeddings.weight":
            add(ours, "BF16", shape, rows * cols * 2)
            jobs.append(("embedding", ours, info, shape))
            continue
        linear = ours.removesuffix(".weight")
        add(f"{linear}.qweight", "I8", shape, rows * cols)
        add(f"{linear}.scale", "F32", (rows, cols // 32), rows * cols // 32 * 4)
        layers[linear] = {"class": "Int8Linear", "group_size": 32}
        heads = args.n_heads if ours.endswith(".wq.weight") else None
        heads = args.n_kv_heads if ours.endswith(".wk.weight") else heads
        jobs.append(("linear", linear, info, shape, heads))
    header["__metadata__"] = {
        "format": FORMAT,
        "version": VERSION,
        "quantization": "int8",
        "layers": json.dumps(layers, sort_keys=True),
    }
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    part = folder.with_name(folder.name + ".part")
    if part.exists():
        shutil.rmtree(part)
    part.mkdir(parents=True)
    with open(gguf, "rb", buffering=0) as src, open(part / WEIGHTS, "wb") as out:
        out.write(len(text).to_bytes(8, "little") + text)
        for job in jobs:
            kind, _, info, shape = job[:4]
            if kind == "f32":
                out.write(_read_rows(src, info.offset, 4, 0, int(np.prod(shape))).tobytes())
                continue
            rows, cols = shape
            row_bytes = cols // 32 * Q8_0_BLOCK
            if kind == "embedding":
                for r in range(0, rows, _ROWS_PER_STEP):
                    n = min(_ROWS_PER_STEP, rows - r)
                    blocks = _read_rows(src, info.offset, row_bytes, r, n).reshape(-1, Q8_0_BLOCK)
                    d = blocks[:, :2].copy().view(np.float16).astype(np.float32)
                    w = blocks[:, 2:].view(np.int8).astype(np.float32) * d
                    out.write(torch.from_numpy(w).to(torch.bfloat16).view(torch.int16).numpy().tobytes())
                continue
            heads = job[4]
            scales = np.empty((rows, cols // 32), dtype=np.float32)
            if heads:  # q / k: small (4096 x 5120 at most), permuted whole
                blocks = _read_rows(src, info.offset, row_bytes, 0, rows).reshape(rows, -1, Q8_0_BLOCK)
                blocks = blocks[rope_row_perm(rows, heads).numpy()]
                out.write(np.ascontiguousarray(blocks[:, :, 2:]).tobytes())
                scales[:] = blocks[:, :, :2].copy().view(np.float16)[..., 0]
            else:
                for r in range(0, rows, _ROWS_PER_STEP):
                    n = min(_ROWS_PER_STEP, rows - r)
                    blocks = _read_rows(src, info.offset, row_bytes, r, n).reshape(n, -1, Q8_0_BLOCK)
                    out.write(np.ascontiguousarray(blocks[:, :, 2:]).tobytes())
                    scales[r : r + n] = blocks[:, :, :2].copy().view(np.float16)[..., 0]
            out.write(scales.tobytes())
        out.flush()
        os.fsync(out.fileno())
    (part / PARAMS).write_text(json.dumps(args.to_dict(), indent=2) + "\n")
    shutil.copyfile(tekken_path(), part / "tekken.json")
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(part, folder)
    size = (folder / WEIGHTS).stat().st_size
    log(f"wrote {folder / WEIGHTS}: {size / 1e9:.2f} GB in {time.perf_counter() - start:.0f} s")
    seconds = round(time.perf_counter() - start, 1)
    return {"safetensors_bytes": size, "tensor_bytes": offset, "write_s": seconds}
