"""WeightStore on a real LMDB environment in a temp dir: roundtrip, zero copy, validation,
map growth, full map, rollback, prune, users, pinning and concurrent readers."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from llmhyper.store.weight_store import (
    InvalidWeights,
    PublishError,
    StoreError,
    UserNotFound,
    VersionNotFound,
    WeightStore,
)

from tests.helpers import REPO  # noqa: E402


def feats(F: int) -> list[tuple[str, str]]:
    return [("bias", "intercept, always 1")] + [(f"f{j}", f"feature {j}") for j in range(1, F)]


def weights(M: int, F: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((M, F)).astype(np.float32)


def ids(M: int, prefix: str = "ad") -> list[str]:
    return [f"{prefix}{i}" for i in range(M)]


@pytest.fixture
def store(tmp_path: Path):
    s = WeightStore(tmp_path / "w.lmdb", durable=False)
    yield s
    s.close()


def data_mapping(path: str) -> tuple[int, int]:
    """Address range of this process's mmap of ``path``/data.mdb (from /proc/self/maps)."""
    target = os.path.join(path, "data.mdb")
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 6 and parts[5] == target:
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                return lo, hi
    raise AssertionError(f"{target} is not mapped in this process")


# ------------------------------------------------------------------ roundtrip

def test_publish_roundtrip_bit_identical(tmp_path: Path) -> None:
    path = tmp_path / "w.lmdb"
    th = weights(37, 9, seed=1)
    recs = {"ad3": {"rationale": {"f1": "likes f1"}, "alpha": 0.04}, "ad0": {"neighbours": [["x", 0.9]]}}
    with WeightStore(path) as s:
        assert s.current_version() is None
        with pytest.raises(VersionNotFound, match="no published version"):
            s.view()
        v1 = s.publish(ids(37), th, feats(9), {"generator": "knn", "model": "m1"}, recs)
        v2 = s.publish(ids(5, "b"), weights(5, 9, seed=2), feats(9))
        assert (v1, v2) == ("v000001", "v000002")
        assert s.current_version() == v2
    # reopen read-only: another handle, same bytes
    with WeightStore(path, readonly=True) as r:
        view = r.view(v1)
        assert view.version == v1
        assert view.theta.dtype == np.float32 and view.theta.shape == (37, 9)
        assert view.theta.tobytes() == th.tobytes()
        assert view.ad_ids == tuple(ids(37))
        assert view.ad_index["ad36"] == 36 and len(view.ad_index) == 37
        assert view.features == tuple(feats(9))
        assert view.manifest["generator"] == "knn" and view.manifest["created_at"] == view.created_at
        assert r.ad_record(v1, "ad3") == recs["ad3"]
        assert r.ad_record(v1, "ad1") is None
        assert r.ad_record(v2, "ad3") is None
        with pytest.raises(VersionNotFound):
            r.ad_record("v000099", "ad3")
        assert r.view().version == v2 and r.view() is r.view()  # cached per version
        lv = r.list_versions()
        assert [d["version"] for d in lv] == [v1, v2]
        assert [d["current"] for d in lv] == [False, True]
        assert lv[0]["n_ads"] == 37 and lv[0]["n_features"] == 9 and lv[0]["generator"] == "knn"
        with pytest.raises(StoreError, match="read-only"):
            r.publish(ids(2), weights(2, 9), feats(9))


def test_theta_is_zero_copy_inside_the_lmdb_map(tmp_path: Path) -> None:
    path = tmp_path / "w.lmdb"
    th = weights(3, 4)  # tiny: would sit unaligned inside a leaf page unless padded
    big = weights(2000, 64, seed=3)
    with WeightStore(path) as w:
        w.publish(ids(3), th, feats(4))
        w.publish(ids(2000), big, feats(64))
    with WeightStore(path, readonly=True) as r:
        lo, hi = data_mapping(r.path)
        for v, ref in (("v000001", th), ("v000002", big)):
            t = r.view(v).theta
            addr = t.ctypes.data
            assert lo <= addr and addr + t.nbytes <= hi, "theta is not inside the LMDB memory map"
            assert addr % 16 == 0
            assert not t.flags.owndata and not t.flags.writeable and t.flags.c_contiguous
            assert np.array_equal(t, ref)
            with pytest.raises(ValueError):
                t[0, 0] = 1.0


# ------------------------------------------------------------------ validation

def _bad_cases():
    F = 4
    good = dict(ad_ids=ids(3), theta=weights(3, F), features=feats(F))

    def case(**kw):
        d = dict(good)
        d.update(kw)
        return d

    nan = weights(3, F)
    nan[1, 2] = np.nan
    inf = weights(3, F)
    inf[2, 0] = -np.inf
    return [
        (case(theta=nan), "non-finite"),
        (case(theta=inf), "non-finite"),
        (case(theta=np.full((3, F), 1e39)), "non-finite"),  # overflows float32
        (case(theta=weights(3, F)[0]), "2-D"),
        (case(theta=np.zeros((3, F, 1), np.float32)), "2-D"),
        (case(theta=weights(2, F)), "2 rows but there are 3 ids"),
        (case(theta=weights(3, F + 1)), "5 columns but the schema has 4"),
        (case(theta=np.array([["a"] * F] * 3)), "numeric"),
        (case(theta=np.ones((3, F), bool)), "numeric"),
        (case(ad_ids=["a", "b", "a"]), "duplicate id 'a'"),
        (case(ad_ids=["a", "", "c"]), "empty string"),
        (case(ad_ids=["a", 2, "c"]), "must be str"),
        (case(ad_ids="abc"), "list of str"),
        (case(ad_ids=["a", "x" * 500, "c"]), "longer than"),
        (case(ad_ids=[], theta=np.zeros((0, F), np.float32)), "empty"),
        (case(features=[("intercept", "")] + feats(F)[1:]), "'bias'"),
        (case(features=feats(F)[:3] + [("f1", "again")]), "duplicate feature name 'f1'"),
        (case(features=feats(F)[:3] + [("f3",)]), "pair"),
        (case(manifest={"cfg": {1, 2}}), "manifest is not JSON"),
        (case(manifest={"x": float("nan")}), "manifest is not JSON"),
        (case(manifest={"created_at": "yesterday"}), "created_at"),
        (case(manifest=[1, 2]), "manifest must be a dict"),
        (case(ad_records={"nope": {}}), "unknown ad id 'nope'"),
        (case(ad_records={"ad1": {"x": float("inf")}}), "not JSON"),
        (case(ad_records={"ad1": "text"}), "must be a dict"),
    ]


@pytest.mark.parametrize("kwargs,msg", _bad_cases())
def test_bad_publish_is_rejected_before_writing(store: WeightStore, kwargs: dict, msg: str) -> None:
    v1 = store.publish(ids(3), weights(3, 4, seed=9), feats(4))
    before = store.view().theta.copy()
    with pytest.raises(InvalidWeights) as ei:
        store.publish(**kwargs)
    assert msg in str(ei.value), str(ei.value)
    assert isinstance(ei.value, ValueError) and isinstance(ei.value, PublishError)
    assert store.current_version() == v1
    assert [d["version"] for d in store.list_versions()] == [v1]
    assert np.array_equal(store.view().theta, before)
    assert store.publish(ids(3), weights(3, 4), feats(4)) == "v000002"  # no sequence number lost


# ------------------------------------------------------------------ map size

def test_map_grows_from_64k_to_hold_10000x128(tmp_path: Path) -> None:
    th = weights(10000, 128, seed=5)
    with WeightStore(tmp_path / "w.lmdb", map_size=64 << 10, durable=False) as s:
        assert s.stats()["map_size"] == 64 << 10
        v = s.publish(ids(10000), th, feats(128))
        assert s.stats()["map_size"] >= th.nbytes
        assert s.view(v).theta.tobytes() == th.tobytes()
        v2 = s.publish(ids(10000), th * 2, feats(128))  # grows again: the cached view is unreferenced
        assert np.array_equal(s.view(v2).theta, th * 2)


def test_full_map_fails_cleanly_and_keeps_serving(tmp_path: Path) -> None:
    path = tmp_path / "w.lmdb"
    small = weights(10, 8, seed=1)
    with WeightStore(path, map_size=256 << 10, max_map_size=1 << 20, durable=False) as s:
        v1 = s.publish(ids(10), small, feats(8))
        with pytest.raises(PublishError, match="max_map_size") as ei:
            s.publish(ids(10000), weights(10000, 128), feats(128))
        assert not isinstance(ei.value, InvalidWeights)
        assert s.current_version() == v1
        assert s.view().theta.tobytes() == small.tobytes()
        assert [d["version"] for d in s.list_versions()] == [v1]
        assert s.publish(ids(10), small + 1, feats(8)) == "v000002"  # still writable
    with WeightStore(path, readonly=True) as r:
        assert r.view(v1).theta.tobytes() == small.tobytes()


def test_growth_refused_while_this_process_holds_views(tmp_path: Path) -> None:
    with WeightStore(tmp_path / "w.lmdb", map_size=64 << 10, durable=False) as s:
        v1 = s.publish(ids(4), weights(4, 4), feats(4))
        held = s.view().theta  # a caller still using a zero-copy array
        with pytest.raises(PublishError, match="still in use"):
            s.publish(ids(5000), weights(5000, 64), feats(64))
        assert s.current_version() == v1 and np.array_equal(held, s.view().theta)
        del held
        assert s.publish(ids(5000), weights(5000, 64), feats(64)) == "v000002"


# ------------------------------------------------------------------ rollback / prune

def test_rollback_restores_bit_identical_scores(store: WeightStore) -> None:
    rng = np.random.default_rng(3)
    X = rng.random((16, 12), dtype=np.float32)
    X[:, 0] = 1
    good = weights(50, 12, seed=4)
    v1 = store.publish(ids(50), good, feats(12), {"generator": "good"})
    scores_before = (store.view().theta @ X.T).tobytes()
    v2 = store.publish(ids(50), -good * 3, feats(12), {"generator": "bad"})
    assert (store.view().theta @ X.T).tobytes() != scores_before
    with pytest.raises(VersionNotFound, match="no such version"):
        store.rollback("v000042")
    store.release(v1)  # make the next view re-read the matrix from LMDB
    assert store.rollback() == v1 and store.current_version() == v1
    assert store.view().version == v1
    assert (store.view().theta @ X.T).tobytes() == scores_before
    with pytest.raises(VersionNotFound, match="no version before"):
        store.rollback()
    assert store.rollback(v2) == v2 and store.view().manifest["generator"] == "bad"
    assert store.publish(ids(2), weights(2, 12), feats(12)) == "v000003"


def test_prune_keeps_current_and_removes_everything_else(store: WeightStore) -> None:
    for k in range(5):
        store.publish(ids(6), np.full((6, 3), k + 1, np.float32), feats(3), ad_records={"ad1": {"k": k}})
    store.rollback("v000002")
    with pytest.raises(ValueError):
        store.prune(-1)
    removed = store.prune(1)
    assert removed == ["v000001", "v000003", "v000004"]
    assert [d["version"] for d in store.list_versions()] == ["v000002", "v000005"]
    assert store.current_version() == "v000002"
    for v in removed:
        with pytest.raises(VersionNotFound):
            store.view(v)
        with pytest.raises(VersionNotFound):
            store.ad_record(v, "ad1")
    assert store.ad_record("v000005", "ad1") == {"k": 4}
    assert store.prune(0) == ["v000005"]
    assert store.view().theta[0, 0] == 2.0
    with pytest.raises(VersionNotFound):
        store.rollback()


def test_publish_prune_cycles_keep_file_size_bounded(tmp_path: Path) -> None:
    path = tmp_path / "w.lmdb"
    M, F = 400, 64
    vbytes = M * F * 4
    with WeightStore(path, durable=False) as s:
        sizes = []
        for k in range(40):
            s.publish(ids(M), np.full((M, F), k, np.float32), feats(F))
            assert s.view().theta[0, 0] == k  # a reader pins each new current version
            s.prune(2)
            sizes.append(s.stats()["file_bytes"])
        assert len(s.list_versions()) == 2
    # cached views (4) + kept versions + LMDB's free-list lag; never 40 versions' worth
    assert sizes[-1] <= 10 * vbytes, sizes
    assert sizes[-1] == sizes[19], f"file still growing after 20 cycles: {sizes}"


def test_pinned_view_survives_prune_and_page_reuse(store: WeightStore) -> None:
    v1 = store.publish(ids(300), np.full((300, 32), 1, np.float32), feats(32))
    old = store.view(v1)
    for k in range(2, 12):
        store.publish(ids(300), np.full((300, 32), k, np.float32), feats(32))
        store.prune(1)
        store.view()
    with pytest.raises(VersionNotFound):
        store.view(v1)
    assert np.all(old.theta == 1.0), "pages of a pinned (pruned) version were reused"
    pinned = store.stats()["pinned_views"]
    del old
    assert store.stats()["pinned_views"] == pinned - 1  # its read txn ended with the last reference


# ------------------------------------------------------------------ users

def test_user_table(store: WeightStore) -> None:
    assert store.n_users() == 0 and store.user_features() is None and store.user_vector("u1") is None
    X = np.random.default_rng(0).random((20, 5), dtype=np.float32)
    X[:, 0] = 1
    store.put_users(ids(20, "u"), X, feats(5))
    assert store.n_users() == 20 and store.user_features() == tuple(feats(5))
    v = store.user_vector("u7")
    assert v.dtype == np.float32 and v.tobytes() == X[7].tobytes() and not v.flags.writeable
    assert store.user_vector("nobody") is None and store.user_vector("") is None
    m = store.user_matrix(["u3", "u0"])
    assert m.tobytes() == X[[3, 0]].tobytes()
    with pytest.raises(UserNotFound, match="'ghost'"):
        store.user_matrix(["u1", "ghost"])
    bad = X.copy()
    bad[4, 0] = 0.5
    with pytest.raises(InvalidWeights, match="bias.*'u4'"):
        store.put_users(ids(20, "u"), bad, feats(5))
    with pytest.raises(InvalidWeights, match="non-finite"):
        store.put_users(ids(2, "u"), np.array([[1, np.nan], [1, 0]]), feats(2))
    assert store.n_users() == 20  # failed writes changed nothing
    store.put_users(["z"], np.ones((1, 2), np.float32), feats(2))  # replaces the table
    assert store.n_users() == 1 and store.user_vector("u7") is None
    assert store.user_vector("z").tolist() == [1.0, 1.0]


# ------------------------------------------------------------------ handles / processes

def test_publish_with_users_is_one_transaction(store: WeightStore) -> None:
    F = 4
    X = np.ones((3, F), np.float32)
    X[:, 1:] = np.arange(9, dtype=np.float32).reshape(3, 3)
    v1 = store.publish(ids(5), weights(5, F), feats(F), users=(["u0", "u1", "u2"], X, feats(F)))
    assert store.current_version() == v1 and store.n_users() == 3
    assert np.array_equal(store.user_vector("u2"), X[2])

    bad = X.copy()
    bad[1, 0] = 0.5  # bias column must be 1.0: the whole publish is refused
    with pytest.raises(InvalidWeights, match="bias"):
        store.publish(ids(5), weights(5, F, 1), feats(F), users=(["a", "b", "c"], bad, feats(F)))
    assert store.current_version() == v1 and [v["version"] for v in store.list_versions()] == [v1]
    assert store.n_users() == 3 and store.user_vector("a") is None

    v2 = store.publish(ids(5), weights(5, F, 2), feats(F), users=(["w0"], X[:1], feats(F)))
    assert store.current_version() == v2 and store.n_users() == 1 and store.user_vector("u0") is None


def test_users_snapshot_reads_rows_and_current_version_together(store: WeightStore) -> None:
    snap = store.users_snapshot([])
    assert snap.version is None and snap.features is None and snap.n_users == 0 and snap.X.shape == (0, 0)
    F = 3
    X = np.ones((2, F), np.float32)
    X[:, 1:] = [[0.1, 0.2], [0.3, 0.4]]
    v1 = store.publish(ids(4), weights(4, F), feats(F), users=(["a", "b"], X, feats(F)))
    snap = store.users_snapshot(["b", "a"])
    assert (snap.version, snap.n_users) == (v1, 2) and snap.features == tuple(feats(F))
    assert snap.X.dtype == np.float32 and np.array_equal(snap.X, X[::-1])
    assert store.schema_snapshot() == (v1, tuple(feats(F)), 2)
    v2 = store.publish(ids(4), weights(4, F, 1), feats(F), users=(["c"], X[:1] * 0 + 1, feats(F)))
    snap = store.users_snapshot(["c"])
    assert (snap.version, snap.n_users) == (v2, 1) and snap.X.tolist() == [[1.0, 1.0, 1.0]]
    with pytest.raises(UserNotFound) as e:
        store.users_snapshot(["c", "a"])  # "a" left with the v2 publish
    assert e.value.user_id == "a"


def test_read_only_opening_rules(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no weight store"):
        WeightStore(tmp_path / "missing", readonly=True)
    os.makedirs(tmp_path / "junk")
    (tmp_path / "junk" / "data.mdb").write_bytes(b"not lmdb" * 1000)
    with pytest.raises(StoreError):
        WeightStore(tmp_path / "junk", readonly=True)
    path = tmp_path / "w.lmdb"
    w = WeightStore(path)
    w.publish(ids(2), weights(2, 2), feats(2))
    r = WeightStore(path, readonly=True)  # shares the writer's environment in this process
    assert r.view().version == "v000001"
    w.close()
    assert r.view().theta.shape == (2, 2)
    r.close()
    r2 = WeightStore(path, readonly=True)
    with pytest.raises(StoreError, match="already open read-only"):
        WeightStore(path)
    r2.close()
    with pytest.raises(StoreError, match="closed"):
        r2.current_version()


GROW_SCRIPT = """
import sys, numpy as np
from llmhyper.store.weight_store import WeightStore
s = WeightStore(sys.argv[1], map_size=64 << 10)
F = 64
s.publish([f"a{i}" for i in range(4000)], np.full((4000, F), 7, np.float32),
          [("bias", "")] + [(f"f{j}", "") for j in range(1, F)])
print(s.stats()["map_size"])
"""


def test_reader_adopts_a_map_grown_by_another_process(tmp_path: Path) -> None:
    path = tmp_path / "w.lmdb"
    with WeightStore(path, map_size=64 << 10) as w:
        w.publish(ids(2), weights(2, 64), feats(64))
    # A reader that reserved only 128 KiB of address space must remap after the writer grows.
    r = WeightStore(path, readonly=True, map_size=128 << 10, max_map_size=128 << 10)
    held = r.view()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", GROW_SCRIPT, r.path], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) > 128 << 10
    with pytest.raises(StoreError, match="still in use"):
        r.view()  # remapping now would pull the map from under `held`
    assert held.theta.shape == (2, 64)
    del held
    v = r.view()
    assert v.version == "v000002" and np.all(v.theta == 7) and v.theta.shape == (4000, 64)
    r.close()


def test_concurrent_reader_never_sees_a_mixed_version(tmp_path: Path) -> None:
    path = tmp_path / "w.lmdb"
    F = 16

    def rows(seq: int) -> int:
        return 50 + 37 * (seq % 5)

    w = WeightStore(path, durable=False)
    w.publish(ids(rows(1), "s1_"), np.full((rows(1), F), 1, np.float32), feats(F), {"seq": 1})
    r = WeightStore(path, readonly=True)
    stop = threading.Event()
    errors: list[str] = []
    seen: set[str] = set()
    held = []

    def check(view) -> None:
        seq = int(view.version[1:])
        if view.theta.shape != (rows(seq), F) or not np.all(view.theta == seq):
            errors.append(f"{view.version}: theta mixed")
        if view.ad_ids[0] != f"s{seq}_0" or len(view.ad_ids) != rows(seq) or view.manifest["seq"] != seq:
            errors.append(f"{view.version}: ids/manifest mixed")

    def reader() -> None:
        n = 0
        while not stop.is_set():
            try:
                view = r.view()
            except VersionNotFound:
                continue  # pruned between resolving and pinning
            check(view)
            seen.add(view.version)
            n += 1
            if n % 50 == 0:
                held.append(view)  # keep some old views alive across prunes
                del held[:-3]
            for h in list(held):
                check(h)

    t = threading.Thread(target=reader)
    t.start()
    try:
        for seq in range(2, 27):
            w.publish(ids(rows(seq), f"s{seq}_"), np.full((rows(seq), F), seq, np.float32), feats(F), {"seq": seq})
            w.prune(2)
            time.sleep(0.004)  # let the reader thread get the GIL between publishes
    finally:
        stop.set()
        t.join(10)
    assert not errors, errors[:5]
    assert len(seen) >= 5, seen
    r.close()
    w.close()


def test_has_version_tracks_publish_and_prune(tmp_path: Path) -> None:
    with WeightStore(tmp_path / "hv.lmdb") as s:
        assert not s.has_version("v000001") and not s.has_version("")
        v1 = s.publish(["a"], np.ones((1, 1), np.float32), [("bias", "intercept")])
        v2 = s.publish(["a"], np.zeros((1, 1), np.float32), [("bias", "intercept")])
        assert s.has_version(v1) and s.has_version(v2)
        assert s.prune(1) == [v1]
        assert not s.has_version(v1) and s.has_version(v2)
