"""Environment variables read on every call, at the cost of a dict lookup.

``os.environ.get(name)`` for an unset variable raises and catches a ``KeyError`` inside
``Mapping.get``: about 1 us, and several with autograd's saved frames around (measured by
benchmarks/host_overhead.py). ``EnvVar.get`` reads the same mapping's underlying dict
(``os.environ._data``, kept in step with every ``os.environ`` change), falling back to
``os.environ.get`` where a Python lacks it.
"""

from __future__ import annotations

import os


class EnvVar:
    """One environment variable, read cheaply: ``EnvVar("NAME").get()`` is
    ``os.environ.get("NAME", "")``."""

    __slots__ = ("name", "_key", "_data", "_decode")

    def __init__(self, name: str):
        self.name = name
        data = getattr(os.environ, "_data", None)
        encode = getattr(os.environ, "encodekey", None)
        decode = getattr(os.environ, "decodevalue", None)
        fast = isinstance(data, dict) and callable(encode) and callable(decode)
        self._data = data if fast else None
        self._key = encode(name) if fast else None
        self._decode = decode

    def get(self) -> str:
        """The variable's value, '' when unset."""
        if self._data is None:
            return os.environ.get(self.name, "")
        raw = self._data.get(self._key)
        return "" if raw is None else self._decode(raw)
