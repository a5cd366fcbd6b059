"""Where the users of a load test come from: the store's user table, a file of ids, or one
inline feature vector.

Call ``m`` of a test (counted from 0 over all processes) uses user ``m % N`` (RankBatch call
``m`` uses users ``m*B .. m*B+B-1``, modulo N), so what every call asks is fixed in advance
and status counts are reproducible: a file with one unknown id among N gives exactly
``calls / N`` NOT_FOUND answers when ``calls`` is a multiple of N.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["UserSourceError", "Users", "from_features", "from_file", "from_store"]


class UserSourceError(ValueError):
    """A user source that cannot be used; the message names the option and the file."""


@dataclass(frozen=True)
class Users:
    """The users a test cycles through.

    Attributes:
        ids: N user ids (empty when only an inline vector is sent).
        X: float32 [N, F] feature rows sent inline, or None (requests name ``ids``).
        feature_map: one name -> value map sent inline on every call, or None.
        source: where they came from, for the report ("store:PATH", "file:PATH", "inline").
    """

    ids: list[str]
    X: np.ndarray | None = None
    feature_map: dict[str, float] | None = None
    source: str = ""
    features: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        if self.X is not None:
            return int(self.X.shape[0])
        return len(self.ids) if self.ids else 1

    @property
    def inline(self) -> bool:
        return self.X is not None or self.feature_map is not None


def from_store(path: str, *, with_features: bool, limit: int | None = None) -> Users:
    """Users of the store's user table (key order, at most ``limit``), read via WeightStore.

    ``with_features``: also read their rows (float32 [N, F]) to send inline.
    """
    p = Path(path)
    if not p.exists():
        raise UserSourceError(f"--store: store not found: {path}")
    from llmhyper.store.weight_store import StoreError, WeightStore

    try:
        with WeightStore(p, readonly=True) as store:
            ids = store.user_ids(limit)
            if not ids:
                raise UserSourceError(f"--store: the store {path} has no user table (publish with users)")
            X = store.user_matrix(ids) if with_features else None
            names = [n for n, _ in store.user_features() or ()]
    except StoreError as e:
        raise UserSourceError(f"--store: cannot read {path}: {e}") from None
    return Users(ids=ids, X=X, source=f"store:{p}", features=names)


def from_file(path: str, *, limit: int | None = None) -> Users:
    """User ids from a text file (one per line; blank lines and ``#`` comments skipped) or from
    the ``user_id`` column of a ``.csv`` file."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise UserSourceError(f"--users-file: cannot read {path}: {e.strerror or e}") from None
    if p.suffix.lower() == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
        if rows and "user_id" not in rows[0]:
            raise UserSourceError(f"--users-file: {path} has no 'user_id' column (columns: {list(rows[0])})")
        ids = [(r.get("user_id") or "").strip() for r in rows]
        for line, uid in enumerate(ids, start=2):
            if not uid:
                raise UserSourceError(f"--users-file: {path} line {line}: empty user_id")
    else:
        ids = [s.strip() for s in text.splitlines()]
        ids = [s for s in ids if s and not s.startswith("#")]
    if not ids:
        raise UserSourceError(f"--users-file: {path} lists no user ids")
    if limit is not None:
        ids = ids[:limit]
    return Users(ids=ids, source=f"file:{p}")


def from_features(values: list[float] | dict[str, float]) -> Users:
    """One inline user: a dense vector (schema order, F floats) or a name -> value map."""
    if isinstance(values, dict):
        return Users(ids=[], feature_map=dict(values), source="inline")
    X = np.asarray(values, dtype=np.float32).reshape(1, -1)
    return Users(ids=[], X=X, source="inline")
