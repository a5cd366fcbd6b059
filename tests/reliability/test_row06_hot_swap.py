"""Row 6 -- hot swap: 50 publishes while ``llmhyper serve`` is under load.

Each version's weights encode its number n (every weight of version n is ``n/100`` except a
small per-row offset on the bias), and each version has its OWN ad ids: a rotating window of
4 to 7 ids out of 10, so consecutive versions share some ids at different rows, plus one
anchor ad present in every version at a row that moves. Every response -- Rank, RankBatch and
Explain -- is checked against the version it names: the ids, their order, the logits and the
Explain weights. The publisher waits until each version has been served by all three RPCs
before it publishes the next, so "every published version is served" is asserted exactly.
Pass: 0 errors, 0 responses mixing versions (weights of one, ids of another), every version served.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

import numpy as np

from tests.helpers import make_world, publish_world, wait_for
from llmhyper.client import RankerClient, RankerError
from llmhyper.store.weight_store import WeightStore
from scoring import reference as ref

PUBLISHES = 50
M = 6              # ads of the by-id test
POOL = 10          # ad ids hs0..hs9 rotate through the versions
ANCHOR = "anchor"  # in every version (the Explain target), at row n % rows


def ads_for(n: int) -> list[str]:
    """Ad ids of version n, in row order: 4..7 ids of a window rotating over hs0..hs9, with the
    anchor inserted at row ``n % (count + 1)``."""
    count = 4 + n % 4
    ids = [f"hs{(n + i) % POOL}" for i in range(count)]
    ids.insert(n % (count + 1), ANCHOR)
    return ids


def theta_for(n: int, F: int) -> np.ndarray:
    rows = len(ads_for(n))
    t = np.full((rows, F), n / 100.0, dtype=np.float32)
    t[:, 0] -= np.arange(rows, dtype=np.float32) * 1e-4  # fixed ad order within a version
    return t


def publish_under_load(load, versions, publish, stop: threading.Event, store: WeightStore,
                       served: Callable[[int], bool]) -> None:
    """Run ``load(i)`` in 4 client threads while ``publish(n)`` runs for each n; after each
    publish wait (at most 30 s) until ``served(n)``, then 20 ms more; then stop the clients
    and close the store."""
    threads = [threading.Thread(target=load, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        for n in versions:
            publish(n)
            assert wait_for(lambda: served(n), timeout=30, interval=0.002), f"version {n} was never served"
            time.sleep(0.02)
    finally:
        stop.set()
        for t in threads:
            t.join(15)
        store.close()


def test_row06_hot_swap_under_load_never_mixes_versions(tmp_path, serve, record):
    world = make_world()
    F = world.F
    path = tmp_path / "hot.lmdb"
    w = WeightStore(path)
    publish_world(w, world)                       # v000001 (with the user table)
    w.publish(ads_for(2), theta_for(2, F), world.features)   # v000002: first encoded version
    sp = serve(path, "--poll-interval", "0.02")
    x = np.linspace(1.0, 0.2, F, dtype=np.float32)
    X = np.stack([x, x * 0.5, x * 0.25]).astype(np.float32)
    X[:, 0] = 1.0

    stop = threading.Event()
    lock = threading.Lock()
    errors: list[str] = []
    mixed: list[str] = []
    seen: dict[str, set[str]] = {}  # version -> the RPCs that served it
    ncalls = [0]

    def check_rank(r) -> str | None:
        n = int(r.version[1:])
        ids = ads_for(n)
        exp = ref.score_all(theta_for(n, F), x)
        got = np.array([a.logit for a in r.ads])
        want = np.sort(exp)[::-1][: len(got)]
        ok = len(got) == 4 and [a.ad_id for a in r.ads] == [ids[i] for i in np.argsort(-exp, kind="stable")[:4]]
        return None if ok and np.allclose(got, want, atol=1e-5) else f"Rank {r.version}: {[a.ad_id for a in r.ads]}"

    def check_batch(b) -> str | None:
        n = int(b.version[1:])
        exp = ref.score_matrix(theta_for(n, F), X)
        want = np.take_along_axis(exp, b.ad_index.astype(np.int64), axis=1)
        ok = b.ad_index.shape == (3, 4) and tuple(b.ad_ids) == tuple(ads_for(n))
        return None if ok and np.allclose(b.logit, want, atol=1e-5) else f"RankBatch {b.version}: {b.ad_ids}"

    def check_explain(e) -> str | None:
        n = int(e.version[1:])
        row = theta_for(n, F)[ads_for(n).index(ANCHOR)]  # the anchor's row moves between versions
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
                kind = ("Rank", "RankBatch", "Explain")[k % 3]
                try:
                    if kind == "Rank":
                        r = c.rank(features=x, top_k=4)
                        bad = check_rank(r)
                    elif kind == "RankBatch":
                        r = c.rank_batch(X, top_k=4)
                        bad = check_batch(r)
                    else:
                        r = c.explain(ANCHOR, features=x)
                        bad = check_explain(r)
                except RankerError as e:
                    with lock:
                        errors.append(f"{e.code.name}: {e.details}")
                    continue
                with lock:
                    ncalls[0] += 1
                    seen.setdefault(r.version, set()).add(kind)
                    if bad:
                        mixed.append(bad)

    with RankerClient(sp.target) as c:
        assert c.model_info().version == "v000002"

    def publish(n: int) -> None:
        v = w.publish(ads_for(n), theta_for(n, F), world.features, manifest={"n": n})
        assert v == f"v{n:06d}"

    def served(n: int) -> bool:
        with lock:
            return len(seen.get(f"v{n:06d}", ())) == 3

    t0 = time.monotonic()
    published = [f"v{n:06d}" for n in range(3, 3 + PUBLISHES)]
    publish_under_load(load, range(3, 3 + PUBLISHES), publish, stop, w, served)
    id_sets = {frozenset(ads_for(n)) for n in range(2, 3 + PUBLISHES)}
    record("row06", publishes=PUBLISHES, seconds=round(time.monotonic() - t0, 2), calls=ncalls[0],
           errors=len(errors), mixed=len(mixed), distinct_ad_id_sets=len(id_sets),
           versions_served_by_all_three_rpcs=sum(len(seen.get(v, ())) == 3 for v in published),
           last_version=published[-1])
    assert len(id_sets) >= 10  # the versions really differ in their ads
    assert not errors, errors[:5]
    assert not mixed, mixed[:5]
    assert set(seen) <= {"v000002", *published}, sorted(seen)
    assert all(seen.get(v) == {"Rank", "RankBatch", "Explain"} for v in published), \
        [v for v in published if seen.get(v) != {"Rank", "RankBatch", "Explain"}]


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

    def served(n: int) -> bool:
        with lock:
            return f"v{n:06d}" in seen

    publish_under_load(load, range(2, 2 + PUBLISHES),
                       lambda n: w.publish(ad_ids, weights(n), world.features, users=(users, rows(n), world.features)),
                       stop, w, served)
    record("row06_by_id", publishes=PUBLISHES, calls=ncalls[0], errors=len(errors), mixed=len(mixed),
           distinct_versions_served=len(seen))
    assert not errors, errors[:5]
    assert not mixed, mixed[:5]
    published = {f"v{n:06d}" for n in range(2, 2 + PUBLISHES)}
    assert published <= seen <= published | {"v000001"}, sorted(seen ^ published)  # every publish served
