"""Peak memory of each tensor-parallel rank while it loads its part of a NeMo-shaped checkpoint.

Writes a Mistral-layout folder (bf16, NeMo's head geometry: 32 query / 8 KV heads of 128, dim !=
heads x head_dim; fewer layers and a small vocabulary so it stays a few hundred MB; the values are
zeros, as only the bytes matter here), then loads it in fresh processes with 1 rank and with N
ranks (gloo) and prints one JSON line: the file size, the peak RSS growth of the one-process load,
and each rank's peak RSS growth (VmHWM after the load minus RSS before it) as a share of the file,
with what each process holds after the load split into anonymous memory (its own copies) and
file-backed pages (views of the file's map, counted in RSS too): RssAnon / RssFile growth.

    python bench/tensor_parallel_memory.py --ranks 2
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import save_file


def write_folder(folder: Path, dim: int, layers: int, hidden: int, vocab: int) -> int:
    from tests.nemo_checkpoints import write_small_tekken  # NeMo's Tekken cut to 4072 ids

    heads, kv_heads, head_dim = 32, 8, 128
    params = {
        "dim": dim,
        "n_layers": layers,
        "head_dim": head_dim,
        "hidden_dim": hidden,
        "n_heads": heads,
        "n_kv_heads": kv_heads,
        "norm_eps": 1e-5,
        "rope_theta": 1e6,
        "vocab_size": vocab,
    }
    bf16 = torch.bfloat16
    tensors = {
        "tok_embeddings.weight": torch.zeros(vocab, dim, dtype=bf16),
        "norm.weight": torch.ones(dim, dtype=bf16),
        "output.weight": torch.zeros(vocab, dim, dtype=bf16),
    }
    shapes = {
        "attention.wq": (heads * head_dim, dim),
        "attention.wk": (kv_heads * head_dim, dim),
        "attention.wv": (kv_heads * head_dim, dim),
        "attention.wo": (dim, heads * head_dim),
        "feed_forward.w1": (hidden, dim),
        "feed_forward.w2": (dim, hidden),
        "feed_forward.w3": (hidden, dim),
        "attention_norm": (dim,),
        "ffn_norm": (dim,),
    }
    for i in range(layers):
        for name, shape in shapes.items():
            tensors[f"layers.{i}.{name}.weight"] = torch.zeros(shape, dtype=bf16)
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "consolidated.safetensors"))
    (folder / "params.json").write_text(json.dumps(params))
    write_small_tekken(folder / "tekken.json")
    return (folder / "consolidated.safetensors").stat().st_size


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def measure(rank: int, world: int, port: int, folder: str, out: Any) -> None:
    """Load (this rank's part of) the folder; put (rank, {peak, anon, file} growth in bytes) in `out`."""
    from mistral_nemo.model.loading import load

    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current size
    before = {key: _status(key) for key in ("VmRSS:", "RssAnon:", "RssFile:")}
    loaded = load(
        folder, dtype=torch.bfloat16, device="cpu", tensor_parallel=(rank, world) if world > 1 else None
    )
    growth = {
        "peak": _status("VmHWM:") - before["VmRSS:"],
        "anon": _status("RssAnon:") - before["RssAnon:"],
        "file": _status("RssFile:") - before["RssFile:"],
    }
    out.put((rank, growth))
    del loaded
    if world > 1:
        dist.destroy_process_group()


def run(folder: Path, world: int) -> list[dict[str, int]]:
    context = mp.get_context("spawn")
    out = context.Queue()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ranks = [context.Process(target=measure, args=(r, world, port, str(folder), out)) for r in range(world)]
    for p in ranks:
        p.start()
    peaks = dict(out.get(timeout=900) for _ in ranks)
    for p in ranks:
        p.join()
    return [peaks[r] for r in range(world)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=7168)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "nemo-shaped"
        weights = write_folder(folder, args.dim, args.layers, args.hidden, vocab=4072)
        one = run(folder, 1)[0]
        parallel = run(folder, args.ranks)
    print(
        json.dumps(
            {
                "bench": "tensor_parallel_memory",
                "weights_bytes": weights,
                "ranks": args.ranks,
                "one_process_peak_bytes": one["peak"],
                "rank_peak_bytes": [p["peak"] for p in parallel],
                "rank_peak_share_of_weights": [round(p["peak"] / weights, 3) for p in parallel],
                "one_process_share_of_weights": round(one["peak"] / weights, 3),
                # After the load: own copies (anonymous) and file pages still mapped, as shares.
                "one_process_after_anon_file_share": _shares(one, weights),
                "rank_after_anon_file_share": [_shares(p, weights) for p in parallel],
                "load_average": [load_before, os.getloadavg()[0]],
            }
        )
    )


def _shares(growth: dict[str, int], weights: int) -> list[float]:
    return [round(growth["anon"] / weights, 3), round(growth["file"] / weights, 3)]


if __name__ == "__main__":
    main()
