"""NeMo at full size on this machine: our int8 runtime vs llama.cpp on the same random Q8_0 GGUF.

Writes a GGUF with NeMo-12B's geometry (ModelArgs.preset("nemo-12b"): 40 layers, dim 5120, untied
output, the real 131072-token Tekken vocabulary) and random Q8_0 weights (bench/nemo12b_writer.py),
then, one after the other so that only one 12B model is ever in memory:
  ours       a fresh subprocess: load(path, device="cpu", quantization="auto"), peak RSS of the load
             (/proc/self/clear_refs + VmHWM) against the file's weight bytes, then greedy decode at
             batch 1 with a DenseKVCache (--engine: through the engine, LLM's paged path, step by step)
  ours_safetensors  with --safetensors: the same int8 values in our quantized folder format
             (model/quant/checkpoint.py), loaded and decoded the same way
  llama_cpp  a subprocess of the Python that has llama_cpp: same file (mmap), same prompt ids, same
             number of decoded tokens, same thread count
Each side runs a warm-up (prompt + 2 tokens) first; the file's page cache is dropped before each
load (posix_fadvise DONTNEED) so both start cold; each side waits for an idle CPU and is measured
again if other processes used it meanwhile (--retries). Prints one JSON line. See bench/README.md.

    flock /tmp/bench.lock .venv/bin/python bench/nemo12b.py [--layers 40] [--gen-len 8] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

DEFAULT_OUT = Path("/tmp/nemo12b")
DEFAULT_LLAMA_PYTHONS = ["/tmp/llamavenv/bin/python"]

LLAMA_SCRIPT = r"""
import json, sys, time

def status():
    out = {}
    for line in open("/proc/self/status"):
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(rest.split()[0]) * 1024
    return out

import llama_cpp
from llama_cpp import Llama
job = json.load(sys.stdin)
before = status()
start = time.perf_counter()
llm = Llama(model_path=job["model"], n_threads=job["threads"], n_threads_batch=job["threads"],
            n_ctx=len(job["prompt"]) + job["gen_len"] + 16, n_batch=64, use_mmap=True, verbose=False)
load_s = time.perf_counter() - start
after_load = status()

def run(n):
    llm.reset()
    start = time.perf_counter()
    llm.eval(job["prompt"])
    prefill_s = time.perf_counter() - start
    tokens, steps = [], []
    for _ in range(n):
        start = time.perf_counter()
        token = llm.sample(top_k=1, temp=0.0)
        llm.eval([token])
        steps.append(time.perf_counter() - start)
        tokens.append(token)
    return prefill_s, steps, tokens

start = time.perf_counter()
run(2)  # warm-up: with mmap this is where the weights are first read from the file
warmup_s = time.perf_counter() - start
prefill_s, steps, tokens = run(job["gen_len"])
print(json.dumps({"load_s": load_s, "warmup_s": warmup_s, "prefill_s": prefill_s, "steps": steps,
                  "tokens": tokens, "before": before, "after_load": after_load, "end": status(),
                  "version": llama_cpp.__version__}))
"""


def note(text: str) -> None:
    print(f"[nemo12b] {text}", file=sys.stderr, flush=True)


def proc_status() -> dict[str, int]:
    """VmRSS, VmHWM (peak), RssAnon, RssFile of this process, in bytes."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(rest.split()[0]) * 1024
    return out


class ForeignLoad:
    """CPU time the rest of the machine used while a side ran, in cores (0 = nothing else ran).

    /proc/stat's busy time over the interval minus the CPU time of our finished children: other
    engineers' jobs on a 2-core machine change the figures, so each side reports this beside them.
    """

    def __enter__(self) -> ForeignLoad:
        self.start = (time.perf_counter(), _busy_seconds(), _children_cpu())
        return self

    def __exit__(self, *exc: object) -> None:
        end = (time.perf_counter(), _busy_seconds(), _children_cpu())
        wall, busy, children = (b - a for a, b in zip(self.start, end, strict=True))
        self.cores = round(max(0.0, busy - children) / wall, 2) if wall > 0 else 0.0


def wait_for_quiet(max_wait: float, below: float = 0.25, seconds: int = 3) -> float:
    """Wait (at most max_wait s) until the machine's CPU use stays under `below` cores for `seconds`
    one-second samples in a row (nothing of ours runs meanwhile); returns the seconds waited."""
    start = time.perf_counter()
    quiet = 0
    while quiet < seconds and time.perf_counter() - start < max_wait:
        busy = _busy_seconds()
        time.sleep(1.0)
        quiet = quiet + 1 if _busy_seconds() - busy < below else 0
    waited = time.perf_counter() - start
    if quiet < seconds:
        note(f"the machine did not go quiet in {max_wait:.0f} s: other processes share the CPU")
    return round(waited, 1)


def _busy_seconds() -> float:
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def drop_page_cache(path: Path) -> None:
    """Evict the file's cached pages (those no process maps), so the next load reads the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kb = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
    flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[-1].split("\n", 1)[0].split()
    simd = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni") if f in flags]
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "simd": simd,
        "mem_total_gb": round(mem_kb / 1e6, 1),
        "kernel": platform.release(),
    }


def model_file(out: Path, layers: int, seed: int, keep: bool) -> tuple[Path, dict[str, Any]]:
    """The GGUF for `layers` layers: reused with --keep when its sidecar matches, else written."""
    from nemo12b_writer import FORMAT_VERSION, write_gguf

    from mistral_nemo.model.args import ModelArgs

    args = ModelArgs.preset("nemo-12b").with_changes(n_layers=layers)
    path = out / f"nemo12b-random-{layers}L-Q8_0.gguf"
    sidecar = path.with_suffix(".json")
    want = {"format": FORMAT_VERSION, "layers": layers, "seed": seed, "args": args.to_dict()}
    if keep and path.is_file() and sidecar.is_file():
        info = json.loads(sidecar.read_text())
        if {k: info.get(k) for k in want} == want and info.get("file_bytes") == path.stat().st_size:
            note(f"reusing {path}")
            return path, info | {"reused": True}
    out.mkdir(parents=True, exist_ok=True)
    sidecar.unlink(missing_ok=True)
    note(f"writing {path} ({layers} layers)")
    info = want | write_gguf(path, args, seed=seed, log=note)
    sidecar.write_text(json.dumps(info))
    note(f"wrote {info['file_bytes'] / 1e9:.2f} GB in {info['write_s']} s")
    return path, info | {"reused": False}


# ---- our side (runs in a fresh subprocess: `nemo12b.py --child-ours JOB`) ----------------------


def ours_child(job: dict[str, Any]) -> dict[str, Any]:
    import numba
    import torch

    from mistral_nemo.engine.dense_cache import DenseKVCache
    from mistral_nemo.model.loading import load
    from mistral_nemo.model.quant import kernels as _kernels  # noqa: F401  (import cost before the baseline)
    from mistral_nemo.model.quant import weight_bytes

    torch.set_num_threads(job["threads"])
    numba.set_num_threads(min(job["threads"], numba.config.NUMBA_NUM_THREADS))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current RSS
    before = proc_status()
    start = time.perf_counter()
    loaded = load(job["model"], device="cpu", quantization=job["quantization"])
    load_s = time.perf_counter() - start
    after_load = proc_status()
    model = loaded.model
    numba.set_num_threads(min(job["threads"], numba.config.NUMBA_NUM_THREADS))  # load may reset it
    tensors = {t.data_ptr(): t for t in [*model.parameters(), *model.buffers()]}
    resident = sum(t.numel() * t.element_size() for t in tensors.values())
    kinds: dict[str, int] = {}
    for module in model.modules():
        if hasattr(module, "in_features"):
            key = f"{type(module).__name__}(G={getattr(module, 'group_size', '-')})"
            kinds[key] = kinds.get(key, 0) + 1

    prompt = job["prompt"]

    def run(n: int) -> tuple[float, list[float], list[int]]:
        if job.get("engine"):
            return run_engine(n)
        cache = DenseKVCache(model.args, len(prompt) + n + 1, dtype=model.dtype, device="cpu")
        with torch.inference_mode():
            start = time.perf_counter()
            ids = torch.tensor(prompt)
            logits = model(ids, torch.arange(len(prompt)), cache, output_rows=torch.tensor([len(prompt) - 1]))
            cache.advance(len(prompt))
            prefill_s = time.perf_counter() - start
            tokens, steps = [], []
            for _ in range(n):
                start = time.perf_counter()
                token = int(logits[-1].argmax())
                logits = model(torch.tensor([token]), torch.tensor([cache.length]), cache)
                cache.advance(1)
                steps.append(time.perf_counter() - start)
                tokens.append(token)
        return prefill_s, steps, tokens

    def run_engine(n: int) -> tuple[float, list[float], list[int]]:
        """The path users take: the engine (paged KV cache, scheduler, sampler), one step at a time;
        the first step prefills and picks the first token, each later one decodes a token."""
        engine = llm.engine
        params = SamplingParams(max_tokens=n + 1, temperature=0, ignore_eos=True)
        engine.add_request(f"bench-{n}", prompt, params)
        times, outputs = [], []
        while engine.has_unfinished_requests():
            start = time.perf_counter()
            outputs = engine.step() or outputs
            times.append(time.perf_counter() - start)
        return times[0], times[1:], list(outputs[-1].outputs[0].token_ids[:n])

    if job.get("engine"):
        from mistral_nemo.engine.llm import LLM
        from mistral_nemo.engine.sampling_params import SamplingParams

        llm = LLM(loaded, kv_cache_memory="1GiB", enable_prefix_caching=False)
    start = time.perf_counter()
    run(2)  # warm-up: numba compiles (or loads its cache) here
    warmup_s = time.perf_counter() - start
    prefill_s, steps, tokens = run(job["gen_len"])
    return {
        "load_s": load_s,
        "warmup_s": warmup_s,
        "prefill_s": prefill_s,
        "steps": steps,
        "tokens": tokens,
        "before": before,
        "after_load": after_load,
        "end": proc_status(),
        "dtype": str(model.dtype).removeprefix("torch."),
        "resident_tensor_bytes": resident,
        "weight_bytes_per_token": weight_bytes(model),
        "linears": kinds,
    }


def check_memory(quantization: str, layers: int) -> None:
    """Refuse a load that cannot fit (a float NeMo-12B is 24.5 GB in bf16): it would OOM the machine."""
    from mistral_nemo.model.args import ModelArgs

    params = ModelArgs.preset("nemo-12b").with_changes(n_layers=layers).num_parameters()
    need = params * (2.0 if quantization == "none" else 1.2)
    with open("/proc/meminfo") as f:
        available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable"))
    if need > 0.9 * available:
        raise RuntimeError(
            f"skipped: quantization={quantization} needs ~{need / 1e9:.1f} GB, "
            f"{available / 1e9:.1f} GB available"
        )


def run_ours(path: Path, job: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child-ours", json.dumps(job | {"model": str(path)})],
        capture_output=True,
        text=True,
        timeout=7200,
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip()[-2000:] or f"exit status {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def llama_python(explicit: str | None) -> str | None:
    candidates = [explicit] if explicit else [os.environ.get("LLAMA_CPP_PYTHON"), *DEFAULT_LLAMA_PYTHONS]
    candidates.append(sys.executable)
    for python in filter(None, candidates):
        if Path(python).is_file():
            check = subprocess.run([python, "-c", "import llama_cpp"], capture_output=True, timeout=120)
            if check.returncode == 0:
                return python
    return None


def run_llama(python: str, path: Path, job: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run(
        [python, "-c", LLAMA_SCRIPT],
        input=json.dumps(job | {"model": str(path)}),
        capture_output=True,
        text=True,
        timeout=7200,
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip()[-2000:] or f"exit status {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarise(result: dict[str, Any], cli: argparse.Namespace, sizes: dict[str, int]) -> dict[str, Any]:
    """Rates and memory of one side, rounded for the JSON line. sizes: "weight" (the file's tensor
    bytes) and "read" (what one decode step reads of them: all but the embedding table)."""
    gen_len, prompt_len, weight_bytes = cli.gen_len, cli.prompt_len, sizes["weight"]
    decode_s = sum(result["steps"])
    tok_s = gen_len / decode_s
    before, after, end = result["before"], result["after_load"], result["end"]
    return {
        "load_s": round(result["load_s"], 2),
        "warmup_s": round(result["warmup_s"], 2),
        "prefill_tok_s": round(prompt_len / result["prefill_s"], 2),
        "decode_tok_s": round(tok_s, 3),
        "decode_tok_s_median_step": round(1 / sorted(result["steps"])[len(result["steps"]) // 2], 3),
        "decode_ms_per_token": [round(s * 1e3) for s in result["steps"]],
        "decode_GBps": round(sizes["read"] * tok_s / 1e9, 2),
        "rss_after_load_gb": round(after["VmRSS"] / 1e9, 3),
        "rss_anon_file_after_load_gb": [round(after["RssAnon"] / 1e9, 3), round(after["RssFile"] / 1e9, 3)],
        "peak_rss_load_gb": round(after["VmHWM"] / 1e9, 3),
        "peak_rss_load_growth_gb": round((after["VmHWM"] - before["VmRSS"]) / 1e9, 3),
        "peak_rss_end_gb": round(end["VmHWM"] / 1e9, 3),
        "peak_rss_growth_whole_run_over_weight_bytes": round(
            (end["VmHWM"] - before["VmRSS"]) / weight_bytes, 3
        ),
        "rss_before_load_gb": round(before["VmRSS"] / 1e9, 3),
        "tokens": result["tokens"],
    }


QUIET_CORES = 0.25  # a side whose run saw more CPU use by other processes than this is run again


def run_side(name: str, run: Any, data_file: Path, cli: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """run() (one measurement in a subprocess), from a cold page cache and a quiet machine; again (up
    to --retries times) while other processes used the CPU meanwhile, keeping the least disturbed."""
    best: tuple[Any, float, float] | None = None
    history = []
    for _ in range(1 + cli.retries):
        if not cli.warm_cache:
            drop_page_cache(data_file)
        waited = wait_for_quiet(cli.quiet_wait)
        with ForeignLoad() as foreign:
            raw = run()
        history.append(foreign.cores)
        if best is None or foreign.cores < best[1]:
            best = (raw, foreign.cores, waited)
        if foreign.cores <= QUIET_CORES:
            break
        note(f"{name}: other processes used {foreign.cores} cores meanwhile; measuring again")
    assert best is not None
    return best[0], {
        "other_processes_cpu_cores": best[1],
        "waited_for_quiet_s": best[2],
        "attempts_other_processes_cpu_cores": history,
    }


def measure_ours(target: Path, job: dict[str, Any], cli: argparse.Namespace, sizes: dict[str, int]) -> Any:
    """Our side on a GGUF file or a quantized folder: the summary dict, or a "failed: ..." string."""
    note(f"ours on {target.name} (quantization={cli.quantization})")
    try:
        check_memory(cli.quantization, cli.layers)
        data_file = target / "model.safetensors" if target.is_dir() else target
        raw, contention = run_side(
            "ours", lambda: run_ours(target, job | {"quantization": cli.quantization}), data_file, cli
        )
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        note(f"ours failed: {exc}")
        return f"failed: {exc}"
    ours = summarise(raw, cli, sizes)
    weight_bytes = sizes["weight"]
    growth = raw["after_load"]["VmHWM"] - raw["before"]["VmRSS"]
    ours |= {
        "quantization": cli.quantization,
        "dtype": raw["dtype"],
        "linears": raw["linears"],
        "resident_tensor_bytes": raw["resident_tensor_bytes"],
        "weight_bytes_per_token": raw["weight_bytes_per_token"],
        "peak_load_growth_over_weight_bytes": round(growth / weight_bytes, 3),
        "peak_load_growth_over_resident_tensors": round(growth / raw["resident_tensor_bytes"], 3),
        "decode_GBps_own_bytes": round(raw["weight_bytes_per_token"] * ours["decode_tok_s"] / 1e9, 2),
        **contention,
    }
    note(f"ours: {ours['decode_tok_s']} tok/s, peak load growth {ours['peak_rss_load_growth_gb']} GB")
    return ours


def quantized_folder(gguf: Path, info: dict[str, Any], keep: bool) -> tuple[Path, dict[str, Any]]:
    """The GGUF's int8 values in our quantized folder format, beside it (reused with --keep)."""
    from nemo12b_writer import write_quantized_folder

    folder = gguf.with_name(gguf.name.removesuffix("-Q8_0.gguf") + "-int8")
    sidecar = folder.with_name(folder.name + ".json")
    want = {"from": {k: info.get(k) for k in ("format", "layers", "seed", "file_bytes")}}
    if keep and (folder / "model.safetensors").is_file() and sidecar.is_file():
        done = json.loads(sidecar.read_text())
        if done.get("from") == want["from"]:
            note(f"reusing {folder}")
            return folder, done | {"reused": True}
    sidecar.unlink(missing_ok=True)
    note(f"writing {folder} (our int8 safetensors format)")
    done = want | write_quantized_folder(gguf, folder, log=note)
    sidecar.write_text(json.dumps(done))
    return folder, done | {"reused": False}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"folder for the files ({DEFAULT_OUT})")
    parser.add_argument("--keep", action="store_true", help="reuse matching files, and keep them afterwards")
    parser.add_argument("--layers", type=int, default=40, help="transformer layers (NeMo: 40)")
    parser.add_argument("--gen-len", type=int, default=8, help="decoded tokens per side (default 8)")
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="both sides (default: nproc)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quantization", default="auto", help="ours: load()'s quantization (default auto)")
    parser.add_argument(
        "--safetensors",
        action="store_true",
        help="also write the same int8 values in our quantized folder format and measure loading it",
    )
    parser.add_argument("--llama-python", help="a Python with llama_cpp (default: $LLAMA_CPP_PYTHON, ...)")
    parser.add_argument("--skip-llama-cpp", action="store_true")
    parser.add_argument("--skip-ours", action="store_true")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=300.0,
        help="before each side, wait up to this many seconds for other processes to leave the CPU idle",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=2,
        help=f"measure a side again when other processes used > {QUIET_CORES} cores meanwhile (default 2)",
    )
    parser.add_argument("--warm-cache", action="store_true", help="do not drop the files' page cache")
    parser.add_argument(
        "--engine",
        action="store_true",
        help="ours through the engine (LLM, paged KV cache), step by step, instead of a DenseKVCache loop",
    )
    parser.add_argument("--child-ours", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_ours:
        print(json.dumps(ours_child(json.loads(args.child_ours))))
        return

    import shutil

    import numpy as np

    from mistral_nemo.model.args import ModelArgs

    nemo = ModelArgs.preset("nemo-12b")
    vocab = nemo.vocab_size
    path, info = model_file(args.out, args.layers, args.seed, args.keep)
    weight_bytes = info["tensor_bytes"]
    embedding = nemo.vocab_size * nemo.dim // 32 * 34  # the Q8_0 token_embd: a step reads one row
    sizes = {"weight": weight_bytes, "read": weight_bytes - embedding}
    prompt = [1, *np.random.default_rng(args.seed).integers(1000, vocab, args.prompt_len - 1).tolist()]
    job = {"threads": args.threads, "prompt": prompt, "gen_len": args.gen_len, "engine": args.engine}
    record: dict[str, Any] = {
        "bench": "nemo12b",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", *sys.argv]),
        "machine": machine(),
        "threads": args.threads,
        "layers": args.layers,
        "prompt_len": args.prompt_len,
        "gen_len": args.gen_len,
        "file": path.name,
        "file_bytes": info["file_bytes"],
        "weight_bytes": weight_bytes,
        "decode_bytes_per_token": sizes["read"],
        "file_written_s": None if info["reused"] else info["write_s"],
        "page_cache": "warm" if args.warm_cache else "dropped before each load",
        "ours_path": "engine (LLM, paged KV cache)" if args.engine else "model + DenseKVCache",
    }
    sides: dict[str, Any] = {}
    folder = None
    try:
        if not args.skip_ours:
            sides["ours"] = measure_ours(path, job, args, sizes)
        if args.safetensors and not args.skip_ours:
            folder, written = quantized_folder(path, info, args.keep)
            record["safetensors_bytes"] = written["safetensors_bytes"]
            record["safetensors_written_s"] = None if written["reused"] else written["write_s"]
            sides["ours_safetensors"] = measure_ours(folder, job, args, sizes)
        python = None if args.skip_llama_cpp else llama_python(args.llama_python)
        if python is None:
            sides["llama_cpp"] = "skipped" if args.skip_llama_cpp else "skipped: no Python with llama_cpp"
        else:
            note(f"llama.cpp via {python}")
            try:
                raw, contention = run_side("llama.cpp", lambda: run_llama(python, path, job), path, args)
                sides["llama_cpp"] = summarise(raw, args, sizes) | contention
                record["llama_cpp_version"] = raw["version"]
                note(f"llama.cpp: {sides['llama_cpp']['decode_tok_s']} tok/s")
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                sides["llama_cpp"] = f"failed: {exc}"
                note(f"llama.cpp failed: {exc}")
    finally:
        if not args.keep:
            path.unlink(missing_ok=True)
            path.with_suffix(".json").unlink(missing_ok=True)
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
                folder.with_name(folder.name + ".json").unlink(missing_ok=True)
    record |= sides
    llama = sides.get("llama_cpp")
    for name in ("ours", "ours_safetensors"):
        ours = sides.get(name)
        if isinstance(ours, dict) and isinstance(llama, dict):
            suffix = "" if name == "ours" else "_safetensors"
            record[f"decode_ours{suffix}/llama_cpp"] = round(ours["decode_tok_s"] / llama["decode_tok_s"], 3)
            record[f"prefill_ours{suffix}/llama_cpp"] = round(
                ours["prefill_tok_s"] / llama["prefill_tok_s"], 3
            )
            same = sum(x == y for x, y in zip(ours["tokens"], llama["tokens"], strict=True))
            record[f"greedy_tokens_agree{suffix}"] = f"{same}/{len(ours['tokens'])}"
    print(json.dumps(record))


if __name__ == "__main__":
    main()
