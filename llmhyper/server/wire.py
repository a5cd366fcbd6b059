"""The wire bytes of a Rank request: its inline dense features read straight from them.

``request.features`` of a parsed ``RankRequest`` is a protobuf container; turning its F
values into a float32 array (``np.fromiter``) makes F Python floats and costs more than the
scoring kernel. On the wire the values are already one packed little-endian float32 run. The
Rank request deserializer (:func:`keeping_wire`, run by grpc in its serving thread) keeps the
bytes of a request that starts with that field, keyed by the message it parsed them into; the
handler (in a worker thread) takes them back first thing with :func:`take_wire`, and
:func:`packed_features` makes a zero-copy float32 view of the run.

The view is used only when it provably holds exactly the request's values: the bytes were
parsed into this very message object (looked up by ``id`` and checked by identity; the entry
holds the message, so its id cannot be reused meanwhile), and they begin with one packed
``features`` field whose length is 4 x the number of values protobuf parsed (any other chunk or
unpacked value would make that number larger). Otherwise it returns None and the caller
converts the container as before. Entries of calls that never reach the handler (cancelled,
shed) are dropped wholesale once ``_MAX_PENDING`` are waiting; only requests of at most
``_MAX_KEPT_BYTES`` are kept.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

_LE_F32 = np.dtype("<f4")
_F32 = np.dtype(np.float32)
_FEATURES_TAG = 0x12  # RankRequest.features: field 2, wire type 2 (length-delimited, packed)
_MAX_PENDING = 256
_MAX_KEPT_BYTES = 64 << 10  # so at most 16 MiB are kept for calls that never reach the handler
_pending: dict[int, tuple[Any, bytes]] = {}  # id(message) -> (message, its bytes)


def keeping_wire(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """``deserialize`` that also keeps the bytes of a request starting with packed features
    for :func:`packed_features`."""
    pending = _pending

    def deserialize_keeping_wire(data: bytes) -> Any:
        msg = deserialize(data)
        if data[:1] == b"\x12" and len(data) <= _MAX_KEPT_BYTES and data.__class__ is bytes:
            if len(pending) >= _MAX_PENDING:
                pending.clear()  # calls that never reached their handler; the rest convert instead
            pending[id(msg)] = (msg, data)
        return msg

    return deserialize_keeping_wire


def take_wire(request: Any) -> bytes | None:
    """The bytes :func:`keeping_wire` parsed into this very ``request`` object, taken out of
    the store (a second call returns None); None when none were kept."""
    pair = _pending.pop(id(request), None)
    if pair is None or pair[0] is not request:
        return None
    return pair[1]


def packed_features(data: bytes, n: int) -> np.ndarray | None:
    """Read-only float32 [n] view of the request's ``features`` in its wire bytes ``data`` (from
    :func:`take_wire`), or None when they cannot be shown to be exactly its ``n`` values (see
    the module docstring). ``n``: ``len(request.features)``, at least 1."""
    if len(data) < 2 or data[0] != _FEATURES_TAG:
        return None
    length, shift, pos = 0, 0, 1
    while True:  # the field's length: a base-128 varint
        if pos >= len(data) or shift > 28:
            return None
        b = data[pos]
        pos += 1
        length |= (b & 0x7F) << shift
        if b < 0x80:
            break
        shift += 7
    if length != 4 * n or pos + length > len(data):
        return None
    x = np.frombuffer(data, dtype=_LE_F32, count=n, offset=pos)
    return x if _LE_F32 == _F32 else x.astype(_F32)  # a big-endian host needs a native copy
