"""Content-hash disk cache helpers: stable keys and atomic file writes.

Keys are sha256 hex digests of the content a result depends on, so a cache entry can never be
served for changed input. Writes go to a temporary file in the same directory and are moved
into place with ``os.replace`` so a killed process never leaves a half-written entry.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path

import numpy as np


def content_hash(*parts: str | bytes) -> str:
    """sha256 hex digest of the parts, length-prefixed so ('ab','c') != ('a','bc')."""
    h = hashlib.sha256()
    for p in parts:
        b = p.encode("utf-8") if isinstance(p, str) else bytes(p)
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (tmp file in the same directory, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def save_npy_atomic(path: str | os.PathLike, arr: np.ndarray) -> None:
    """Save one array as .npy atomically."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(arr), allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def load_npy(path: str | os.PathLike) -> np.ndarray | None:
    """Load a cached .npy, or None if it is missing or unreadable (a corrupt entry is a miss)."""
    try:
        return np.load(path, allow_pickle=False)
    except (FileNotFoundError, ValueError, OSError, EOFError):
        return None


class NpyCache:
    """A directory of ``<key[:2]>/<key>.npy`` files keyed by content hash."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npy"

    def get(self, key: str) -> np.ndarray | None:
        return load_npy(self.path(key))

    def put(self, key: str, arr: np.ndarray) -> None:
        save_npy_atomic(self.path(key), arr)
