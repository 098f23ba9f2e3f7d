"""Weight files read by their headers (`.npz` or `.safetensors`): shapes first, data memory-mapped on demand; a
PyTorch state dict (`.pt`, dictionary_learning's `ae.pt`) is read with `torch.load(weights_only=True, mmap=True)`,
which unpickles tensors and plain containers only."""

from __future__ import annotations

import json
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from saezarr.durable.npyzip import load_member, read_members

PT_SUFFIXES = (".pt", ".pth")  # PyTorch state dicts, read with torch.load(weights_only=True)
# safetensors dtypes numpy reads as they are; BF16 is read as uint16 and widened
_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16}


class WeightsUnreadable(ValueError):
    """A weight file that is damaged or not in the format its name says."""


@dataclass(frozen=True)
class Tensor:
    """One array of a weight file: where its data starts (None: a compressed `.npz` member) and its shape."""

    key: str
    shape: tuple[int, ...]
    dtype: str
    offset: int | None


def read_header(path: Path) -> dict[str, Tensor]:
    """Every array of a weight file by name, from its header alone."""
    try:
        if path.suffix == ".npz":
            return _npz_header(path)
        if path.suffix in PT_SUFFIXES:
            return _pt_header(path)
        return _safetensors_header(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError, TypeError, struct.error, RuntimeError) as exc:
        raise WeightsUnreadable(str(exc) or type(exc).__name__) from None
    except pickle.UnpicklingError as exc:  # torch.load(weights_only=True) met something other than tensors
        unsafe = next((line.strip() for line in str(exc).splitlines() if "Unsupported global" in line), "")
        raise WeightsUnreadable(f"it holds more than tensors, which saezarr never unpickles ({unsafe})") from None


def _npz_header(path: Path) -> dict[str, Tensor]:
    tensors = {}
    for key, member in read_members(path).items():
        if not member.complete:
            raise WeightsUnreadable(
                f"{key} has {member.stored_bytes} bytes, its header says {member.expected_bytes}; download it again"
            )
        if member.fortran_order:
            raise WeightsUnreadable(f"{key} is stored in Fortran order, which saezarr does not read")
        tensors[key] = Tensor(key, member.shape, member.dtype.str, member.data_offset)
    return tensors


def _pt_state(path: Path) -> dict:
    """A `.pt` state dict's tensors by name (memory-mapped; nothing but tensors and containers is unpickled)."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if not isinstance(state, dict):
        raise WeightsUnreadable(f"expected a state dict, got {type(state).__name__}")
    return {key: value for key, value in state.items() if isinstance(value, torch.Tensor)}


def _pt_header(path: Path) -> dict[str, Tensor]:
    tensors = {}
    for key, value in _pt_state(path).items():
        dtype = "BF16" if str(value.dtype) == "torch.bfloat16" else value.numpy().dtype.str
        tensors[key] = Tensor(key, tuple(value.shape), dtype, None)
    return tensors


def _pt_array(path: Path, key: str) -> np.ndarray:
    """One tensor of a `.pt` state dict as numpy (bfloat16 as its uint16 bits, as `as_float32` widens them)."""
    import torch

    value = _pt_state(path)[key]
    if value.dtype == torch.bfloat16:
        return value.view(torch.int16).numpy().view(np.uint16)
    return value.numpy()


def _safetensors_header(path: Path) -> dict[str, Tensor]:
    size = path.stat().st_size
    with open(path, "rb") as file:
        (length,) = struct.unpack("<Q", file.read(8))
        if length > size - 8:
            raise WeightsUnreadable(f"header of {length} bytes in a file of {size}")
        header = json.loads(file.read(length))
    tensors = {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        if entry["dtype"] not in _SAFETENSORS_DTYPES:
            raise WeightsUnreadable(f"{key} has dtype {entry['dtype']}, which saezarr does not read")
        start, stop = entry["data_offsets"]
        shape = tuple(int(n) for n in entry["shape"])
        itemsize = np.dtype(_SAFETENSORS_DTYPES[entry["dtype"]]).itemsize
        if stop - start != int(np.prod(shape, dtype=np.int64)) * itemsize or 8 + length + stop > size:
            raise WeightsUnreadable(f"{key} is truncated or its offsets do not match its shape; download it again")
        tensors[key] = Tensor(key, shape, entry["dtype"], 8 + length + start)
    return tensors


def mapped(path: Path, tensor: Tensor) -> np.ndarray:
    """A tensor's data memory-mapped copy-on-write (read whole for a compressed `.npz` member), as stored."""
    if path.suffix in PT_SUFFIXES:
        return _pt_array(path, tensor.key)
    if tensor.offset is None:  # a compressed `.npz` member (a safetensors array always has an offset)
        return load_member(path, next(m for k, m in read_members(path).items() if k == tensor.key))
    dtype = np.dtype(tensor.dtype if path.suffix == ".npz" else _SAFETENSORS_DTYPES[tensor.dtype])
    return np.memmap(path, dtype=dtype, mode="c", offset=tensor.offset, shape=tensor.shape)


def read_columns(path: Path, tensor: Tensor, start: int, stop: int) -> np.ndarray:
    """Columns [start, stop) of a stored 2-D tensor, read row by row into this process's memory (not mapped: a
    column tile of a mapped row-major array would map nearly every page of it), as float32."""
    if tensor.offset is None:
        return as_float32(mapped(path, tensor)[:, start:stop], tensor)
    dtype = np.dtype(tensor.dtype if path.suffix == ".npz" else _SAFETENSORS_DTYPES[tensor.dtype])
    rows, columns = tensor.shape
    tile = np.empty((rows, stop - start), dtype=dtype)
    row_bytes, skip = columns * dtype.itemsize, start * dtype.itemsize
    with open(path, "rb", buffering=0) as file:
        for row in range(rows):
            file.seek(tensor.offset + row * row_bytes + skip)
            if file.readinto(memoryview(tile[row]).cast("B")) != tile[row].nbytes:
                raise WeightsUnreadable(f"{tensor.key} is truncated")
    return as_float32(tile, tensor)


def read_rows(path: Path, tensor: Tensor, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of a stored 2-D tensor, read into this process's memory, as float32."""
    return as_float32(np.array(mapped(path, tensor)[start:stop]), tensor)


def as_float32(array: np.ndarray, tensor: Tensor) -> np.ndarray:
    """A (part of a) tensor as float32; the same memory where it already is float32 and contiguous."""
    if tensor.dtype == "BF16":
        widened = np.ascontiguousarray(array).astype(np.uint32) << 16
        return widened.view(np.float32)
    return np.ascontiguousarray(array, dtype=np.float32)
