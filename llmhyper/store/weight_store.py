"""Versioned LMDB weight store: publish, serve zero-copy, roll back, prune.

Layout: one LMDB environment (a directory: ``data.mdb`` + ``lock.mdb``) with named databases

========== ======================================= ==========================================
db         key                                     value
========== ======================================= ==========================================
meta       ``format``, ``current``, ``next_seq``,  small ASCII / JSON values
           ``user_features``, ``n_users``, ...
versions   version id (``v000007``)                JSON header: seq, created_at, n_ads,
                                                   n_features, features, manifest
matrices   version id                              theta, float32 little-endian [M, F]
                                                   row-major (zero-padded to >= 1 page so it
                                                   lives on overflow pages: 16-byte aligned)
           version id + ``\\0rules`` / ``\\0sigma``     optional content rules (CSR int32/float32)
                                                   and posterior spread float32 [M, F]
                                                   (see ``extras.py``; older versions have none)
           version id + ``\\0`` + array name          further optional float32 [M, F] arrays
                                                   (e.g. ``prior``), listed in the header's
                                                   ``arrays`` (``publish(arrays=...)``)
ad_ids     version id                              JSON list of ad ids in row order
records    version id + ``\\0`` + ad id             JSON per-ad provenance / rationale
users      user id                                 float32 [F_user] vector
========== ======================================= ==========================================

A publish validates everything first, then writes the whole version and moves ``current``
in one write transaction, so a crash (even SIGKILL mid-write) leaves the previous version
current. When the map is full the transaction is aborted, the map is grown (at least
doubled, up to ``max_map_size``) and the publish is retried.

Readers get a cached :class:`VersionView` per version whose ``theta`` is a read-only
``numpy.frombuffer`` over the LMDB memory map (no copy). Each cached view keeps its own
read transaction open, which pins the LMDB snapshot so the pages of that version are never
reused by later writes (even if the version is pruned) while anyone can still see them.
The transaction is released once the view has left the cache (LRU of ``views_cached``
versions, :meth:`WeightStore.release`, pruning) and no array derived from its ``theta``
is alive any more.

Process rules (LMDB's: one environment per directory per process, shared by every
WeightStore handle; remaps refused while zero-copy arrays are alive) are in ``env.py``.

This module is the public facade; the work is done by ``env.py`` (the LMDB environment, pins,
map growth), ``views.py`` (:class:`VersionView`, reading a version), ``publish.py`` (publish,
rollback, prune) and ``users.py`` (the user table). Every public name stays importable from here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import lmdb
import numpy as np

from llmhyper.store.env import _REGISTRY, _REGISTRY_LOCK, DEFAULT_MAP_SIZE, DEFAULT_MAX_MAP_SIZE, FORMAT_VERSION, _Env
from llmhyper.store.publish import prune_versions, publish_version, rollback_version
from llmhyper.store.users import UsersSnapshot, UsersView, read_user_vector, rows_to_matrix, scan_user_ids, users_writer
from llmhyper.store.validate import InvalidWeights, PublishError, StoreError, UserNotFound, VersionNotFound
from llmhyper.store.views import DTYPE as _DTYPE
from llmhyper.store.views import VersionView

__all__ = [
    "FORMAT_VERSION",
    "InvalidWeights",
    "PublishError",
    "StoreError",
    "UserNotFound",
    "UsersSnapshot",
    "UsersView",
    "VersionNotFound",
    "VersionView",
    "WeightStore",
]


class WeightStore:
    """Handle on a versioned LMDB weight store (see the module docstring for the layout).

    Thread-safe: one instance may be shared by many server threads. Instances opened on the
    same directory in one process share one LMDB environment and view cache.

    Args:
        path: the store directory (created by a writable store if missing).
        readonly: open for serving only (LMDB ``readonly=True, lock=True``); write calls raise.
        map_size: initial map size in bytes for a writer (grows on demand).
        max_readers: LMDB reader slots (each cached view holds one, as does each concurrent read).
        max_map_size: a writer never grows its map beyond this many bytes (publish then fails);
            a reader reserves this much address space so it never needs to remap.
        views_cached: how many versions keep a pinned zero-copy view (LRU).
        durable: fsync on commit (LMDB ``sync``/``metasync``); atomicity holds either way.
    """

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False,
                 map_size: int = DEFAULT_MAP_SIZE, max_readers: int = 126,
                 max_map_size: int = DEFAULT_MAX_MAP_SIZE, views_cached: int = 4,
                 durable: bool = True) -> None:
        if map_size <= 0 or max_map_size <= 0:
            raise ValueError("map_size and max_map_size must be positive byte counts")
        self._path = os.path.realpath(os.fspath(path))
        self._readonly = readonly
        self._schema_cache: tuple[bytes, tuple[tuple[str, str], ...]] | None = None
        with _REGISTRY_LOCK:
            shared = _REGISTRY.get(self._path)
            if shared is None:
                shared = _Env(self._path, readonly, map_size, max_map_size, max_readers,
                              durable, views_cached)
                _REGISTRY[self._path] = shared
            elif shared.readonly and not readonly:
                raise StoreError(
                    f"weight store {self._path!r} is already open read-only in this process and "
                    "LMDB allows one environment per process: open the writable WeightStore "
                    "first (readers then share it) or publish from another process")
            shared.refs += 1
        self._e: _Env | None = shared

    # ---------------------------------------------------------------- basics
    @property
    def path(self) -> str:
        """The store directory (resolved)."""
        return self._path

    @property
    def readonly(self) -> bool:
        """True when this handle may not write."""
        return self._readonly

    def _env(self) -> _Env:
        if self._e is None:
            raise StoreError(f"weight store {self._path!r} is closed")
        return self._e

    def _writable(self) -> _Env:
        e = self._env()
        if self._readonly:
            raise StoreError(f"weight store {self._path!r} was opened read-only")
        return e

    def close(self) -> None:
        """Release this handle; the last one closes LMDB (all views' arrays become invalid)."""
        e, self._e = self._e, None
        if e is None:
            return
        with _REGISTRY_LOCK:
            e.refs -= 1
            if e.refs == 0:
                _REGISTRY.pop(self._path, None)
                e.close()

    def __enter__(self) -> WeightStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- versions
    def publish(self, ad_ids: Sequence[str], theta: Any, features: Sequence[Any],
                manifest: Mapping[str, Any] | None = None,
                ad_records: Mapping[str, Mapping[str, Any]] | None = None,
                users: tuple[Sequence[str], Any, Sequence[Any]] | None = None,
                rules: Any = None, sigma: Any = None,
                arrays: Mapping[str, Any] | None = None) -> str:
        """Publish a new version and make it current, atomically.

        Args:
            ad_ids: M unique non-empty ad ids, row order of ``theta``.
            theta: weights, float32-castable [M, F], all finite after the cast.
            features: F ``(name, description)`` pairs, ``features[0][0] == "bias"``.
            manifest: JSON-serialisable dict (generator, model, prompt_version, ...);
                ``created_at`` (unix seconds) is filled in when missing.
            ad_records: optional per-ad JSON dicts (provenance, rationale) keyed by ad id.
            users: optional ``(user_ids, X, features)`` replacing the user table in the SAME
                transaction (see :meth:`put_users`), so readers never see the new weights
                with the old user table or the reverse.
            rules: optional content rules, a list of ``(ad_id, feature name or index,
                threshold)`` or a ``scoring.rules.ContentRules`` (see ``extras.check_rules_input``);
                served as a mask: ad hidden from users whose feature exceeds threshold.
            sigma: optional posterior spread, float32-castable [M, F], finite, >= 0 (used by
                Thompson-sample exploration).
            arrays: optional further per-version arrays by name (identifiers other than
                ``rules`` / ``sigma``), each float32-castable [M, F] and finite, e.g. ``prior``
                (the prior mean of a refreshed version). Read back with :meth:`version_array`.
        Returns:
            The new version id (``v`` + 6-digit publish sequence number).
        Raises:
            InvalidWeights: bad input (nothing written). PublishError: the store could not
            take it (map at ``max_map_size``, disk error); the current version is unchanged.
        """
        return publish_version(self._writable(), ad_ids, theta, features, manifest, ad_records, users,
                               rules, sigma, arrays)

    def current_version(self) -> str | None:
        """The version id that serving uses now, or None for an empty store (one tiny read)."""
        e = self._env()
        meta = e.dbs["meta"]
        v = e.read(lambda txn: txn.get(b"current", db=meta))
        return None if v is None else v.decode()

    def view(self, version: str | None = None) -> VersionView:
        """The zero-copy view of ``version`` (None: the current one), cached per version.

        Raises VersionNotFound for an unknown/pruned version or an empty store.
        """
        e = self._env()
        if version is not None and not isinstance(version, str):
            raise VersionNotFound(f"version must be a str like 'v000001', got {version!r}")
        meta, versions = e.dbs["meta"], e.dbs["versions"]

        def resolve(txn: lmdb.Transaction[bytes]) -> str | None:
            if version is None:
                cur = txn.get(b"current", db=meta)
                return None if cur is None else cur.decode()
            return version if txn.get(version.encode(), db=versions) is not None else None

        v = e.read(resolve)
        if v is None:
            if version is None:
                raise VersionNotFound(f"weight store {self._path!r} has no published version yet")
            e.retire(version)  # pruned by another process: let its pages go
            raise VersionNotFound(f"weight version {version!r} does not exist in {self._path!r}")
        pin = e.cache.get(v)  # lock-free fast path (dict reads are atomic)
        if pin is not None:
            view = pin.view
            if view is not None:
                return view
        return e.pin(v)

    def has_version(self, version: str) -> bool:
        """True when ``version`` is stored now (one tiny read; nothing is pinned).

        A version that is gone (pruned, possibly by another process) also has its cached
        view dropped here, so its pages can be reused once no array of it is alive.
        """
        e = self._env()
        if not isinstance(version, str) or not version:
            return False
        versions = e.dbs["versions"]
        key = version.encode()
        found = e.read(lambda txn: txn.get(key, db=versions) is not None)
        if not found:
            e.retire(version)
        return found

    def release(self, version: str) -> None:
        """Drop ``version``'s cached view; its read txn ends once no array of it is alive."""
        self._env().retire(version)

    def list_versions(self) -> list[dict]:
        """All stored versions, oldest first: version, seq, created_at, n_ads, n_features,
        generator, model, prompt_version (from the manifest, None if absent), current."""
        e = self._env()
        meta, versions = e.dbs["meta"], e.dbs["versions"]

        def scan(txn: lmdb.Transaction[bytes]) -> tuple[bytes | None, list[dict]]:
            cur = txn.get(b"current", db=meta)
            return (None if cur is None else bytes(cur),
                    [json.loads(bytes(v)) for _, v in txn.cursor(db=versions)])

        cur, hdrs = e.read(scan)
        out = []
        for h in sorted(hdrs, key=lambda h: h["seq"]):
            m = h.get("manifest", {})
            out.append({"version": h["version"], "seq": h["seq"], "created_at": h["created_at"],
                        "n_ads": h["n_ads"], "n_features": h["n_features"],
                        "generator": m.get("generator"), "model": m.get("model"),
                        "prompt_version": m.get("prompt_version"),
                        "current": cur is not None and h["version"] == cur.decode()})
        return out

    def rollback(self, version: str | None = None) -> str:
        """Make ``version`` current (None: the newest stored version published before the
        current one). A pointer move in one transaction; returns the new current version."""
        return rollback_version(self._writable(), version)

    def prune(self, keep: int) -> list[str]:
        """Delete all but the ``keep`` newest versions (the current one is always kept).

        Removes each pruned version's matrix, ad ids, header and per-ad records; its pages
        become reusable once no reader still pins them. Returns the removed version ids.
        """
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
            raise ValueError(f"keep must be an int >= 0, got {keep!r}")
        return prune_versions(self._writable(), keep)

    def version_array(self, version: str, name: str) -> np.ndarray | None:
        """The extra array ``name`` stored with ``version`` (see ``publish(arrays=...)``) as a
        read-only float32 [M, F] copy, or None when that version has no such array.

        Raises VersionNotFound for an unknown version.
        """
        e = self._env()
        dbs = e.dbs
        if not isinstance(version, str) or not isinstance(name, str):
            raise StoreError("version_array(version, name) takes two str")

        def get(txn: lmdb.Transaction[bytes]) -> tuple[bytes | None, bytes | None]:
            hdr = txn.get(version.encode(), db=dbs["versions"])
            if hdr is None:
                return None, None
            buf = txn.get(version.encode() + b"\x00" + name.encode(), db=dbs["matrices"])
            return bytes(hdr), None if buf is None else bytes(buf)

        hdr_b, buf = e.read(get)
        if hdr_b is None:
            raise VersionNotFound(f"weight version {version!r} does not exist in {self._path!r}")
        if buf is None:
            return None
        hdr = json.loads(hdr_b)
        M, F = int(hdr["n_ads"]), int(hdr["n_features"])
        out = np.frombuffer(buf, dtype=_DTYPE, count=M * F).reshape(M, F).copy()
        out.flags.writeable = False
        return out

    def ad_record(self, version: str, ad_id: str) -> dict | None:
        """The per-ad record (provenance, rationale) stored with ``version``, or None."""
        e = self._env()
        dbs = e.dbs

        def get(txn: lmdb.Transaction[bytes]) -> tuple[bool, bytes | None]:
            if txn.get(version.encode(), db=dbs["versions"]) is None:
                return False, None
            r = txn.get(version.encode() + b"\x00" + ad_id.encode(), db=dbs["records"])
            return True, None if r is None else bytes(r)

        if not isinstance(version, str) or not isinstance(ad_id, str):
            raise StoreError("ad_record(version, ad_id) takes two str")
        exists, rec = e.read(get)
        if not exists:
            raise VersionNotFound(f"weight version {version!r} does not exist in {self._path!r}")
        return None if rec is None else json.loads(rec)

    # ---------------------------------------------------------------- users
    def put_users(self, user_ids: Sequence[str], X: Any, features: Sequence[Any]) -> None:
        """Replace the user-feature table in one transaction.

        Args:
            user_ids: N unique non-empty user ids.
            X: float32-castable [N, F_user], finite, column 0 (``bias``) all 1.0.
            features: F_user ``(name, description)`` pairs, bias first.
        """
        e = self._writable()
        write, hint = users_writer(e, user_ids, X, features)
        e.write(write, hint)

    def user_vector(self, user_id: str) -> np.ndarray | None:
        """The user's features, float32 [F_user] (a small read-only copy), or None if unknown."""
        return read_user_vector(self._env(), user_id)

    def user_ids(self, limit: int | None = None) -> list[str]:
        """Ids in the user table in key (byte) order, at most ``limit`` of them (None: all)."""
        return scan_user_ids(self._env(), limit)

    def user_matrix(self, user_ids: Sequence[str]) -> np.ndarray:
        """Features of several users, float32 [B, F_user] (a fresh C-contiguous array).

        Raises UserNotFound naming the first unknown id.
        """
        return self.users_snapshot(user_ids).X

    def users_snapshot(self, user_ids: Sequence[str]) -> UsersSnapshot:
        """The store's current version, the user table's schema and size, and the features of
        ``user_ids`` float32 [B, F_user], read in ONE transaction: a publish that replaces weights
        and user table together is seen whole or not at all.

        Raises UserNotFound naming the first unknown id.
        """
        e = self._env()
        users, meta = e.dbs["users"], e.dbs["meta"]
        ids = list(user_ids)

        def get(txn: lmdb.Transaction[bytes]) -> tuple[bytes | None, bytes | None, bytes | None, list[bytes | None]]:
            return (txn.get(b"current", db=meta), txn.get(b"user_features", db=meta), txn.get(b"n_users", db=meta),
                    [txn.get(u.encode(), db=users) if isinstance(u, str) and u else None for u in ids])

        cur, feats_b, n_b, rows = e.read(get)
        features = self._user_schema(feats_b)
        return UsersSnapshot(version=None if cur is None else cur.decode(), features=features,
                             n_users=0 if n_b is None else int(n_b), X=rows_to_matrix(ids, feats_b, rows))

    def users_view(self) -> UsersView:
        """A :class:`UsersView` of the user table and current version now (close it when done)."""
        return UsersView(self._env())

    def schema_snapshot(self) -> tuple[str | None, tuple[tuple[str, str], ...] | None, int]:
        """(current version, user table schema or None, number of users), read in one transaction."""
        e = self._env()
        meta = e.dbs["meta"]
        cur, feats_b, n_b = e.read(lambda txn: (txn.get(b"current", db=meta), txn.get(b"user_features", db=meta),
                                                txn.get(b"n_users", db=meta)))
        return (None if cur is None else cur.decode()), self._user_schema(feats_b), (0 if n_b is None else int(n_b))

    def _user_schema(self, raw: bytes | None) -> tuple[tuple[str, str], ...] | None:
        """Parsed user-table schema; the same tuple object while the stored bytes are unchanged
        (every by-id request reads it, so it is parsed once per table, not per request)."""
        if raw is None:
            return None
        raw = bytes(raw)
        cached = self._schema_cache
        if cached is not None and cached[0] == raw:
            return cached[1]
        parsed = tuple((str(n), str(d)) for n, d in json.loads(raw))
        self._schema_cache = (raw, parsed)
        return parsed

    def user_features(self) -> tuple[tuple[str, str], ...] | None:
        """The user table's feature schema, or None when no users were stored."""
        e = self._env()
        meta = e.dbs["meta"]
        b = e.read(lambda txn: txn.get(b"user_features", db=meta))
        return None if b is None else tuple((str(n), str(d)) for n, d in json.loads(b))

    def n_users(self) -> int:
        """Number of users in the user table (0 when none)."""
        e = self._env()
        meta = e.dbs["meta"]
        b = e.read(lambda txn: txn.get(b"n_users", db=meta))
        return 0 if b is None else int(b)

    # ---------------------------------------------------------------- operations
    def clear_stale_readers(self) -> int:
        """Free reader slots left by dead processes; returns how many were cleared."""
        return int(self._env().env.reader_check())

    def reader_pids(self) -> list[int]:
        """PIDs holding LMDB reader slots now (one entry per slot; may include this process)."""
        out = []
        for line in self._env().env.readers().splitlines():
            parts = line.split()
            if parts and parts[0].isdigit():
                out.append(int(parts[0]))
        return out

    def stats(self) -> dict:
        """map_size, file_bytes, used_bytes, page_size, reader_slots_used (high-water mark),
        pinned_views (read txns this process holds for views), format."""
        e = self._env()
        info, psize = e.env.info(), e.env.stat()["psize"]
        with e.cache_lock:
            e.collect()
            pinned = len(e.cache) + len(e.retired)
        return {"map_size": int(info["map_size"]),
                "file_bytes": os.path.getsize(os.path.join(self._path, "data.mdb")),
                "used_bytes": (int(info["last_pgno"]) + 1) * psize, "page_size": psize,
                "reader_slots_used": int(info["num_readers"]), "pinned_views": pinned,
                "format": FORMAT_VERSION}
