"""`load(path)`: recognise a checkpoint by its contents and return model, tokenizer and args."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from torch import nn

from mistral_nemo.formats.gguf import read_gguf_header
from mistral_nemo.model.args import ModelArgs
from mistral_nemo.model.embedded import embedded_model_path, is_embedded_model
from mistral_nemo.model.generation_defaults import OPENAI, GenerationDefaults, generation_defaults
from mistral_nemo.model.load_gguf import is_gguf, iter_gguf_tensors, read_gguf_args
from mistral_nemo.model.load_hf import hf_weight_files, iter_hf_tensors, read_hf_args
from mistral_nemo.model.load_mistral import iter_mistral_tensors, mistral_weight_files, read_mistral_args
from mistral_nemo.model.load_options import QUANTIZATIONS
from mistral_nemo.model.quant.checkpoint import (
    is_quantized_checkpoint,
    iter_quantized_tensors,
    layer_classes,
    read_metadata,
)
from mistral_nemo.model.quant.checkpoint import read_args as read_quantized_args
from mistral_nemo.model.tensor_parallel import TensorParallelShard, parallelize, shard_stream
from mistral_nemo.model.transformer import Transformer
from mistral_nemo.model.weights import (
    CheckpointError,
    Part,
    build_model,
    drop_mapped_pages,
    private_file_maps,
    read_json,
)
from mistral_nemo.tokenizer import TekkenTokenizer, Tokenizer, load_tokenizer

# Above this many parameters a float CPU model is kept in bfloat16 (NeMo 12B: 24.5 GB instead of 49 GB).
_BF16_ON_CPU_ABOVE = 2_000_000_000


@dataclass
class LoadedModel:
    model: Transformer
    tokenizer: Tokenizer  # TekkenTokenizer or BpeTokenizer: the interface of mistral_nemo.tokenizer
    args: ModelArgs
    source: Path
    format: str  # "mistral", "hf", "gguf" or "quantized" (a folder written by `mistral-nemo quantize`)
    name: str
    # The sampling settings the model is meant to run with (see model/generation_defaults.py).
    generation_defaults: GenerationDefaults = field(default=OPENAI)


@dataclass
class CheckpointReader:
    """A recognised checkpoint: its args and its tensors under our names, each linear already in the
    form the quantization mode asks for (a float tensor or a compact module), read one at a time."""

    format: str
    target: Path
    args: ModelArgs
    tensors: Iterator[tuple[str, torch.Tensor | nn.Module]]  # under tensor parallelism: the rank's parts
    name: str
    weight_files: list[Path]
    shard: TensorParallelShard | None = None  # the rank's part of the model, when read tensor-parallel


def detect_format(path: Path) -> tuple[str, Path]:
    """("quantized" | "mistral" | "hf" | "gguf", the folder or file to read), from the contents."""
    if path.is_file():
        if is_gguf(path):
            return "gguf", path
        raise CheckpointError(f"{path} is not a model: expected a GGUF file or a model folder")
    if not path.is_dir():
        raise CheckpointError(f"model not found: {path}{_download_hint(path)}")
    if is_quantized_checkpoint(path):  # before Mistral: it has params.json and safetensors too
        return "quantized", path
    if (path / "params.json").is_file() and any(path.glob("*.safetensors")):
        mistral_weight_files(path)  # raises if the safetensors hold other names
        return "mistral", path
    if (path / "config.json").is_file():
        return "hf", path
    ggufs = [p for p in sorted(path.iterdir()) if p.is_file() and is_gguf(p)]
    if len(ggufs) == 1:
        return "gguf", ggufs[0]
    if len(ggufs) > 1:
        raise CheckpointError(f"{path} holds several GGUF files; name the one to load")
    raise CheckpointError(
        f"{path} is not a model folder: expected params.json + consolidated.safetensors (Mistral), "
        "config.json + model*.safetensors (HF), or a GGUF file"
    )


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _download_hint(path: Path) -> str:
    """A missing path that reads as a Hugging Face repository id: say how to fetch it."""
    text = str(path)
    if not _HUB_ID.fullmatch(text) or text.startswith("."):
        return ""
    return (
        f" (to use the Hugging Face repository {text}, download it first: `mistral-nemo download {text}`, "
        f"then pass the folder it prints, by default ~/mistral_models/{text.split('/')[-1]})"
    )


_CPU_ONLY = ("Int8Linear", "Int4Linear")  # layers with CPU (numba) kernels only


def load(
    path: str | Path | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    quantization: str | None = "auto",
    lora: str | Path | None = None,
    merge_lora: bool = True,
    tensor_parallel: tuple[int, int] | None = None,
) -> LoadedModel:
    """Load a Mistral folder, an HF folder, a GGUF file or a quantized folder (None: the embedded model).

    quantization (None means "auto"), applied to each linear as it is read (peak memory: the compact
    model plus one float tensor):
    - "auto": keep what the file has: GGUF Q8_0 / Q4_0 / Q4_1 blocks load as int8 / int4 layers on CPU,
      a Mistral FP8 checkpoint stays FP8, a quantized folder stays as written, the rest is float;
    - "none": everything float (quantized files are dequantized);
    - "int8" (per channel) / "int4" (groups of 32, output projection int8): CPU kernels only; layers the
      file already holds in the asked form are kept as they are (int8: every layer int8; int4: body int4);
    - "fp8": Fp8Linear layers (per-channel scales).
    Embedding and norms follow `dtype` (default: bfloat16 on GPU or above 2B parameters, else float32;
    a CPU model whose every linear is int8 / int4 computes in float32: `float32_activations`).

    lora: a LoRA adapter (mistral-finetune's lora.safetensors or its folder, or a PEFT folder), merged
    into float layers (merge_lora=False keeps it beside them); quantized layers keep it unmerged.

    tensor_parallel: (rank, world size): load only this rank's part of every weight (read one tensor
    at a time, file pages released after each) and join the ranks through torch.distributed's default
    group, which the caller has initialised (see model/tensor_parallel.py). `args` stays the whole model's.
    """
    mode = quantization or "auto"
    if mode not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, got {quantization!r}")
    source = embedded_model_path() if path is None else Path(path).expanduser()
    device = _check_device(device)
    try:
        if tensor_parallel is not None and lora is not None:
            raise ValueError("a LoRA adapter cannot be loaded tensor-parallel yet; merge it first")
        reader = read_checkpoint(source, mode, device, tensor_parallel)
        shard = reader.shard
        args = reader.args if shard is None else shard.local_args()
        model = build_model(
            args, reader.tensors, dtype=dtype or _default_dtype(reader.args, device), device=device
        )
    except SafetensorError as exc:  # a reader that did not name the file (the folder is the best we have)
        raise CheckpointError(f"{source}: a safetensors file is not valid ({exc})") from None
    if device.type == "cpu" and any(type(m).__name__ in _CPU_ONLY for m in model.modules()):
        _size_numba_pool()
        if shard is None:  # the fused decoder runs every layer in one call: no room for all-reduces
            from mistral_nemo.model.quant.fused_decode import FusedDecoder

            if dtype is None and float32_activations(model, FusedDecoder.layers_supported(model)):
                model.compute_in(torch.float32)  # norms; the embedding table stays bfloat16
            FusedDecoder.attach(model)  # decode steps in one numba call when every layer is int8 / int4
    if shard is not None:
        parallelize(model, shard)
    if lora is not None:
        from mistral_nemo.model.lora import apply_adapter
        from mistral_nemo.model.lora_files import read_adapter

        adapter, scaling = read_adapter(lora, reader.args)
        apply_adapter(model, adapter, scaling, merge=merge_lora)
    tokenizer = load_tokenizer(reader.target)
    if tokenizer.vocab_size > reader.args.vocab_size:
        raise CheckpointError(
            f"tokenizer has {tokenizer.vocab_size} ids but the model only {reader.args.vocab_size}"
        )
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        args=reader.args,
        source=reader.target,
        format=reader.format,
        name=reader.name,
        generation_defaults=generation_defaults(
            reader.format,
            reader.target,
            tekken=isinstance(tokenizer, TekkenTokenizer),
            embedded=path is None or is_embedded_model(reader.target),
        ),
    )


def _check_device(device: torch.device | str | None) -> torch.device:
    """The device to load on (default: cuda when there is one); one that this torch cannot use is refused."""
    try:
        chosen = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as exc:
        raise ValueError(f"not a device: {device!r} ({exc})") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        why = "this PyTorch is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise ValueError(f"device {str(chosen)!r} is not available: {why}; use --device cpu")
    if chosen.type == "cuda" and chosen.index is not None and chosen.index >= torch.cuda.device_count():
        raise ValueError(f"device {str(chosen)!r} does not exist: {torch.cuda.device_count()} CUDA GPU(s)")
    return chosen


def read_checkpoint(
    source: Path, mode: str, device: torch.device, tensor_parallel: tuple[int, int] | None = None
) -> CheckpointReader:
    """Recognise `source` and open its tensors for `mode` (see load); nothing is read until iterated.

    tensor_parallel (rank, world): yield only that rank's part of each tensor. Safetensors readers
    (get_slice) and GGUF readers (its rows, or whole blocks of each row) read just that part when
    nothing is quantized after reading; otherwise (a quantized mode: an int8 row scale spans every
    column) the whole tensor is read and then cut."""
    if mode in ("int8", "int4") and device.type != "cpu":
        raise ValueError(f"{mode} quantization has CPU kernels only; load with device='cpu'")
    kind, target = detect_format(source)
    recorded = None
    shard: TensorParallelShard | None = None

    def part_reader(args: ModelArgs) -> Callable[[str], Part | None] | None:
        nonlocal shard
        if tensor_parallel is None:
            return None
        shard = TensorParallelShard(tensor_parallel[0], tensor_parallel[1], args)
        return shard.slice_of if mode in ("auto", "none") else None

    if kind == "gguf":
        meta, infos = read_gguf_header(target)
        args = read_gguf_args(meta, infos)
        # Quantized blocks become compact layers on CPU (the kernels are CPU ones); float otherwise.
        compact = device.type == "cpu" and mode in ("auto", "int8", "int4")
        tensors = iter_gguf_tensors(target, infos, args, compact=compact, part=part_reader(args))
        name, files = target.stem, [target]  # a file name is usable as a model id (general.name: spaces)
    elif kind == "mistral":
        args = read_mistral_args(target)
        files = mistral_weight_files(target)
        keep_fp8 = mode in ("auto", "fp8")  # FP8 stays FP8
        tensors = iter_mistral_tensors(files, args, keep_fp8=keep_fp8, part=part_reader(args))
        name = target.name
    elif kind == "hf":
        args = read_hf_args(target)
        files = hf_weight_files(target)
        tensors = iter_hf_tensors(files, part=part_reader(args))
        name = _hf_name(target)
    else:
        args, recorded = read_quantized_args(target), (read_metadata(target) or {}).get("quantization")
        if device.type != "cpu" and mode == "auto" and set(layer_classes(target).values()) & set(_CPU_ONLY):
            raise ValueError(
                f"{target} holds int8 / int4 layers, which have CPU kernels only; load it with "
                "device='cpu', or with quantization 'fp8' or 'none'"
            )
        tensors = iter_quantized_tensors(target, part=part_reader(args))
        name, files = target.name, [target / "model.safetensors"]
    cut_on_read = shard is not None and mode in ("auto", "none")
    if mode != "auto" or kind == "quantized":
        from mistral_nemo.model.quant.quantize import QUANTIZED_MODES, quantize_on_load

        # A tied output projection gets its own compact copy in a quantized mode (auto: the folder's).
        tied = mode if mode in QUANTIZED_MODES else recorded if mode == "auto" else None
        tied_output = tied if args.tied_embeddings and tied in QUANTIZED_MODES else None
        tensors = quantize_on_load(tensors, mode, tied_output)  # type: ignore[arg-type]
        if mode in QUANTIZED_MODES:
            tensors = _dropping_read_pages(tensors, files)
    if shard is not None:
        tensors = shard_stream(tensors, shard, files, already_cut=cut_on_read)
    return CheckpointReader(
        format=kind, target=target, args=args, tensors=tensors, name=name, weight_files=files, shard=shard
    )


def _dropping_read_pages(
    tensors: Iterator[tuple[str, torch.Tensor | nn.Module]], files: list[Path]
) -> Iterator[tuple[str, torch.Tensor | nn.Module]]:
    """After quantized linears, release the file pages their float weights were read from: peak RSS
    stays near the compact model, not the file size (see drop_mapped_pages). Only maps opened by this
    read are touched (not those of a model loaded earlier from the same file). Every 4M weights, not
    every layer: reading /proc/self/maps costs milliseconds and small models have many small layers."""
    earlier = private_file_maps(files)
    pending = 0
    for name, item in tensors:
        yield name, item
        if isinstance(item, nn.Module):
            pending += item.in_features * item.out_features
        if pending >= _DROP_EVERY:
            drop_mapped_pages(private_file_maps(files) - earlier)
            pending = 0
    drop_mapped_pages(private_file_maps(files) - earlier)


_DROP_EVERY = 1 << 22  # weights (16 MB of float32): the most float pages held beyond one tensor


def _size_numba_pool() -> None:
    import numba

    numba.set_num_threads(min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))  # its own pool


def float32_activations(model: Transformer, layers_compact: bool) -> bool:
    """Whether a CPU model loaded in bfloat16 by default (above 2B parameters) computes in float32
    instead: when every layer linear (`layers_compact`) and the output projection are int8 / int4, the
    float parts are only the embedding and the norms, and float32 puts decode on the fused step.

    Measured on NeMo-12B geometry (Q8_0, 2-core AMD EPYC, through the engine): decode 0.66 -> 0.56 s a
    token after 16 prompt tokens and 0.81 -> 0.57 after 512 (bf16 attention on a CPU without bf16
    arithmetic grows with the context); prefill of 512 tokens 101 -> 91 s. The embedding table stays
    bfloat16 (Transformer.compute_in); the cost is a KV cache of twice the bytes per token.
    """
    return (
        model.device.type == "cpu"
        and model.dtype == torch.bfloat16
        and layers_compact
        and type(model.output).__name__ in _CPU_ONLY
    )


def _default_dtype(args: ModelArgs, device: torch.device) -> torch.dtype:
    if device.type == "cuda" or args.num_parameters() > _BF16_ON_CPU_ABOVE:
        return torch.bfloat16
    return torch.float32


def _hf_name(folder: Path) -> str:
    config = read_json(folder / "config.json")
    return str(config.get("_name_or_path") or folder.name)
