"""Read Universal Binary JSON (UBJSON draft 12), the format of XGBoost's ``.ubj`` models.

Serving needs the classifier's trees, not XGBoost: importing xgboost imports scikit-learn
and scipy with it (~100 MB of a sidecar's memory). This reader turns a model file into
plain values, numeric typed arrays into numpy arrays, and refuses anything malformed with
a UBJSONError: counts beyond the data, nesting deeper than ``MAX_DEPTH``, unknown markers.
Nothing it reads can run code.
"""

from __future__ import annotations

from typing import Any

import numpy as np

MAX_DEPTH = 64  # an XGBoost model nests 6 deep; a hostile file must not exhaust the stack

_NUMBERS = {  # marker -> big-endian numpy dtype
    b"i": ">i1",
    b"U": ">u1",
    b"I": ">i2",
    b"l": ">i4",
    b"L": ">i8",
    b"d": ">f4",
    b"D": ">f8",
}
_SIZES = {marker: np.dtype(dtype).itemsize for marker, dtype in _NUMBERS.items()}
_CONSTANTS = {b"Z": None, b"T": True, b"F": False}


class UBJSONError(ValueError):
    """The bytes are not UBJSON; the message says where and why."""


def loads(data: bytes) -> Any:
    """The one value ``data`` holds (an XGBoost model: a dict)."""
    reader = _Reader(memoryview(data))
    value = reader.value(reader.marker(), 0)
    if reader.position != len(data):
        raise UBJSONError(f"{len(data) - reader.position} bytes after the value")
    return value


class _Reader:
    def __init__(self, data: memoryview) -> None:
        self.data = data
        self.position = 0

    def take(self, size: int) -> memoryview:
        end = self.position + size
        if size < 0 or end > len(self.data):
            raise UBJSONError(f"at byte {self.position}: {size} bytes wanted, the data ends first")
        chunk = self.data[self.position : end]
        self.position = end
        return chunk

    def marker(self) -> bytes:
        marker = bytes(self.take(1))
        while marker == b"N":  # no-op padding
            marker = bytes(self.take(1))
        return marker

    def value(self, marker: bytes, depth: int) -> Any:
        if marker in _NUMBERS:
            return self.number(marker)
        if marker in _CONSTANTS:
            return _CONSTANTS[marker]
        if marker in (b"S", b"H"):
            return self.string()
        if marker == b"C":
            return self.text(1)
        if marker in (b"[", b"{"):
            if depth >= MAX_DEPTH:
                raise UBJSONError(f"at byte {self.position}: nested deeper than {MAX_DEPTH}")
            return self.array(depth + 1) if marker == b"[" else self.object(depth + 1)
        raise UBJSONError(f"at byte {self.position - 1}: unknown marker {marker!r}")

    def number(self, marker: bytes) -> int | float:
        value = np.frombuffer(self.take(_SIZES[marker]), dtype=_NUMBERS[marker])[0]
        return float(value) if marker in (b"d", b"D") else int(value)

    def count(self) -> int:
        marker = self.marker()
        if marker not in _NUMBERS or marker in (b"d", b"D"):
            raise UBJSONError(f"at byte {self.position - 1}: a length must be an integer, got {marker!r}")
        size = self.number(marker)
        if size < 0:
            raise UBJSONError(f"at byte {self.position}: negative length {size}")
        return size

    def text(self, size: int) -> str:
        try:
            return str(self.take(size), "utf-8")
        except UnicodeDecodeError as exc:
            raise UBJSONError(f"at byte {self.position}: a string is not UTF-8: {exc}") from None

    def string(self) -> str:
        return self.text(self.count())

    def header(self) -> tuple[bytes | None, int | None]:
        """A container's optional ``$type`` and ``#count``."""
        kind = count = None
        if bytes(self.data[self.position : self.position + 1]) == b"$":
            self.position += 1
            kind = self.marker()
            if bytes(self.data[self.position : self.position + 1]) != b"#":
                raise UBJSONError(f"at byte {self.position}: a typed container needs a count")
        if bytes(self.data[self.position : self.position + 1]) == b"#":
            self.position += 1
            count = self.count()
            if count > len(self.data) - self.position:  # every item takes a byte (nulls too, here)
                raise UBJSONError(f"at byte {self.position}: {count} items, more than the bytes left")
        return kind, count

    def array(self, depth: int) -> list | np.ndarray:
        kind, count = self.header()
        if kind in _NUMBERS and count is not None:
            dtype = np.dtype(_NUMBERS[kind])
            raw = np.frombuffer(self.take(count * dtype.itemsize), dtype=dtype)
            return raw.astype(dtype.newbyteorder("="))
        items = []
        while count is None or len(items) < count:
            marker = kind or self.marker()
            if count is None and marker == b"]":
                return items
            items.append(self.value(marker, depth))
        return items

    def object(self, depth: int) -> dict:
        kind, count = self.header()
        items: dict[str, Any] = {}
        read = 0
        while count is None or read < count:
            if count is None and bytes(self.data[self.position : self.position + 1]) == b"}":
                self.position += 1
                return items
            key = self.string()
            items[key] = self.value(kind or self.marker(), depth)
            read += 1
        return items
