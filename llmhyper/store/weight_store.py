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

Process rules (LMDB's): an environment is opened once per process. WeightStore instances
for the same directory in one process therefore share one environment, cache and locks;
the first opener fixes whether it is read-only. Read-only stores map ``max_map_size``
(virtual address space only; the file grows only with the data) so they never have to
remap when a publisher in another process grows the map. Remapping (the writer growing
its map, or a reader adopting a grown map) invalidates every zero-copy array of that
process, so it is refused with a clear error while any view's arrays are still referenced.
"""

from __future__ import annotations

import json
import os
import threading
import time
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeVar

import lmdb
import numpy as np

from llmhyper.store.extras import (
    RULES_SUFFIX,
    SIGMA_SUFFIX,
    check_rules_input,
    check_sigma,
    decode_rules,
    encode_rules,
)
from llmhyper.store.validate import (
    InvalidWeights,
    PublishError,
    StoreError,
    UserNotFound,
    VersionNotFound,
    check_features,
    check_ids,
    check_manifest,
    check_matrix,
    check_records,
    to_json,
)

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

FORMAT_VERSION = 1
DEFAULT_MAP_SIZE = 64 << 20
DEFAULT_MAX_MAP_SIZE = 1 << 40  # 1 TiB of address space; LMDB's file only grows with the data
_DTYPE = np.dtype("<f4")
_DB_NAMES = ("meta", "versions", "matrices", "ad_ids", "records", "users")
_T = TypeVar("_T")
# TEST HOOK ONLY (tests/reliability row 7 counts the kills that land inside a write txn):
# called with "begin" once a write transaction is open and "end" once it committed or aborted.
WRITE_TXN_PROBE: Callable[[str], None] | None = None


def _vid(seq: int) -> str:
    return f"v{seq:06d}"


def _paged(mat: np.ndarray, psize: int) -> Any:
    """The bytes of a float32 matrix, zero-padded to >= one page so LMDB puts the value on
    overflow pages (page aligned, hence 16-byte aligned for zero-copy float32 views)."""
    if mat.nbytes >= psize:
        return memoryview(mat).cast("B")
    pad = np.zeros(psize, dtype=np.uint8)
    pad[: mat.nbytes] = np.frombuffer(mat.tobytes(), dtype=np.uint8)
    return pad


@dataclass(frozen=True, eq=False)
class VersionView:
    """One immutable published weight version.

    ``theta`` is float32 [M, F] (M ads x F features), read-only and mapped straight from the
    LMDB file (no copy); it stays valid while this view (or any array derived from ``theta``)
    is alive and the store is open.
    """

    version: str
    theta: np.ndarray
    ad_ids: tuple[str, ...]
    ad_index: Mapping[str, int]
    features: tuple[tuple[str, str], ...]
    manifest: dict
    created_at: float
    #: content rules (scoring.rules.ContentRules) stored with the version, or None
    rules: Any = None
    #: posterior spread float32 [M, F] (read-only, zero-copy like theta), or None
    sigma: np.ndarray | None = None

    @property
    def n_ads(self) -> int:
        """Number of ads M (rows of ``theta``)."""
        return int(self.theta.shape[0])

    @property
    def n_features(self) -> int:
        """Number of features F (columns of ``theta``), bias included."""
        return int(self.theta.shape[1])

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Feature names in schema order (index 0 is ``bias``)."""
        return tuple(n for n, _ in self.features)


class _Pin:
    """A cached view plus the read transaction that keeps its pages alive."""

    __slots__ = ("view", "txn", "anchor", "anchor2")

    def __init__(self, view: VersionView, txn: lmdb.Transaction, anchor: np.ndarray,
                 anchor2: np.ndarray | None = None) -> None:
        self.view: VersionView | None = view
        self.txn = txn
        # Every array derived from theta keeps this 1-D frombuffer array alive (numpy's base
        # chain stops at it), so its death means no one can read the pinned pages any more.
        self.anchor = weakref.ref(anchor)
        # the sigma matrix is mapped from the same snapshot: its arrays pin it too
        self.anchor2 = None if anchor2 is None else weakref.ref(anchor2)

    def dead(self) -> bool:
        """True once no array derived from this version's mapped pages is alive."""
        return self.anchor() is None and (self.anchor2 is None or self.anchor2() is None)


class _Env:
    """One LMDB environment per directory per process, shared by its WeightStore handles."""

    def __init__(self, path: str, readonly: bool, map_size: int, max_map_size: int,
                 max_readers: int, durable: bool, views_cached: int) -> None:
        self.path = path
        self.readonly = readonly
        self.max_map_size = max_map_size
        self.views_cached = max(1, views_cached)
        self.refs = 0
        self.write_lock = threading.RLock()   # serialises this process's writers
        self.cache_lock = threading.RLock()   # guards cache / retired pins / remaps
        self.cache: OrderedDict[str, _Pin] = OrderedDict()
        self.retired: list[_Pin] = []
        self.remap_gen = 0
        self.env = self._open(map_size, max_readers, durable)
        try:
            self.dbs = self._open_dbs()
            self._check_format()
        except BaseException:
            self.env.close()
            raise

    # ---------------------------------------------------------------- opening
    def _open(self, map_size: int, max_readers: int, durable: bool) -> lmdb.Environment:
        kw: dict[str, Any] = dict(subdir=True, lock=True, max_dbs=len(_DB_NAMES) + 2,
                                  max_readers=max_readers, sync=durable, metasync=durable)
        if self.readonly:
            if not os.path.isfile(os.path.join(self.path, "data.mdb")):
                raise StoreError(f"no weight store at {self.path!r} (missing data.mdb)")
            try:
                try:
                    env = lmdb.open(self.path, readonly=True, map_size=max(map_size, self.max_map_size), **kw)
                except lmdb.MemoryError:
                    # Address space limited (ulimit -v): map only what the file's meta says.
                    env = lmdb.open(self.path, readonly=True, map_size=0, **kw)
            except lmdb.Error as e:
                raise StoreError(f"cannot open weight store {self.path!r} read-only: {e}") from None
            try:
                env.reader_check()
            except lmdb.Error:
                pass
            return env
        os.makedirs(self.path, exist_ok=True)
        try:
            env = lmdb.open(self.path, readonly=False, map_size=map_size, **kw)
        except lmdb.Error as e:
            raise StoreError(f"cannot open weight store {self.path!r}: {e}") from None
        env.reader_check()
        return env

    def _open_dbs(self) -> dict[str, Any]:
        dbs: dict[str, Any] = {}
        for name in _DB_NAMES:
            key = name.encode()
            if self.readonly:
                try:
                    dbs[name] = self.env.open_db(key, create=False)
                except lmdb.NotFoundError:
                    raise StoreError(
                        f"{self.path!r} is not an LLM-HYPER weight store (no {name!r} database); "
                        "publish into it with a writable WeightStore first") from None
            else:
                dbs[name] = self.write(lambda txn, k=key: self.env.open_db(k, txn=txn, create=True), 4096)
        return dbs

    def _check_format(self) -> None:
        meta = self.dbs["meta"]

        def init(txn: lmdb.Transaction) -> bytes | None:
            fmt = txn.get(b"format", db=meta)
            if fmt is None and not self.readonly:
                txn.put(b"format", str(FORMAT_VERSION).encode(), db=meta)
                txn.put(b"next_seq", b"1", db=meta)
                txn.put(b"created_at", repr(time.time()).encode(), db=meta)
                fmt = str(FORMAT_VERSION).encode()
            return None if fmt is None else bytes(fmt)

        fmt = self.read(init) if self.readonly else self.write(init, 4096)
        if fmt is None:
            raise StoreError(f"{self.path!r} is not an LLM-HYPER weight store (no format marker)")
        if int(fmt) != FORMAT_VERSION:
            raise StoreError(f"weight store {self.path!r} has format {int(fmt)}, "
                             f"this code reads format {FORMAT_VERSION}")

    # ---------------------------------------------------------------- transactions
    def begin_read(self, buffers: bool = False) -> lmdb.Transaction:
        """Begin a read txn, adopting a map grown by another process if needed."""
        for _ in range(3):
            try:
                return self.env.begin(buffers=buffers)
            except lmdb.MapResizedError:
                self.adopt_grown_map()
        raise StoreError(f"weight store {self.path!r}: map kept changing size while opening a read")

    def read(self, fn: Callable[[lmdb.Transaction], _T]) -> _T:
        """Run ``fn`` in a short read txn (retried if a remap invalidated it mid-way)."""
        for attempt in range(3):
            gen = self.remap_gen
            txn = self.begin_read()
            try:
                return fn(txn)
            except lmdb.Error:
                if self.remap_gen == gen or attempt == 2:
                    raise
            finally:
                txn.abort()
        raise AssertionError("unreachable")

    def write(self, fn: Callable[[lmdb.Transaction], _T], size_hint: int) -> _T:
        """Run ``fn`` in one write txn; on MapFull abort, grow the map and retry.

        ``size_hint`` is roughly how many bytes ``fn`` adds (used to size the growth).
        Raises PublishError when the map cannot grow or LMDB fails; nothing is committed then.
        """
        if self.readonly:
            raise StoreError(f"weight store {self.path!r} is open read-only")
        with self.write_lock:
            try:
                self.env.reader_check()  # clear reader slots of dead processes (they pin pages)
            except lmdb.Error:
                pass
            while True:
                try:
                    with self.env.begin(write=True) as txn:
                        if WRITE_TXN_PROBE is not None:
                            WRITE_TXN_PROBE("begin")
                        return fn(txn)
                except lmdb.MapFullError:
                    self.grow(size_hint)
                except lmdb.MapResizedError:
                    self.adopt_grown_map(PublishError)
                except StoreError:
                    raise
                except lmdb.Error as e:
                    raise PublishError(f"write to weight store {self.path!r} failed "
                                       f"({type(e).__name__}: {e}); nothing was changed") from None
                finally:
                    if WRITE_TXN_PROBE is not None:
                        WRITE_TXN_PROBE("end")

    # ---------------------------------------------------------------- map size
    def _prepare_remap(self, why: str, err: type[StoreError]) -> None:
        """Drop every pin; refuse if any zero-copy array of this process is still referenced."""
        with self.cache_lock:
            for pin in self.cache.values():
                pin.view = None  # our reference must not keep the arrays alive
                self.retired.append(pin)
            self.cache.clear()
            self.collect()
            if self.retired:
                n = len(self.retired)
                raise err(f"weight store {self.path!r}: {why}, which remaps the file, but {n} "
                          "version view(s) of this process are still in use (their theta arrays "
                          "would dangle). Drop them, publish from another process, or open the "
                          "store with a larger map_size")

    def grow(self, size_hint: int) -> None:
        """Grow the writer's map: at least double, enough for ``size_hint`` more bytes."""
        info, psize = self.env.info(), self.env.stat()["psize"]
        cur = int(info["map_size"])
        limit = (self.max_map_size // psize) * psize
        if cur >= limit:
            raise PublishError(
                f"weight store {self.path!r} is full: map size {cur} bytes has reached "
                f"max_map_size {self.max_map_size}; the version was not published and the "
                "current version is unchanged")
        used = (int(info["last_pgno"]) + 1) * psize
        want = max(2 * cur, used + int(size_hint * 1.25) + 64 * psize)
        new = min(-(-want // psize) * psize, limit)
        with self.cache_lock:
            self._prepare_remap(f"growing the map from {cur} to {new} bytes", PublishError)
            try:
                self.env.set_mapsize(new)
            except lmdb.Error as e:
                raise PublishError(f"weight store {self.path!r}: cannot grow the map to {new} "
                                   f"bytes ({e}); the current version is unchanged") from None
            self.remap_gen += 1

    def adopt_grown_map(self, err: type[StoreError] = StoreError) -> None:
        """Another process grew the map beyond ours: remap to its size (or our reservation)."""
        with self.cache_lock:
            self._prepare_remap("another process grew the map beyond this process's mapping", err)
            self.env.set_mapsize(0)
            if self.readonly and self.env.info()["map_size"] < self.max_map_size:
                self.env.set_mapsize(self.max_map_size)
            self.remap_gen += 1

    # ---------------------------------------------------------------- pins
    def collect(self) -> None:
        """Abort the read txns of retired pins whose arrays are all gone."""
        with self.cache_lock:
            alive = []
            for pin in self.retired:
                if pin.dead():
                    pin.txn.abort()
                else:
                    alive.append(pin)
            self.retired = alive

    def retire(self, version: str) -> None:
        with self.cache_lock:
            pin = self.cache.pop(version, None)
            if pin is not None:
                pin.view = None  # drop our reference so the anchor can die
                self.retired.append(pin)
            self.collect()

    def pin(self, version: str) -> VersionView:
        """Build (or fetch) the cached zero-copy view of an existing ``version``."""
        with self.cache_lock:
            hit = self.cache.get(version)
            if hit is not None and hit.view is not None:
                self.cache.move_to_end(version)
                return hit.view
            txn = self.begin_read(buffers=True)
            try:
                view, anchor, anchor2 = self._load(txn, version)
            except BaseException:
                txn.abort()
                raise
            self.cache[version] = _Pin(view, txn, anchor, anchor2)
            while len(self.cache) > self.views_cached:
                old = next(iter(self.cache))
                self.retire(old)
            self.collect()
            return view

    def _load(self, txn: lmdb.Transaction, version: str) -> tuple[VersionView, np.ndarray, np.ndarray | None]:
        key = version.encode()
        hdr_b = txn.get(key, db=self.dbs["versions"])
        if hdr_b is None:
            raise VersionNotFound(f"weight version {version!r} does not exist in {self.path!r}")
        hdr = json.loads(bytes(hdr_b))
        M, F = int(hdr["n_ads"]), int(hdr["n_features"])
        buf = txn.get(key, db=self.dbs["matrices"])
        ids_b = txn.get(key, db=self.dbs["ad_ids"])
        if buf is None or ids_b is None or len(buf) < M * F * 4:
            raise StoreError(f"weight version {version!r} in {self.path!r} is incomplete")
        flat = np.frombuffer(buf, dtype=_DTYPE, count=M * F)
        if flat.ctypes.data % _DTYPE.alignment:
            warnings.warn(f"weight version {version!r} is not aligned in the map; copying it",
                          RuntimeWarning, stacklevel=3)
            flat = flat.copy()
        flat.flags.writeable = False
        theta = flat.reshape(M, F)
        ids = tuple(json.loads(bytes(ids_b)))
        rules, sigma, sflat = None, None, None
        n_rules = int(hdr.get("n_rules", 0) or 0)
        if hdr.get("has_rules"):
            rb = txn.get(key + RULES_SUFFIX, db=self.dbs["matrices"])
            if rb is None:
                raise StoreError(f"weight version {version!r} in {self.path!r} is incomplete (rules missing)")
            try:
                rules = decode_rules(rb, M, n_rules)
            except ValueError as e:
                raise StoreError(f"weight version {version!r} in {self.path!r}: {e}") from None
        if hdr.get("has_sigma"):
            sb = txn.get(key + SIGMA_SUFFIX, db=self.dbs["matrices"])
            if sb is None or len(sb) < M * F * 4:
                raise StoreError(f"weight version {version!r} in {self.path!r} is incomplete (sigma missing)")
            sflat = np.frombuffer(sb, dtype=_DTYPE, count=M * F)
            if sflat.ctypes.data % _DTYPE.alignment:
                sflat = sflat.copy()
            sflat.flags.writeable = False
            sigma = sflat.reshape(M, F)
        view = VersionView(
            version=version,
            theta=theta,
            ad_ids=ids,
            ad_index=MappingProxyType({a: i for i, a in enumerate(ids)}),
            features=tuple((str(n), str(d)) for n, d in hdr["features"]),
            manifest=hdr["manifest"],
            created_at=float(hdr["created_at"]),
            rules=rules,
            sigma=sigma,
        )
        return view, flat, sflat

    def close(self) -> None:
        with self.write_lock, self.cache_lock:
            for pin in list(self.cache.values()) + self.retired:
                pin.txn.abort()
            self.cache.clear()
            self.retired.clear()
            self.env.close()


_REGISTRY: dict[str, _Env] = {}
_REGISTRY_LOCK = threading.Lock()


def _forget_after_fork() -> None:
    # A forked child must not use its parent's LMDB handles; it opens its own.
    _REGISTRY.clear()


os.register_at_fork(after_in_child=_forget_after_fork)


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
    transaction, which LMDB allows only one thread at a time)."""

    __slots__ = ("version", "features", "n_users", "txnid", "_txn", "_db", "_F", "_lock", "_gen", "_e")

    def __init__(self, e: "_Env") -> None:
        self._e = e
        self._gen = e.remap_gen
        self._txn = e.begin_read()
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

    def close(self) -> None:
        """Release the read transaction (later :meth:`rows` calls return None)."""
        with self._lock:
            txn, self._txn = self._txn, None
        if txn is not None:
            try:
                txn.abort()
            except lmdb.Error:
                pass


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
        e = self._writable()
        ids = check_ids(ad_ids, "ad_ids")
        feats = check_features(features)
        mat = check_matrix(theta, "theta", len(ids), len(feats))
        now = time.time()
        man = check_manifest(manifest, now)
        recs = check_records(ad_records, ids)
        crules = None if rules is None else check_rules_input(rules, ids, [n for n, _ in feats])
        sig = None if sigma is None else check_sigma(sigma, len(ids), len(feats))
        extra = {}
        for name, arr in (arrays or {}).items():
            if not isinstance(name, str) or not name.isidentifier() or name in ("rules", "sigma"):
                raise InvalidWeights(f"arrays: name must be an identifier other than 'rules' / 'sigma' "
                                     f"(pass sigma=...), got {name!r}")
            extra[name] = check_matrix(arr, f"arrays[{name!r}]", len(ids), len(feats))
        header_extra = {"features": [list(f) for f in feats], "manifest": man,
                        "created_at": float(man["created_at"]), "n_ads": mat.shape[0],
                        "n_features": mat.shape[1], "dtype": _DTYPE.str, "n_records": len(recs),
                        "format": FORMAT_VERSION}
        if extra:
            header_extra["arrays"] = sorted(extra)
        if crules is not None:
            header_extra.update(has_rules=True, n_rules=crules.n_rules)
        if sig is not None:
            header_extra["has_sigma"] = True
        to_json(header_extra, "version header")
        ids_json = to_json(ids, "ad_ids")
        dbs = e.dbs
        write_users, users_hint = self._users_writer(*users) if users is not None else (None, 0)

        def write(txn: lmdb.Transaction) -> str:
            seq = int(txn.get(b"next_seq", db=dbs["meta"]) or b"1")
            version = _vid(seq)
            key = version.encode()
            psize = e.env.stat()["psize"]
            hdr = dict(header_extra, version=version, seq=seq)
            txn.put(key, _paged(mat, psize), db=dbs["matrices"])
            if crules is not None:
                txn.put(key + RULES_SUFFIX, encode_rules(crules), db=dbs["matrices"])
            if sig is not None:
                txn.put(key + SIGMA_SUFFIX, _paged(sig, psize), db=dbs["matrices"])
            txn.put(key, ids_json, db=dbs["ad_ids"])
            txn.put(key, to_json(hdr, "version header"), db=dbs["versions"])
            for name, arr in extra.items():
                txn.put(key + b"\x00" + name.encode(), arr.tobytes(), db=dbs["matrices"])
            for ad, rec in recs.items():
                txn.put(key + b"\x00" + ad.encode(), rec, db=dbs["records"])
            if write_users is not None:
                write_users(txn)
            txn.put(b"next_seq", str(seq + 1).encode(), db=dbs["meta"])
            txn.put(b"current", key, db=dbs["meta"])
            return version

        hint = (2 * mat.nbytes + 8 * (0 if crules is None else crules.n_rules) + len(ids_json)
                + sum(len(r) + 64 for r in recs.values()) + 8192 + users_hint + sum(a.nbytes + 64 for a in extra.values()))
        return e.write(write, hint)

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

        def resolve(txn: lmdb.Transaction) -> str | None:
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

        def scan(txn: lmdb.Transaction) -> tuple[bytes | None, list[dict]]:
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
        e = self._writable()
        meta, versions = e.dbs["meta"], e.dbs["versions"]

        def move(txn: lmdb.Transaction) -> str:
            cur = txn.get(b"current", db=meta)
            if version is not None:
                if not isinstance(version, str) or txn.get(version.encode(), db=versions) is None:
                    raise VersionNotFound(f"cannot roll back to {version!r}: no such version")
                target = version
            else:
                if cur is None:
                    raise VersionNotFound("cannot roll back: the store has no current version")
                cur_seq = json.loads(bytes(txn.get(cur, db=versions)))["seq"]
                older = [(h["seq"], h["version"]) for h in
                         (json.loads(bytes(v)) for _, v in txn.cursor(db=versions))
                         if h["seq"] < cur_seq]
                if not older:
                    raise VersionNotFound(f"cannot roll back: no version before {cur.decode()} is stored")
                target = max(older)[1]
            txn.put(b"current", target.encode(), db=meta)
            return target

        return e.write(move, 4096)

    def prune(self, keep: int) -> list[str]:
        """Delete all but the ``keep`` newest versions (the current one is always kept).

        Removes each pruned version's matrix, ad ids, header and per-ad records; its pages
        become reusable once no reader still pins them. Returns the removed version ids.
        """
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
            raise ValueError(f"keep must be an int >= 0, got {keep!r}")
        e = self._writable()
        dbs = e.dbs

        def drop(txn: lmdb.Transaction) -> list[str]:
            cur = txn.get(b"current", db=dbs["meta"])
            hdrs = sorted((json.loads(bytes(v)) for _, v in txn.cursor(db=dbs["versions"])),
                          key=lambda h: h["seq"])
            kept = {h["version"] for h in hdrs[len(hdrs) - keep:]} if keep else set()
            if cur is not None:
                kept.add(cur.decode())
            removed = [h["version"] for h in hdrs if h["version"] not in kept]
            arrays_of = {h["version"]: h.get("arrays", ()) for h in hdrs}
            for v in removed:
                key = v.encode()
                for name in arrays_of.get(v, ()):
                    txn.delete(key + b"\x00" + name.encode(), db=dbs["matrices"])
                for name in ("versions", "matrices", "ad_ids"):
                    txn.delete(key, db=dbs[name])
                for suffix in (RULES_SUFFIX, SIGMA_SUFFIX):
                    txn.delete(key + suffix, db=dbs["matrices"])
                prefix = key + b"\x00"
                cur_r = txn.cursor(db=dbs["records"])
                if cur_r.set_range(prefix):
                    while cur_r.key()[: len(prefix)] == prefix:
                        if not cur_r.delete():
                            break
            return removed

        removed = e.write(drop, 4096)
        for v in removed:
            e.retire(v)
        return removed

    def version_array(self, version: str, name: str) -> np.ndarray | None:
        """The extra array ``name`` stored with ``version`` (see ``publish(arrays=...)``) as a
        read-only float32 [M, F] copy, or None when that version has no such array.

        Raises VersionNotFound for an unknown version.
        """
        e = self._env()
        dbs = e.dbs
        if not isinstance(version, str) or not isinstance(name, str):
            raise StoreError("version_array(version, name) takes two str")

        def get(txn: lmdb.Transaction) -> tuple[bytes | None, bytes | None]:
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

        def get(txn: lmdb.Transaction) -> tuple[bool, bytes | None]:
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
        write, hint = self._users_writer(user_ids, X, features)
        e.write(write, hint)

    def _users_writer(self, user_ids: Sequence[str], X: Any,
                      features: Sequence[Any]) -> tuple[Callable[[lmdb.Transaction], None], int]:
        """Validate a user table; return (a function writing it inside a txn, its size hint)."""
        e = self._writable()
        ids = check_ids(user_ids, "user_ids")
        feats = check_features(features)
        mat = check_matrix(X, "X", len(ids), len(feats))
        if not np.all(mat[:, 0] == 1.0):
            bad = int(np.flatnonzero(mat[:, 0] != 1.0)[0])
            raise InvalidWeights(f"X[:, 0] is the 'bias' feature and must be 1.0; "
                                 f"user {ids[bad]!r} has {mat[bad, 0]!r}")
        feats_json = to_json([list(f) for f in feats], "features")
        dbs = e.dbs

        def write(txn: lmdb.Transaction) -> None:
            txn.drop(dbs["users"], delete=False)
            for uid, row in zip(ids, mat):
                txn.put(uid.encode(), row.tobytes(), db=dbs["users"])
            txn.put(b"user_features", feats_json, db=dbs["meta"])
            txn.put(b"n_users", str(len(ids)).encode(), db=dbs["meta"])
            txn.put(b"users_updated_at", repr(time.time()).encode(), db=dbs["meta"])

        return write, mat.nbytes + sum(len(u) + 32 for u in ids) + 8192

    def user_vector(self, user_id: str) -> np.ndarray | None:
        """The user's features, float32 [F_user] (a small read-only copy), or None if unknown."""
        e = self._env()
        users = e.dbs["users"]
        if not isinstance(user_id, str) or not user_id:
            return None
        b = e.read(lambda txn: txn.get(user_id.encode(), db=users))
        if b is None:
            return None
        v = np.frombuffer(b, dtype=_DTYPE).copy()
        v.flags.writeable = False
        return v

    def user_ids(self, limit: int | None = None) -> list[str]:
        """Ids in the user table in key (byte) order, at most ``limit`` of them (None: all)."""
        e = self._env()
        users = e.dbs["users"]

        def scan(txn: lmdb.Transaction) -> list[str]:
            out: list[str] = []
            for key in txn.cursor(db=users).iternext(keys=True, values=False):
                if limit is not None and len(out) >= limit:
                    break
                out.append(bytes(key).decode())
            return out

        return e.read(scan)

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

        def get(txn: lmdb.Transaction) -> tuple[bytes | None, bytes | None, bytes | None, list[bytes | None]]:
            return (txn.get(b"current", db=meta), txn.get(b"user_features", db=meta), txn.get(b"n_users", db=meta),
                    [txn.get(u.encode(), db=users) if isinstance(u, str) and u else None for u in ids])

        cur, feats_b, n_b, rows = e.read(get)
        features = self._user_schema(feats_b)
        return UsersSnapshot(version=None if cur is None else cur.decode(), features=features,
                             n_users=0 if n_b is None else int(n_b), X=self._rows_to_matrix(ids, feats_b, rows))

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

    @staticmethod
    def _rows_to_matrix(ids: list[str], feats_b: bytes | None, rows: list[bytes | None]) -> np.ndarray:
        F = len(json.loads(feats_b)) if feats_b else 0
        out = np.empty((len(ids), F), dtype=np.float32)
        for i, (u, b) in enumerate(zip(ids, rows)):
            if b is None:
                raise UserNotFound(f"unknown user id {u!r}", u)
            out[i] = np.frombuffer(b, dtype=_DTYPE)
        return out

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
