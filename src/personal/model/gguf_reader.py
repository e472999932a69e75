"""Read and check a GGUF file's header before any tensor is trusted.

MLX's GGUF reader (``mx.load``) decodes F32, F16, BF16 (as float16), Q4_0, Q4_1 and Q8_0
tensors. Other types are *not* refused: a Q4_K tensor comes back as garbage float16 values
(measured with MLX 0.32). So the importer parses the header itself (metadata, tensor names,
shapes, types and offsets, per https://github.com/ggml-org/ggml/blob/master/docs/gguf.md),
refuses unsupported types by name and checks that every tensor lies inside the file, and only
then lets ``mx.load`` read the tensors.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from personal.errors import CorruptWeights, ModelNotFound, UnsupportedQuantization

import numpy as np

# ggml tensor type -> name (for messages), from ggml.h.
GGML_TYPE_NAMES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1",
    10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS",
    17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S",
    23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M",
    30: "BF16", 34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4",
}  # fmt: skip
# Types MLX reads correctly: (bytes per block, values per block).
READABLE = {0: (4, 1), 1: (2, 1), 30: (2, 1), 2: (18, 32), 3: (20, 32), 8: (34, 32)}
# Quantized types and the bits of the MLX affine quantization they load as (group size 32).
QUANT_BITS = {2: 4, 3: 4, 8: 8}
BF16 = 30

# Metadata value types: struct format of the scalar ones; 8 is a string, 9 an array.
_SCALARS = dict(enumerate("BbHhIif?")) | {10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a GGUF file: its name, row-major shape and ggml type."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int

    @property
    def type_name(self) -> str:
        return GGML_TYPE_NAMES.get(self.ggml_type, f"type {self.ggml_type}")


@dataclass(frozen=True)
class GGUFHeader:
    """What a GGUF file says about itself: metadata and tensor table."""

    metadata: dict[str, Any]
    tensors: list[TensorInfo]


class _Cursor:
    """Bounds-checked reads from a buffer; running off the end means a truncated file."""

    def __init__(self, buf: memoryview) -> None:
        self.buf, self.pos = buf, 0

    def unpack(self, fmt: str) -> Any:
        values = struct.unpack_from("<" + fmt, self.buf, self.pos)  # struct.error past the end
        self.pos += struct.calcsize("<" + fmt)
        return values[0] if len(values) == 1 else values

    def string(self) -> str:
        n = self.unpack("Q")
        if self.pos + n > len(self.buf):
            raise struct.error("string runs past the end of the file")
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return raw.decode("utf-8")

    def value(self, kind: int) -> Any:
        if kind in _SCALARS:
            return self.unpack(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind != _ARRAY:
            raise ValueError(f"unknown metadata value type {kind}")
        item, n = self.unpack("IQ")
        if item in _SCALARS:  # numbers in one go: token_type has ~50k entries
            dtype = np.dtype("<" + _SCALARS[item])
            if self.pos + n * dtype.itemsize > len(self.buf):
                raise struct.error("array runs past the end of the file")
            array = np.frombuffer(self.buf, dtype, count=n, offset=self.pos)
            self.pos += n * dtype.itemsize
            return array.tolist()
        if n > len(self.buf) - self.pos:  # every element takes at least one byte
            raise struct.error("array runs past the end of the file")
        return [self.value(item) for _ in range(n)]


def _corrupt(path: Path, why: str) -> CorruptWeights:
    return CorruptWeights(
        f"{path} is not a readable GGUF file ({why}). It is truncated or corrupt: download or "
        "copy it again (compare its SHA-256 with the publisher's)."
    )


def _parse(path: Path, buf: memoryview) -> tuple[GGUFHeader, list[int]]:
    cur = _Cursor(buf)
    if bytes(buf[:4]) != b"GGUF":
        raise _corrupt(path, "no GGUF magic number")
    version, n_tensors, n_kv = cur.unpack("4xIQQ")
    if version not in (2, 3):
        raise _corrupt(path, f"GGUF version {version}; versions 2 and 3 are supported")
    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key = cur.string()
        metadata[key] = cur.value(cur.unpack("I"))
    tensors, offsets = [], []
    for _ in range(n_tensors):
        name = cur.string()
        n_dims = cur.unpack("I")
        if not 1 <= n_dims <= 4:
            raise _corrupt(path, f"tensor {name!r} has {n_dims} dimensions")
        dims = cur.unpack(f"{n_dims}Q")
        dims = (dims,) if n_dims == 1 else dims
        ggml_type, offset = cur.unpack("IQ")
        # GGUF lists the fastest-varying dimension first; MLX and numpy list it last.
        tensors.append(TensorInfo(name, tuple(reversed(dims)), ggml_type))
        offsets.append(offset)
    alignment = int(metadata.get("general.alignment", 32))
    data_start = cur.pos + (-cur.pos % alignment)
    return GGUFHeader(metadata, tensors), [data_start + o for o in offsets]


def _check_tensors(path: Path, tensors: list[TensorInfo], starts: list[int], size: int) -> None:
    unsupported = sorted({t.type_name for t in tensors if t.ggml_type not in READABLE})
    if unsupported:
        raise UnsupportedQuantization(
            f"{path} stores tensors as {', '.join(unsupported)}, which personal cannot read "
            "(MLX decodes F32, F16, BF16, Q4_0, Q4_1 and Q8_0 only). Use a GGUF of one of "
            "those types (llama.cpp's llama-quantize --allow-requantize can re-quantize to "
            "Q8_0), or convert the original Hugging Face checkpoint with mlx_lm.convert."
        )
    for info, start in zip(tensors, starts, strict=True):
        block_bytes, block = READABLE[info.ggml_type]
        count = int(np.prod(info.shape))
        if info.shape[-1] % block:
            raise _corrupt(path, f"tensor {info.name!r} rows are not whole {block}-blocks")
        if start + count // block * block_bytes > size:
            raise _corrupt(path, f"tensor {info.name!r} extends past the end of the file")


def read_header(path: str | Path) -> GGUFHeader:
    """Parse and check a GGUF file's header without reading its tensor data.

    Raises:
        ModelNotFound: no file at ``path``.
        CorruptWeights: not a GGUF file, truncated, or a tensor lies outside the file.
        UnsupportedQuantization: a tensor type MLX cannot decode (K-quants, IQ types, ...).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelNotFound(f"No GGUF file at {str(path)!r}. Pass the path of a .gguf file.")
    size = path.stat().st_size
    if size < 24:
        raise _corrupt(path, f"{size} bytes, shorter than a GGUF header")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        view = memoryview(mapped)
        try:
            header, starts = _parse(path, view)
        except (struct.error, ValueError, UnicodeDecodeError, OverflowError) as exc:
            raise _corrupt(path, f"header: {exc}") from exc
        finally:
            view.release()
    _check_tensors(path, header.tensors, starts, size)
    return header
