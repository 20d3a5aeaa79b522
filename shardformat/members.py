"""Member payloads of one sample: pread access to tar ranges, .npy headers, .json members."""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from shardformat.names import ShardError
from shardformat.tarindex import TarRange


class SampleReader:
    """Payload access for one sample: tar ranges are read with pread (thread-safe, releases the GIL);
    bytes already in memory (samples of `wds.tarfile_to_samples`) are sliced."""

    def __init__(self, sample: dict[str, Any]) -> None:
        self.sample, self.key = sample, sample.get("__key__", "?")
        self.where = f"{sample.get('__url__', '?')}: sample {self.key}"
        self._fd: int | None = None

    def require(self, member: str) -> None:
        if member not in self.sample:
            raise ShardError(f"{self.where}: missing member {self.key}.{member}")

    def size(self, member: str) -> int:
        value = self.sample[member]
        return value.size if isinstance(value, TarRange) else len(value)

    def read(self, member: str, start: int = 0, size: int | None = None) -> bytes | memoryview:
        value = self.sample[member]
        size = self.size(member) - start if size is None else size
        if not isinstance(value, TarRange):
            return memoryview(value)[start : start + size]
        data = os.pread(self._file(), size, value.offset + start)
        if len(data) != size:
            raise ShardError(f"{self.where}: {member} is truncated")
        return data

    def read_into(self, member: str, start: int, dest: np.ndarray) -> None:
        """Fill the C-contiguous `dest` with the member's bytes from `start` on (no intermediate copy)."""
        target = memoryview(dest).cast("B")
        value = self.sample[member]
        if not isinstance(value, TarRange):
            target[:] = memoryview(value)[start : start + len(target)]
            return
        done = 0
        while done < len(target):
            n = os.preadv(self._file(), [target[done:]], value.offset + start + done)
            if n <= 0:
                raise ShardError(f"{self.where}: {member} is truncated")
            done += n

    def _file(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.sample["__url__"], os.O_RDONLY)
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def read_json(reader: SampleReader, member: str) -> Any:
    """A .json member, parsed; a syntax error names the sample, member and line."""
    reader.require(member)
    try:
        return json.loads(bytes(reader.read(member)))
    except json.JSONDecodeError as exc:
        raise ShardError(f"{reader.where}: {member} line {exc.lineno}: {exc.msg}") from None


@dataclass(frozen=True)
class NpyLayout:
    """A C-order .npy member: where its data starts, its dtype and shape."""

    member: str
    start: int
    dtype: np.dtype
    shape: tuple[int, ...]


def npy_layout(reader: SampleReader, member: str) -> NpyLayout:
    """Parse the .npy header only (magic, version, header dict); the data is read per frame later."""
    reader.require(member)
    total = reader.size(member)
    prefix = bytes(reader.read(member, 0, min(total, 12)))
    try:
        major = np.lib.format.read_magic(io.BytesIO(prefix))[0]
        if len(prefix) < 12:
            raise ValueError("the file is shorter than an .npy header")
        header_end = (
            10 + int.from_bytes(prefix[8:10], "little") if major == 1 else 12 + int.from_bytes(prefix[8:12], "little")
        )
        stream = io.BytesIO(bytes(reader.read(member, 0, min(total, header_end))))
        np.lib.format.read_magic(stream)
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(stream)
    except ValueError as exc:
        raise ShardError(f"{reader.where}: {member}: {exc}") from None
    if fortran or dtype.hasobject:
        raise ShardError(
            f"{reader.where}: {member}: {'Fortran-order' if fortran else 'object'} array; "
            "expected a C-order numeric array"
        )
    start = stream.tell()
    expected = start + int(np.prod(shape)) * dtype.itemsize
    if total != expected:
        raise ShardError(f"{reader.where}: {member}: {total} bytes, its header {shape} {dtype} needs {expected}")
    return NpyLayout(member, start, dtype, tuple(shape))
