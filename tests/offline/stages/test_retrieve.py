"""faiss neighbour search against a brute-force NumPy twin; self and id exclusion; k > W."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("faiss")

from offline.stages.retrieve import NeighbourIndex  # noqa: E402


def brute(emb, q, k, banned_per_row):
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    qq = q / np.linalg.norm(q, axis=1, keepdims=True)
    s = qq @ e.T
    out_i, out_s = [], []
    for r in range(q.shape[0]):
        order = [j for j in np.argsort(-s[r], kind="stable") if j not in banned_per_row[r]][:k]
        out_i.append(order)
        out_s.append(s[r, order])
    return np.array(out_i), np.array(out_s)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(50, 16)).astype(np.float32) * rng.uniform(0.5, 3, size=(50, 1)).astype(np.float32)
    return emb, [f"w{i}" for i in range(50)], rng


def test_matches_brute_force(data):
    emb, ids, rng = data
    q = rng.normal(size=(7, 16)).astype(np.float32)
    index = NeighbourIndex(emb, ids)
    idx, sim = index.search(q, 5)
    bi, bs = brute(emb, q, 5, [set()] * 7)
    assert idx.dtype == np.int64 and sim.dtype == np.float32 and idx.shape == (7, 5)
    assert np.array_equal(idx, bi) and np.allclose(sim, bs, atol=1e-5)
    assert np.all(np.diff(sim, axis=1) <= 1e-6)


def test_never_returns_the_ad_itself(data):
    emb, ids, _ = data
    index = NeighbourIndex(emb, ids)
    q = emb[[3, 10, 20]] * 2.0  # warm ads queried: each is its own nearest neighbour
    plain, _ = index.search(q, 4)
    assert plain[:, 0].tolist() == [3, 10, 20]
    idx, sim = index.search(q, 4, query_ids=["w3", "w10", None])
    assert 3 not in idx[0] and 10 not in idx[1] and idx[2, 0] == 20
    bi, bs = brute(emb, q, 4, [{3}, {10}, set()])
    assert np.array_equal(idx, bi) and np.allclose(sim, bs, atol=1e-5)
    idx, _ = index.search(q, 4, exclude=["w20", "w7"], query_ids=["w3", "w10", "cold9"])
    assert not ({20, 7} & set(idx.ravel().tolist()))
    nb = index.neighbours(q[:1], 3, query_ids=["w3"])
    assert len(nb[0]) == 3 and all(a != "w3" for a, _ in nb[0]) and -1 <= nb[0][0][1] <= 1


def test_k_larger_than_index(data):
    emb, ids, rng = data
    small = NeighbourIndex(emb[:4], ids[:4])
    idx, sim = small.search(rng.normal(size=(2, 16)).astype(np.float32), 10)
    assert idx.shape == (2, 4) and sorted(idx[0].tolist()) == [0, 1, 2, 3]
    idx, _ = small.search(emb[:2], 10, query_ids=["w0", "w1"], exclude=["w3"])
    assert idx.shape == (2, 2) and 0 not in idx[0] and 1 not in idx[1] and 3 not in idx.ravel()
    with pytest.raises(ValueError, match="no warm ads left"):
        NeighbourIndex(emb[:1], ids[:1]).search(emb[:1], 3, query_ids=["w0"])


def test_bad_input(data):
    emb, ids, _ = data
    with pytest.raises(ValueError, match="50 rows but 3 ids"):
        NeighbourIndex(emb, ids[:3])
    with pytest.raises(ValueError, match="unique"):
        NeighbourIndex(emb[:2], ["a", "a"])
    index = NeighbourIndex(emb, ids)
    with pytest.raises(ValueError, match=r"queries must be \[Q, 16\]"):
        index.search(np.zeros((2, 8), np.float32), 3)
    with pytest.raises(ValueError, match="k must be"):
        index.search(emb[:1], 0)
    with pytest.raises(ValueError, match="query_ids has 2 entries for 1"):
        index.search(emb[:1], 3, query_ids=["a", "b"])
