"""GGUF (llama.cpp's model format): everything this project knows about the file layout, in one place.

- The header: the key/value metadata as plain Python values, and the tensor table (name, dims, GGML
  type, absolute offset). Used by the tokenizer (the vocabulary lives in the metadata) and the loader.
- The block layouts: how many values and bytes one block of each GGML type holds, from `gguf`'s
  `GGML_QUANT_SIZES` (the table llama.cpp's own Python package keeps), and a checked view of a
  tensor's raw bytes as [blocks, bytes_per_block]. Used by the dequantizer and the compact layers.

`gguf.GGUFReader` builds a numpy view per array element while it opens a file, which takes
seconds for a 49k-token vocabulary (and imports mistral_common along with it), so the header
is parsed here directly: one memory map, `struct.unpack_from` for numbers and whole numeric
arrays at once, and one slice per string. The layout (GGUF v2/v3, either byte order) is the
one `gguf.GGUFReader` reads; the tests check both give the same values.
"""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from gguf import GGMLQuantizationType

__all__ = [
    "FLOAT_TYPE_NAMES",
    "GGUF_MAGIC",
    "QK_K",
    "GgufFileError",
    "GgufTensorInfo",
    "UnsupportedQuantizationError",
    "block_size",
    "block_view",
    "is_float_type",
    "is_gguf_file",
    "qtype_of",
    "read_gguf_header",
    "read_gguf_metadata",
    "row_bytes",
]

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)


class GgufFileError(ValueError):
    """A GGUF file is missing, truncated, or not the structure it announces; the message names the file."""


class UnsupportedQuantizationError(ValueError):
    """The GGML type is unknown, or known but has no decoder here."""


# GGUFValueType: id -> (struct code, width in bytes); 8 (string) and 9 (array) are read apart.
_SCALARS: dict[int, tuple[str, int]] = {
    0: ("B", 1),  # uint8
    1: ("b", 1),  # int8
    2: ("H", 2),  # uint16
    3: ("h", 2),  # int16
    4: ("I", 4),  # uint32
    5: ("i", 4),  # int32
    6: ("f", 4),  # float32
    7: ("?", 1),  # bool
    10: ("Q", 8),  # uint64
    11: ("q", 8),  # int64
    12: ("d", 8),  # float64
}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class GgufTensorInfo:
    """Where a tensor's bytes are: `dims` in GGUF order (fastest-varying first), `offset` from file start."""

    name: str
    dims: tuple[int, ...]
    qtype: int
    offset: int


class _Truncated(Exception):
    """The file ends before the structure it announces."""


def is_gguf_file(path: str | Path) -> bool:
    """Whether the file starts with the GGUF magic bytes (its name does not matter)."""
    try:
        with Path(path).open("rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def read_gguf_metadata(path: str | Path) -> dict[str, Any]:
    """Every metadata key of a GGUF file: strings as str, arrays as lists, numbers as int/float/bool.

    A missing, unreadable, truncated or non-GGUF file raises GgufFileError naming the problem.
    """
    return read_gguf_header(path, with_tensors=False)[0]


def read_gguf_header(
    path: str | Path, with_tensors: bool = True
) -> tuple[dict[str, Any], list[GgufTensorInfo]]:
    """The metadata and (for the model loader) the tensor descriptors of a GGUF file."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            if f.read(4) != GGUF_MAGIC:
                raise GgufFileError(f"{path} is not a GGUF file (it does not start with b'GGUF')")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                parser = _Parser(mm, path)
                metadata = parser.parse()
                return metadata, (parser.tensor_infos(metadata) if with_tensors else [])
    except FileNotFoundError:
        raise GgufFileError(f"GGUF file not found: {path}") from None
    except IsADirectoryError:
        raise GgufFileError(f"{path} is a directory, not a GGUF file") from None
    except (OSError, ValueError) as exc:
        if isinstance(exc, GgufFileError):
            raise
        raise GgufFileError(f"cannot read GGUF file {path}: {exc}") from exc


class _Parser:
    def __init__(self, buf: mmap.mmap, path: Path) -> None:
        self.buf = buf
        self.path = path
        self.size = len(buf)
        self.pos = 4
        self.order = "<"
        self.tensor_count = 0

    def parse(self) -> dict[str, Any]:
        key = "<header>"
        try:
            self._read_version()
            self.tensor_count = self._unpack("Q", 8)
            kv_count = self._unpack("Q", 8)
            if kv_count > self.size:
                raise _Truncated
            metadata: dict[str, Any] = {}
            for _ in range(kv_count):
                key = "<key>"
                key = self._string()
                metadata[key] = self._value(self._unpack("I", 4))
            return metadata
        except (_Truncated, struct.error):
            raise GgufFileError(
                f"{self.path}: GGUF file is truncated or corrupt (it ends inside metadata {key!r})"
            ) from None
        except UnicodeDecodeError as exc:
            raise GgufFileError(f"{self.path}: metadata {key!r} holds a string that is not UTF-8") from exc

    def tensor_infos(self, metadata: dict[str, Any]) -> list[GgufTensorInfo]:
        """Call after parse(): the tensor table that follows the metadata, offsets made absolute."""
        raw: list[tuple[str, tuple[int, ...], int, int]] = []
        try:
            for _ in range(self.tensor_count):
                name = self._string()
                n_dims = self._unpack("I", 4)
                dims = tuple(self._unpack("Q", 8) for _ in range(n_dims))
                raw.append((name, dims, self._unpack("I", 4), self._unpack("Q", 8)))
        except (_Truncated, struct.error):
            raise GgufFileError(
                f"{self.path}: GGUF file is truncated (it ends in the tensor table)"
            ) from None
        alignment = int(metadata.get("general.alignment", 32)) or 32
        data_start = -(-self.pos // alignment) * alignment
        return [GgufTensorInfo(name, dims, qtype, data_start + offset) for name, dims, qtype, offset in raw]

    def _read_version(self) -> None:
        version = self._unpack("I", 4)
        if version & 0xFFFF == 0:  # written big-endian: the version reads byte-swapped
            self.order = ">"
            version = struct.unpack(">I", struct.pack("<I", version))[0]
        if version not in SUPPORTED_VERSIONS:
            raise GgufFileError(
                f"{self.path}: GGUF version {version} is not supported (expected one of {SUPPORTED_VERSIONS})"
            )

    def _unpack(self, code: str, width: int) -> Any:
        if self.pos + width > self.size:
            raise _Truncated
        (value,) = struct.unpack_from(self.order + code, self.buf, self.pos)
        self.pos += width
        return value

    def _string(self) -> str:
        length = self._unpack("Q", 8)
        end = self.pos + length
        if end > self.size:
            raise _Truncated
        text = self.buf[self.pos : end].decode("utf-8")
        self.pos = end
        return text

    def _value(self, value_type: int) -> Any:
        if value_type in _SCALARS:
            return self._unpack(*_SCALARS[value_type])
        if value_type == _STRING:
            return self._string()
        if value_type == _ARRAY:
            item_type = self._unpack("I", 4)
            count = self._unpack("Q", 8)
            return self._array(item_type, count)
        raise GgufFileError(f"{self.path}: unknown GGUF value type {value_type} at byte {self.pos - 4}")

    def _array(self, item_type: int, count: int) -> list[Any]:
        if item_type in _SCALARS:
            code, width = _SCALARS[item_type]
            end = self.pos + count * width
            if end > self.size:
                raise _Truncated
            values = list(struct.unpack_from(f"{self.order}{count}{code}", self.buf, self.pos))
            self.pos = end
            return values
        if count > self.size - self.pos:  # every element takes at least one byte
            raise _Truncated
        if item_type == _STRING:
            return self._string_array(count)
        return [self._value(item_type) for _ in range(count)]

    def _string_array(self, count: int) -> list[str]:
        buf, pos, size = self.buf, self.pos, self.size
        length_at = struct.Struct(self.order + "Q").unpack_from
        out: list[str] = []
        append = out.append
        for _ in range(count):
            if pos + 8 > size:
                raise _Truncated
            (length,) = length_at(buf, pos)
            pos += 8
            end = pos + length
            if end > size:
                raise _Truncated
            append(buf[pos:end].decode("utf-8"))
            pos = end
        self.pos = pos
        return out


# --- Block layouts -------------------------------------------------------------------------------
# The table is gguf's GGML_QUANT_SIZES, imported on first use: importing the gguf package takes
# seconds (it imports mistral_common), which the header parser and the tokenizer do not need (nor numpy).

QK_K = 256  # values per block of the K-quants (Q2_K ... Q8_K)
FLOAT_TYPE_NAMES = frozenset({"F32", "F16", "BF16"})  # plain floats: one value per "block"


@cache
def _quant_sizes() -> dict[GGMLQuantizationType, tuple[int, int]]:
    from gguf import GGML_QUANT_SIZES

    return GGML_QUANT_SIZES


def qtype_of(qtype: int | str | GGMLQuantizationType) -> GGMLQuantizationType:
    """The GGML type from its number (as stored in the tensor table) or its name ("Q4_K", "q8_0")."""
    from gguf import GGMLQuantizationType

    try:
        if isinstance(qtype, str):
            return GGMLQuantizationType[qtype.strip().upper()]
        return GGMLQuantizationType(int(qtype))
    except (KeyError, ValueError):
        raise UnsupportedQuantizationError(f"unknown GGML quantization type {qtype!r}") from None


def is_float_type(qtype: int | str | GGMLQuantizationType) -> bool:
    """F32 / F16 / BF16: values stored as floats (no blocks to decode)."""
    return qtype_of(qtype).name in FLOAT_TYPE_NAMES


def block_size(qtype: int | str | GGMLQuantizationType) -> tuple[int, int]:
    """(values_per_block, bytes_per_block) of any type gguf knows, decoded here or not (for skipping)."""
    return _quant_sizes()[qtype_of(qtype)]


def row_bytes(qtype: int | str | GGMLQuantizationType, cols: int) -> int:
    """Bytes of one row of `cols` values; ValueError if the row is not a whole number of blocks."""
    values, nbytes = block_size(qtype)
    if cols % values:
        name = qtype_of(qtype).name
        raise ValueError(f"{name}: row length {cols} is not a multiple of the block size {values}")
    return cols // values * nbytes


def block_view(
    raw: np.ndarray | bytes | bytearray | memoryview,
    qtype: int | str | GGMLQuantizationType,
    shape: tuple[int, ...],
) -> np.ndarray:
    """A tensor's raw bytes as [n_blocks, bytes_per_block] uint8 (a view where possible), after
    checking that they fill `shape` (PyTorch order: a row is the last dim)."""
    import numpy as np

    if isinstance(raw, bytes | bytearray | memoryview):
        arr = np.frombuffer(raw, dtype=np.uint8)
    else:
        arr = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
    cols = int(shape[-1]) if shape else 1
    rows = math.prod(int(s) for s in shape[:-1])
    need = rows * row_bytes(qtype, cols)
    if arr.size != need:
        name = qtype_of(qtype).name
        raise ValueError(f"{name}: shape {tuple(shape)} needs {need} bytes, got {arr.size}")
    return arr.reshape(-1, block_size(qtype)[1])
