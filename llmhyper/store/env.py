"""The LMDB environment behind a weight store: one per directory per process.

Process rules (LMDB's): an environment is opened once per process. WeightStore instances
for the same directory in one process therefore share one :class:`_Env` (registered in
``_REGISTRY``), cache and locks; the first opener fixes whether it is read-only. Read-only stores
map ``max_map_size`` (virtual address space only; the file grows only with the data) so they never
have to remap when a publisher in another process grows the map. Remapping (the writer growing
its map, or a reader adopting a grown map) invalidates every zero-copy array of that
process, so it is refused with a clear error while any view's arrays are still referenced.

Each cached :class:`~llmhyper.store.views.VersionView` is held by a :class:`_Pin` together with
the read transaction that keeps its pages from being reused. ``_Env`` is package-internal: use
:class:`llmhyper.store.weight_store.WeightStore`.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Literal, TypeVar, overload

import lmdb
import numpy as np

from llmhyper.store.validate import PublishError, StoreError
from llmhyper.store.views import VersionView, load_version

__all__ = ["DEFAULT_MAP_SIZE", "DEFAULT_MAX_MAP_SIZE", "FORMAT_VERSION", "WRITE_TXN_PROBE"]

FORMAT_VERSION = 1
DEFAULT_MAP_SIZE = 64 << 20
DEFAULT_MAX_MAP_SIZE = 1 << 40  # 1 TiB of address space; LMDB's file only grows with the data
_DB_NAMES = ("meta", "versions", "matrices", "ad_ids", "records", "users")
_T = TypeVar("_T")
# TEST HOOK ONLY (tests/reliability row 7 counts the kills that land inside a write txn):
# called with "begin" once a write transaction is open and "end" once it committed or aborted.
# Set it on THIS module (llmhyper.store.env.WRITE_TXN_PROBE): _Env.write reads it here.
WRITE_TXN_PROBE: Callable[[str], None] | None = None


class _Pin:
    """A cached view plus the read transaction that keeps its pages alive."""

    __slots__ = ("view", "txn", "anchor", "anchor2")

    def __init__(self, view: VersionView, txn: lmdb.Transaction[memoryview], anchor: np.ndarray,
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
                def create(txn: lmdb.Transaction[bytes], k: bytes = key) -> Any:
                    return self.env.open_db(k, txn=txn, create=True)

                dbs[name] = self.write(create, 4096)
        return dbs

    def _check_format(self) -> None:
        meta = self.dbs["meta"]

        def init(txn: lmdb.Transaction[bytes]) -> bytes | None:
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
    @overload
    def begin_read(self, buffers: Literal[False] = False) -> lmdb.Transaction[bytes]: ...

    @overload
    def begin_read(self, buffers: Literal[True]) -> lmdb.Transaction[memoryview]: ...

    def begin_read(self, buffers: bool = False) -> lmdb.Transaction[bytes] | lmdb.Transaction[memoryview]:
        """Begin a read txn (values as bytes, or with ``buffers`` as zero-copy memoryviews),
        adopting a map grown by another process if needed."""
        for _ in range(3):
            try:
                return self.env.begin(buffers=True) if buffers else self.env.begin()
            except lmdb.MapResizedError:
                self.adopt_grown_map()
        raise StoreError(f"weight store {self.path!r}: map kept changing size while opening a read")

    def read(self, fn: Callable[[lmdb.Transaction[bytes]], _T]) -> _T:
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

    def write(self, fn: Callable[[lmdb.Transaction[bytes]], _T], size_hint: int) -> _T:
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
                view, anchor, anchor2 = load_version(txn, self.dbs, self.path, version)
            except BaseException:
                txn.abort()
                raise
            self.cache[version] = _Pin(view, txn, anchor, anchor2)
            while len(self.cache) > self.views_cached:
                old = next(iter(self.cache))
                self.retire(old)
            self.collect()
            return view

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

