"""WeightArtifact / UserTable: round trips, validation on save and load, atomic writes."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest

from offline.data.artifact import USERS_FORMAT, WEIGHTS_FORMAT, UserTable, WeightArtifact

FEATS = [("bias", "intercept"), ("age", "age in years / 100"), ("likes_books", "1 if the user reads books")]


def make_artifact() -> WeightArtifact:
    rng = np.random.default_rng(3)
    return WeightArtifact(
        ad_ids=["a1", "a2", "é-ad"],
        theta=rng.normal(size=(3, 3)).astype(np.float32),
        features=list(FEATS),
        manifest={"generator": "knn", "created_at": 1.5, "alpha": np.float32(0.25), "k": np.int64(5)},
        ad_records={"a1": {"neighbours": [["w1", 0.9]], "delta": -0.3}, "é-ad": {"failed": None}},
    )


def test_weight_artifact_round_trip(tmp_path):
    art = make_artifact()
    p = tmp_path / "w.npz"
    art.save(p)
    got = WeightArtifact.load(p)
    assert got.ad_ids == art.ad_ids
    assert got.theta.dtype == np.float32 and np.array_equal(got.theta, art.theta)
    assert got.features == FEATS
    assert got.manifest == {"generator": "knn", "created_at": 1.5, "alpha": 0.25, "k": 5}
    assert got.ad_records["a1"] == {"neighbours": [["w1", 0.9]], "delta": -0.3}
    assert [f.name for f in tmp_path.iterdir()] == ["w.npz"]  # no temporary file left behind


@pytest.mark.parametrize("mutate, message", [
    (lambda a: setattr(a, "theta", a.theta.astype(np.float64)), "float32"),
    (lambda a: a.theta.__setitem__((1, 2), np.nan), "non-finite weight for ad 'a2', feature 'likes_books'"),
    (lambda a: setattr(a, "theta", a.theta[:, :2].copy()), "does not match"),
    (lambda a: setattr(a, "features", [FEATS[1], FEATS[0], FEATS[2]]), "first feature must be 'bias'"),
    (lambda a: setattr(a, "ad_ids", ["a1", "a1", "a3"]), "duplicate id 'a1'"),
    (lambda a: a.ad_records.__setitem__("zz", {}), "unknown ad id 'zz'"),
    (lambda a: a.manifest.__setitem__("bad", float("inf")), "JSON"),
])
def test_save_refuses_invalid_and_keeps_previous_file(tmp_path, mutate, message):
    p = tmp_path / "w.npz"
    good = make_artifact()
    good.save(p)
    before = p.read_bytes()
    bad = make_artifact()
    mutate(bad)
    with pytest.raises(ValueError, match=message):
        bad.save(p)
    assert p.read_bytes() == before
    assert sorted(f.name for f in tmp_path.iterdir()) == ["w.npz"]


def _write_raw(path, **arrays):
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.write_bytes(buf.getvalue())


def _meta(**over):
    m = {"ad_ids": ["a", "b"], "features": [list(f) for f in FEATS], "manifest": {}, "ad_records": {}}
    m.update(over)
    return np.array(json.dumps(m))


@pytest.mark.parametrize("arrays, message", [
    (dict(format=np.array(WEIGHTS_FORMAT), theta=np.zeros((2, 3), np.float64), meta=_meta()), "float32"),
    (dict(format=np.array(WEIGHTS_FORMAT), theta=np.array([[0, 1, np.inf], [0, 0, 0]], np.float32), meta=_meta()),
     "non-finite weight for ad 'a'"),
    (dict(format=np.array(WEIGHTS_FORMAT), theta=np.zeros((3, 3), np.float32), meta=_meta()), r"shape \(3, 3\)"),
    (dict(format=np.array(WEIGHTS_FORMAT), theta=np.zeros((2, 3), np.float32),
          meta=_meta(features=[["age", "x"], ["bias", "y"], ["c", "z"]])), "first feature must be 'bias'"),
    (dict(format=np.array(WEIGHTS_FORMAT), theta=np.zeros((2, 3), np.float32)), "missing entry 'meta'"),
    (dict(format=np.array(USERS_FORMAT), X=np.ones((2, 3), np.float32), meta=_meta()), "expected 'llmhyper.weights/1'"),
    (dict(format=np.array(WEIGHTS_FORMAT), theta=np.zeros((2, 3), np.float32), meta=np.array("{not json")),
     "not valid JSON"),
])
def test_load_rejects_bad_files(tmp_path, arrays, message):
    p = tmp_path / "bad.npz"
    _write_raw(p, **arrays)
    with pytest.raises(ValueError, match=message):
        WeightArtifact.load(p)


def test_load_rejects_garbage_and_missing(tmp_path):
    p = tmp_path / "junk.npz"
    p.write_bytes(b"this is not a zip file")
    with pytest.raises(ValueError, match="not a readable .npz"):
        WeightArtifact.load(p)
    with pytest.raises(ValueError, match="file not found"):
        WeightArtifact.load(tmp_path / "nope.npz")


def test_user_table_round_trip_and_validation(tmp_path):
    X = np.ones((4, 3), np.float32)
    X[:, 1:] = np.arange(8, dtype=np.float32).reshape(4, 2) / 7
    tab = UserTable(user_ids=["u1", "u2", "u3", "u4"], X=X, features=list(FEATS))
    p = tmp_path / "users.npz"
    tab.save(p)
    got = UserTable.load(p)
    assert got.user_ids == tab.user_ids and np.array_equal(got.X, X) and got.features == FEATS
    make_artifact().save(tmp_path / "w.npz")
    with pytest.raises(ValueError, match="expected 'llmhyper.users/1'"):
        UserTable.load(tmp_path / "w.npz")
    (tmp_path / "w.npz").unlink()

    bad = X.copy()
    bad[2, 0] = 0.5
    with pytest.raises(ValueError, match="bias column must be 1.0.*row 2"):
        UserTable(user_ids=tab.user_ids, X=bad, features=list(FEATS)).save(tmp_path / "b.npz")
    with pytest.raises(ValueError, match="3 user ids"):
        UserTable(user_ids=["u1", "u2", "u3"], X=X, features=list(FEATS)).save(tmp_path / "b.npz")
    nan = X.copy()
    nan[1, 2] = np.nan
    with pytest.raises(ValueError, match="non-finite value at row 1, column 2"):
        UserTable(user_ids=tab.user_ids, X=nan, features=list(FEATS)).save(tmp_path / "b.npz")
    assert not os.path.exists(tmp_path / "b.npz")
