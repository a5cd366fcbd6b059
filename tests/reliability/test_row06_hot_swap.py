"""Row 6 -- hot swap: 50 publishes while ``llmhyper serve`` is under load.

Each version's weights encode its number n (every weight of version n is ``n/100`` except a
small per-ad offset on the bias), so every response -- Rank, RankBatch and Explain -- can be
checked against the version it names. Pass: 0 errors and 0 responses mixing versions.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from tests.helpers import make_world, publish_world
from llmhyper.client import RankerClient, RankerError
from llmhyper.store.weight_store import WeightStore
from scoring import reference as ref

PUBLISHES = 50
M = 6


def theta_for(n: int, F: int) -> np.ndarray:
    t = np.full((M, F), n / 100.0, dtype=np.float32)
    t[:, 0] -= np.arange(M, dtype=np.float32) * 1e-4  # fixed ad order within a version
    return t


def publish_under_load(load, versions, publish, stop: threading.Event, store: WeightStore) -> None:
    """Run ``load(i)`` in 4 client threads while ``publish(n)`` runs for each n, 40 ms apart;
    then let the clients see the last version, stop them and close the store."""
    threads = [threading.Thread(target=load, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        for n in versions:
            publish(n)
            time.sleep(0.04)
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(15)
        store.close()


def test_row06_hot_swap_under_load_never_mixes_versions(tmp_path, serve, record):
    world = make_world()
    F = world.F
    ad_ids = [f"hs{i}" for i in range(M)]
    path = tmp_path / "hot.lmdb"
    w = WeightStore(path)
    publish_world(w, world)                       # v000001 (with the user table)
    w.publish(ad_ids, theta_for(2, F), world.features)   # v000002: first encoded version
    sp = serve(path, "--poll-interval", "0.02")
    x = np.linspace(1.0, 0.2, F, dtype=np.float32)
    X = np.stack([x, x * 0.5, x * 0.25]).astype(np.float32)
    X[:, 0] = 1.0

    stop = threading.Event()
    lock = threading.Lock()
    errors: list[str] = []
    mixed: list[str] = []
    seen: dict[str, int] = {}
    ncalls = [0]

    def check_rank(r) -> str | None:
        n = int(r.version[1:])
        exp = ref.score_all(theta_for(n, F), x)
        got = np.array([a.logit for a in r.ads])
        want = np.sort(exp)[::-1][: len(got)]
        ok = [a.ad_id for a in r.ads] == [ad_ids[i] for i in np.argsort(-exp, kind="stable")[: len(got)]]
        return None if ok and np.allclose(got, want, atol=1e-5) else f"Rank {r.version}: {got[:3]}"

    def check_batch(b) -> str | None:
        n = int(b.version[1:])
        exp = ref.score_matrix(theta_for(n, F), X)
        want = np.take_along_axis(exp, b.ad_index.astype(np.int64), axis=1)
        ok = b.ad_index.shape == (3, 4) and tuple(b.ad_ids) == tuple(ad_ids)
        return None if ok and np.allclose(b.logit, want, atol=1e-5) else f"RankBatch {b.version}: {b.logit[0, :2]}"

    def check_explain(e) -> str | None:
        n = int(e.version[1:])
        row = theta_for(n, F)[2]
        weights = {c.name: c.weight for c in e.contributions}
        exp_w = {name: float(row[j]) for j, (name, _) in enumerate(world.features)}
        ok = all(abs(weights[k] - v) < 1e-6 for k, v in exp_w.items())
        ok = ok and abs(e.logit - float(ref.score_all(row[None, :], x)[0])) < 1e-5
        return None if ok else f"Explain {e.version}: logit {e.logit}"

    def load(i: int) -> None:
        with RankerClient(sp.target, timeout=10) as c:
            k = i
            while not stop.is_set():
                k += 1
                try:
                    kind = k % 3
                    if kind == 0:
                        r = c.rank(features=x, top_k=4)
                        bad = check_rank(r)
                    elif kind == 1:
                        r = c.rank_batch(X, top_k=4)
                        bad = check_batch(r)
                    else:
                        r = c.explain("hs2", features=x)
                        bad = check_explain(r)
                except RankerError as e:
                    with lock:
                        errors.append(f"{e.code.name}: {e.details}")
                    continue
                with lock:
                    ncalls[0] += 1
                    seen[r.version] = seen.get(r.version, 0) + 1
                    if bad:
                        mixed.append(bad)

    with RankerClient(sp.target) as c:
        assert c.model_info().version == "v000002"
    def publish(n: int) -> None:
        v = w.publish(ad_ids, theta_for(n, F), world.features, manifest={"n": n})
        assert v == f"v{n:06d}"

    t0 = time.monotonic()
    publish_under_load(load, range(3, 3 + PUBLISHES), publish, stop, w)
    last = f"v{2 + PUBLISHES:06d}"
    versions_seen = sorted(v for v in seen if v != "v000001")
    record("row06", publishes=PUBLISHES, seconds=round(time.monotonic() - t0, 2), calls=ncalls[0],
           errors=len(errors), mixed=len(mixed), distinct_versions_served=len(versions_seen),
           last_version=last, last_served=last in seen)
    assert not errors, errors[:5]
    assert not mixed, mixed[:5]
    assert ncalls[0] > 200
    assert last in seen
    assert len(versions_seen) >= PUBLISHES // 3, versions_seen


def test_row06_by_id_requests_pair_each_user_row_with_its_own_publish(tmp_path, serve, record):
    """Every publish replaces weights AND the user table (one transaction); version n's user
    rows carry n in feature f1 and its weights 1/n there, so a matched pair scores exactly
    1 - i*1e-4 for ad i and any mix of two publishes scores n/m instead."""
    world = make_world()
    F = world.F
    ad_ids = [f"hs{i}" for i in range(M)]
    users = [f"u{j}" for j in range(4)]

    def weights(n: int) -> np.ndarray:
        t = np.zeros((M, F), dtype=np.float32)
        t[:, 0] = -np.arange(M, dtype=np.float32) * 1e-4
        t[:, 1] = 1.0 / n
        return t

    def rows(n: int) -> np.ndarray:
        X = np.zeros((len(users), F), dtype=np.float32)
        X[:, 0] = 1.0
        X[:, 1] = n
        return X

    path = tmp_path / "byid.lmdb"
    w = WeightStore(path)
    w.publish(ad_ids, weights(1), world.features, users=(users, rows(1), world.features))
    sp = serve(path, "--poll-interval", "0.02")
    want = 1.0 - np.arange(M) * 1e-4
    stop = threading.Event()
    lock = threading.Lock()
    errors: list[str] = []
    mixed: list[str] = []
    seen: set[str] = set()
    ncalls = [0]

    def load(i: int) -> None:
        with RankerClient(sp.target, timeout=10) as c:
            k = i
            while not stop.is_set():
                k += 1
                try:
                    if k % 2:
                        r = c.rank(users[k % len(users)], top_k=M)
                        got, version = np.array([a.logit for a in r.ads]), r.version
                    else:
                        b = c.rank_batch(user_ids=users[:2], top_k=M)
                        got, version = b.logit.ravel(), b.version
                except RankerError as e:
                    with lock:
                        errors.append(f"{e.code.name}: {e.details}")
                    continue
                with lock:
                    ncalls[0] += 1
                    seen.add(version)
                    if not np.allclose(got, np.tile(want, got.size // M), atol=1e-4):
                        mixed.append(f"{version}: {got[:2]}")

    publish_under_load(load, range(2, 2 + PUBLISHES),
                       lambda n: w.publish(ad_ids, weights(n), world.features, users=(users, rows(n), world.features)),
                       stop, w)
    record("row06_by_id", publishes=PUBLISHES, calls=ncalls[0], errors=len(errors), mixed=len(mixed),
           distinct_versions_served=len(seen))
    assert not errors, errors[:5]
    assert not mixed, mixed[:5]
    assert ncalls[0] > 200
    assert len(seen) >= PUBLISHES // 3, sorted(seen)
