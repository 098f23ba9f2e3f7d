"""Reading `.npz` archives by their headers: shapes and dtypes without the data, and zero-copy members."""

from __future__ import annotations

import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, then file-name and extra-field lengths at byte 26


@dataclass(frozen=True)
class NpyMember:
    """One array of an `.npz`: its header, and where its data starts in the file if it is stored uncompressed."""

    key: str
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    header_bytes: int
    stored_bytes: int
    data_offset: int | None

    @property
    def expected_bytes(self) -> int:
        """The member's size that its header promises."""
        return self.header_bytes + int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    @property
    def complete(self) -> bool:
        """True if the member holds exactly as many bytes as its header promises."""
        return self.stored_bytes == self.expected_bytes


def read_members(path: str | Path) -> dict[str, NpyMember]:
    """The headers of every array in an `.npz` file, keyed by array name."""
    members = {}
    with zipfile.ZipFile(path) as archive, open(path, "rb") as raw:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                continue
            with archive.open(info) as member:
                major, _ = np.lib.format.read_magic(member)
                read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                shape, fortran_order, dtype = read_header(member)
                header_bytes = member.tell()
            data_offset = None
            if info.compress_type == zipfile.ZIP_STORED:
                raw.seek(info.header_offset)
                _, name_length, extra_length = _LOCAL_HEADER.unpack(raw.read(_LOCAL_HEADER.size))
                data_offset = info.header_offset + 30 + name_length + extra_length + header_bytes
            key = info.filename[: -len(".npy")]
            members[key] = NpyMember(key, tuple(shape), dtype, fortran_order, header_bytes, info.file_size, data_offset)
    return members


def load_member(path: str | Path, member: NpyMember) -> np.ndarray:
    """One array of an `.npz`: memory-mapped (copy-on-write) when stored uncompressed, else read."""
    if member.data_offset is None or member.dtype.hasobject:
        with np.load(path) as archive:
            return archive[member.key]
    order: Literal["C", "F"] = "F" if member.fortran_order else "C"
    return np.memmap(path, dtype=member.dtype, mode="c", offset=member.data_offset, shape=member.shape, order=order)
