"""The user-feature table: one-transaction snapshots of it, a long-lived view, and its writer."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import lmdb
import numpy as np

from llmhyper.store.env import _Env
from llmhyper.store.validate import InvalidWeights, UserNotFound, check_features, check_ids, check_matrix, to_json
from llmhyper.store.views import DTYPE as _DTYPE

__all__ = ["UsersSnapshot", "UsersView", "read_user_vector", "rows_to_matrix", "scan_user_ids", "users_writer"]


@dataclass(frozen=True)
class UsersSnapshot:
    """What :meth:`WeightStore.users_snapshot` read in one transaction: the current version id
    (None for an empty store), the user table's (name, description) schema (None without a
    table), its number of users, and the requested rows X float32 [B, F_user]."""

    version: str | None
    features: tuple[tuple[str, str], ...] | None
    n_users: int
    X: np.ndarray


class UsersView:
    """The user table as of one LMDB snapshot, with the version that was current in it.

    Holds one read transaction (a reader slot) until :meth:`close`; :meth:`rows` reads rows from
    that snapshot, so they always belong with ``version``. Thread-safe (one lock around the
    transaction, which LMDB allows only one thread at a time).

    :meth:`row` (one user) keeps the rows it has read in a dict owned by this snapshot, up to
    ``ROW_CACHE_BYTES`` of row data: the snapshot never changes, so a cached row is still the
    row of ``version``, and it goes away with the snapshot."""

    __slots__ = ("version", "features", "n_users", "txnid", "_txn", "_db", "_F", "_lock", "_gen", "_e",
                 "_cache", "_cache_max")

    ROW_CACHE_BYTES = 32 << 20

    def __init__(self, e: "_Env") -> None:
        self._e = e
        self._gen = e.remap_gen
        self._txn: lmdb.Transaction[bytes] | None = e.begin_read()
        meta = e.dbs["meta"]
        try:
            self.txnid = int(self._txn.id())
            cur = self._txn.get(b"current", db=meta)
            feats_b = self._txn.get(b"user_features", db=meta)
            n_b = self._txn.get(b"n_users", db=meta)
        except BaseException:
            self._txn.abort()
            raise
        self.version = None if cur is None else cur.decode()
        self.features = None if feats_b is None else tuple((str(n), str(d)) for n, d in json.loads(feats_b))
        self.n_users = 0 if n_b is None else int(n_b)
        self._F = 0 if self.features is None else len(self.features)
        self._db = e.dbs["users"]
        self._lock = threading.Lock()
        self._cache: dict[str, np.ndarray] = {}
        self._cache_max = self.ROW_CACHE_BYTES // (4 * self._F + 200)  # + ~200 bytes of object per row

    def fresh(self) -> bool:
        """True while nothing was committed to the store since this snapshot (one cheap read of
        LMDB's meta page, no transaction): its rows and version are then the store's current ones."""
        try:
            return int(self._e.env.info()["last_txnid"]) == self.txnid
        except lmdb.Error:
            return False

    def rows(self, user_ids: Sequence[str]) -> np.ndarray | None:
        """float32 [B, F_user] rows of ``user_ids`` from this snapshot; raises UserNotFound for
        an unknown id; None when the snapshot was closed or invalidated by a remap (read the
        store instead)."""
        out = np.empty((len(user_ids), self._F), dtype=np.float32)
        with self._lock:
            txn = self._txn
            if txn is None or self._gen != self._e.remap_gen:
                return None
            try:
                for i, u in enumerate(user_ids):
                    b = txn.get(u.encode(), db=self._db) if isinstance(u, str) and u else None
                    if b is None:
                        raise UserNotFound(f"unknown user id {u!r}", u)
                    out[i] = np.frombuffer(b, dtype=_DTYPE)
            except lmdb.Error:
                return None
        return out

    def row(self, user_id: str) -> np.ndarray | None:
        """Read-only float32 [F_user] row of ``user_id`` from this snapshot, from the snapshot's
        cache after the first read; UserNotFound for an unknown id; None when the snapshot was
        closed or invalidated by a remap (read the store instead)."""
        r = self._cache.get(user_id)
        if r is not None and self._txn is not None:
            return r
        X = self.rows((user_id,))
        if X is None:
            return None
        r = X[0]
        r.flags.writeable = False
        cache = self._cache
        if len(cache) < self._cache_max:
            cache[user_id] = r
        return r

    def close(self) -> None:
        """Release the read transaction (later :meth:`rows` and :meth:`row` calls return None)."""
        with self._lock:
            txn, self._txn = self._txn, None
            self._cache = {}
        if txn is not None:
            try:
                txn.abort()
            except lmdb.Error:
                pass


def users_writer(e: _Env, user_ids: Sequence[str], X: Any,
                 features: Sequence[Any]) -> tuple[Callable[[lmdb.Transaction[bytes]], None], int]:
    """Validate a user table (N ids, X float32-castable [N, F_user] with bias column 1.0,
    F_user features); return (a function writing it inside a write txn of ``e``, its size hint
    in bytes). Raises InvalidWeights for bad input."""
    ids = check_ids(user_ids, "user_ids")
    feats = check_features(features)
    mat = check_matrix(X, "X", len(ids), len(feats))
    if not np.all(mat[:, 0] == 1.0):
        bad = int(np.flatnonzero(mat[:, 0] != 1.0)[0])
        raise InvalidWeights(f"X[:, 0] is the 'bias' feature and must be 1.0; "
                             f"user {ids[bad]!r} has {mat[bad, 0]!r}")
    feats_json = to_json([list(f) for f in feats], "features")
    dbs = e.dbs

    def write(txn: lmdb.Transaction[bytes]) -> None:
        txn.drop(dbs["users"], delete=False)
        for uid, row in zip(ids, mat):
            txn.put(uid.encode(), row.tobytes(), db=dbs["users"])
        txn.put(b"user_features", feats_json, db=dbs["meta"])
        txn.put(b"n_users", str(len(ids)).encode(), db=dbs["meta"])
        txn.put(b"users_updated_at", repr(time.time()).encode(), db=dbs["meta"])

    return write, mat.nbytes + sum(len(u) + 32 for u in ids) + 8192


def rows_to_matrix(ids: list[str], feats_b: bytes | None, rows: list[bytes | None]) -> np.ndarray:
    """Stack the raw user rows read for ``ids`` into float32 [B, F_user] (F_user from the stored
    schema ``feats_b``); raises UserNotFound naming the first id whose row is None."""
    F = len(json.loads(feats_b)) if feats_b else 0
    out = np.empty((len(ids), F), dtype=np.float32)
    for i, (u, b) in enumerate(zip(ids, rows)):
        if b is None:
            raise UserNotFound(f"unknown user id {u!r}", u)
        out[i] = np.frombuffer(b, dtype=_DTYPE)
    return out


def read_user_vector(e: _Env, user_id: str) -> np.ndarray | None:
    """``user_id``'s row, float32 [F_user] (a small read-only copy), or None if unknown."""
    users = e.dbs["users"]
    if not isinstance(user_id, str) or not user_id:
        return None
    b = e.read(lambda txn: txn.get(user_id.encode(), db=users))
    if b is None:
        return None
    v = np.frombuffer(b, dtype=_DTYPE).copy()
    v.flags.writeable = False
    return v


def scan_user_ids(e: _Env, limit: int | None) -> list[str]:
    """Up to ``limit`` (None: all) user ids in key (byte) order."""
    users = e.dbs["users"]

    def scan(txn: lmdb.Transaction[bytes]) -> list[str]:
        out: list[str] = []
        for key in txn.cursor(db=users).iternext(keys=True, values=False):
            if limit is not None and len(out) >= limit:
                break
            out.append(bytes(key).decode())
        return out

    return e.read(scan)
