"""Dataset layout: round trips, every validation error, split/labels/pairs/CTR vs plain loops,
and the synthetic world's determinism and structure."""

from __future__ import annotations

import csv
import json
from datetime import datetime, timezone

import numpy as np
import pytest

from offline.data.adapters.synthetic import CATEGORY_NAMES, make_synthetic
from offline.data.dataset import Dataset, DatasetError, parse_time
from offline.data.reader import load_dataset
from offline.data.writer import save_dataset


@pytest.fixture(scope="module")
def small():
    return make_synthetic(n_ads=40, n_users=300, seed=7)


def _rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def _write(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)


def assert_same(a: Dataset, b: Dataset) -> None:
    assert a.name == b.name and a.implicit == b.implicit and a.description == b.description
    assert a.features == b.features and a.user_ids == b.user_ids
    assert np.array_equal(a.X, b.X) and a.X.dtype == b.X.dtype == np.float32
    assert a.ads == b.ads
    for f in ("inter_user", "inter_ad", "inter_clicked", "inter_ts"):
        assert np.array_equal(getattr(a, f), getattr(b, f)), f


@pytest.mark.parametrize("implicit", [True, False])
def test_round_trip(tmp_path, implicit):
    ds, _ = make_synthetic(n_ads=30, n_users=200, seed=1, implicit=implicit)
    save_dataset(ds, tmp_path / "d")
    got = load_dataset(tmp_path / "d")
    assert_same(ds, got)
    assert got.meta == ds.meta


def test_iso_times_and_relative_image_paths(tmp_path, small):
    ds, _ = small
    d = save_dataset(ds, tmp_path / "d")
    rows = _rows(d / "ads.csv")
    h = rows[0]
    rows[1][h.index("launched_at")] = "2024-05-01T12:00:00Z"
    rows[2][h.index("launched_at")] = "2024-05-01T14:00:00+02:00"
    rows[3][h.index("image_path")] = "img/x.png"
    _write(d / "ads.csv", rows)
    got = load_dataset(d)
    want = datetime(2024, 5, 1, 12, tzinfo=timezone.utc).timestamp()
    assert got.ads[0].launched_at == want and got.ads[1].launched_at == want
    assert got.ads[2].image_path == str(d / "img" / "x.png")
    assert got.ads[3].image_path is None
    assert parse_time("1700000000.5") == 1700000000.5
    with pytest.raises(ValueError):
        parse_time("yesterday")


def _corrupt(d, fname, fn):
    rows = _rows(d / fname)
    fn(rows)
    _write(d / fname, rows)


def _drop_column(rows, col):
    j = rows[0].index(col)
    for x in rows:
        x.pop(j)


def _set(rows, r, col, value):
    rows[r][rows[0].index(col)] = value


CASES = {
    "missing file": (lambda d: (d / "users.csv").unlink(), "missing file users.csv"),
    "missing column": (lambda d: _corrupt(d, "ads.csv", lambda r: _drop_column(r, "category")),
                       "ads.csv: missing column.*category"),
    "duplicate ad": (lambda d: _corrupt(d, "ads.csv", lambda r: _set(r, 3, "ad_id", r[1][0])),
                     "ads.csv line 4: duplicate ad_id 'ad0000'"),
    "duplicate user": (lambda d: _corrupt(d, "users.csv", lambda r: _set(r, 5, "user_id", "u00000")),
                       "users.csv line 6: duplicate user_id 'u00000'"),
    "unknown ad": (lambda d: _corrupt(d, "interactions.csv", lambda r: _set(r, 2, "ad_id", "nope")),
                   "interactions.csv line 3: unknown ad_id 'nope'"),
    "unknown user": (lambda d: _corrupt(d, "interactions.csv", lambda r: _set(r, 9, "user_id", "ghost")),
                     "interactions.csv line 10: unknown user_id 'ghost'"),
    "clicked not 0/1": (lambda d: _corrupt(d, "interactions.csv", lambda r: _set(r, 4, "clicked", "2")),
                        "interactions.csv line 5: clicked must be 0 or 1, got '2'"),
    "zero in implicit": (lambda d: _corrupt(d, "interactions.csv", lambda r: _set(r, 4, "clicked", "0")),
                         "line 5: clicked = 0 in implicit-negative data"),
    "nan feature": (lambda d: _corrupt(d, "users.csv", lambda r: _set(r, 3, "activity", "nan")),
                    "users.csv line 4: feature 'activity' is not finite"),
    "inf feature": (lambda d: _corrupt(d, "users.csv", lambda r: _set(r, 3, "activity", "1e400")),
                    "users.csv line 4: feature 'activity' is not finite"),
    "text feature": (lambda d: _corrupt(d, "users.csv", lambda r: _set(r, 2, "age_50_plus", "old")),
                     "users.csv line 3: feature 'age_50_plus' is not a number"),
    "feature order": (lambda d: _corrupt(d, "features.csv", lambda r: r.insert(2, r.pop(3))),
                      "same names in a different order"),
    "missing feature column": (lambda d: _corrupt(d, "users.csv", lambda r: [x.pop() for x in r]),
                               "missing frequent_traveller"),
    "first not bias": (lambda d: _corrupt(d, "features.csv", lambda r: r.pop(1)),
                       "first feature must be 'bias'"),
    "bad launched_at": (lambda d: _corrupt(d, "ads.csv", lambda r: _set(r, 6, "launched_at", "next tuesday")),
                        "ads.csv line 7: unparseable launched_at 'next tuesday'"),
    "bad timestamp": (lambda d: _corrupt(d, "interactions.csv", lambda r: _set(r, 6, "timestamp", "")),
                      "interactions.csv line 7: unparseable timestamp"),
    "bad json": (lambda d: (d / "dataset.json").write_text(json.dumps({"name": "x"})), "implicit_negatives"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_validation_errors(tmp_path, small, case):
    ds, _ = small
    d = save_dataset(ds, tmp_path / "d")
    load_dataset(d)  # valid before corruption
    corrupt, message = CASES[case]
    corrupt(d)
    with pytest.raises(DatasetError, match=message):
        load_dataset(d)


def test_missing_directory(tmp_path):
    with pytest.raises(DatasetError, match="dataset directory not found"):
        load_dataset(tmp_path / "none")


def test_in_memory_validation(small):
    ds, _ = small
    X = ds.X.copy()
    X[4, 2] = np.inf
    with pytest.raises(DatasetError, match="user 'u00004': non-finite value for feature 'interest_kitchen'"):
        Dataset(ds.name, ds.ads, ds.user_ids, X, ds.features, ds.inter_user, ds.inter_ad,
                ds.inter_clicked, ds.inter_ts, ds.implicit)
    with pytest.raises(DatasetError, match="positives only"):
        Dataset(ds.name, ds.ads, ds.user_ids, ds.X, ds.features, ds.inter_user, ds.inter_ad,
                np.zeros_like(ds.inter_clicked), ds.inter_ts, True)


def test_time_split_matches_plain_rule(small):
    ds, _ = small
    lt = np.array([a.launched_at for a in ds.ads])
    counts = [sum(1 for a in ds.inter_ad if a == i) for i in range(ds.n_ads)]
    for q, m in [(0.7, 5), (0.5, 0), (0.7, 60)]:
        sp = ds.time_split(quantile=q, min_interactions=m)
        T = np.quantile(lt, q)
        assert sp.cutoff == T
        assert list(sp.warm) == [i for i in range(ds.n_ads) if lt[i] < T and counts[i] >= m]
        assert list(sp.cold) == [i for i in range(ds.n_ads) if lt[i] >= T and counts[i] >= m]
    assert len(ds.time_split().warm) > 0 and len(ds.time_split().cold) > 0
    sp = ds.time_split(cutoff=lt[10])
    assert 10 in sp.cold and 9 in sp.warm  # launched_at is sorted in the synthetic world
    # a declared cutoff is the default, an explicit quantile overrides it
    ds.meta["time_split"] = {"cutoff": float(lt[20]), "min_interactions": 0}
    try:
        assert ds.time_split().cutoff == lt[20] and ds.time_split().warm.tolist() == list(range(20))
        assert ds.time_split(quantile=0.7).cutoff == np.quantile(lt, 0.7)
    finally:
        del ds.meta["time_split"]
    # a declared quantile (without a cutoff) is the default too, not silently replaced by 0.7
    ds.meta["time_split"] = {"quantile": 0.3}
    try:
        assert ds.time_split().cutoff == np.quantile(lt, 0.3)
        assert ds.time_split(quantile=0.7).cutoff == np.quantile(lt, 0.7)
    finally:
        del ds.meta["time_split"]


def test_labels_pairs_and_ctr_implicit(small):
    ds, _ = small
    idx = np.array([3, 0, 17])
    Y = ds.labels(idx)
    assert Y.dtype == np.uint8 and Y.shape == (ds.n_users, 3)
    want = np.zeros_like(Y)
    for u, a in zip(ds.inter_user, ds.inter_ad):
        if a in idx:
            want[u, list(idx).index(a)] = 1
    assert np.array_equal(Y, want) and Y.sum() > 0
    u, c, y = ds.pairs(idx)
    assert u.size == ds.n_users * 3 and np.array_equal(y, Y[u, c])
    assert np.allclose(ds.mean_ctr(idx), Y.mean(axis=0))


def test_pairs_and_ctr_explicit():
    ds, _ = make_synthetic(n_ads=20, n_users=150, seed=2, implicit=False)
    with pytest.raises(DatasetError, match="use pairs"):
        ds.labels(np.array([0]))
    idx = np.array([5, 2])
    u, c, y = ds.pairs(idx)
    rows = [(uu, list(idx).index(a), cl) for uu, a, cl in zip(ds.inter_user, ds.inter_ad, ds.inter_clicked) if a in idx]
    assert sorted(zip(u.tolist(), c.tolist(), y.tolist())) == sorted(rows)
    ctr = [np.mean([cl for _, cc, cl in rows if cc == j]) for j in range(2)]
    assert np.allclose(ds.mean_ctr(idx), ctr)
    assert 0 < (y == 0).sum() and 0 < (y == 1).sum()


def test_synthetic_is_deterministic_and_category_driven():
    a, ta = make_synthetic(seed=11)
    b, tb = make_synthetic(seed=11)
    c, tc = make_synthetic(seed=12)
    assert_same(a, b) and np.array_equal(ta, tb)
    assert not np.array_equal(ta, tc)
    assert ta.shape == (200, 12) and ta.dtype == np.float32 and a.X.shape == (2000, 12)
    assert a.features[0][0] == "bias" and all(d for _, d in a.features)
    cats = np.array([x.category for x in a.ads])
    assert set(cats) <= set(CATEGORY_NAMES) and len(set(cats)) == len(CATEGORY_NAMES)
    # ads of one category have close true weights; different categories are far apart
    d = np.linalg.norm(ta[:, None, :] - ta[None, :, :], axis=2)
    same = cats[:, None] == cats[None, :]
    off = ~np.eye(len(cats), dtype=bool)
    assert d[same & off].mean() * 3 < d[~same].mean()
    sp = a.time_split()
    assert len(sp.warm) > 100 and len(sp.cold) > 40
    assert a.ads[0].title and a.ads[0].image_caption.startswith("A photo of")
    with pytest.raises(ValueError, match="n_features"):
        make_synthetic(n_features=40)
    assert make_synthetic(n_ads=5, n_users=10, n_features=8)[0].X.shape == (10, 8)


def _to_parquet(d, name: str) -> None:
    """Replace d/name.csv by d/name.parquet (numbers typed by pyarrow, ids kept as text)."""
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    src = d / f"{name}.csv"
    ids = {c: pa.string() for c in ("user_id", "ad_id", "name", "definition", "title", "description",
                                     "image_path", "image_caption", "category")}
    t = pcsv.read_csv(src, convert_options=pcsv.ConvertOptions(column_types=ids))
    pq.write_table(t, d / f"{name}.parquet")
    src.unlink()


def test_parquet_files_load_like_csv(tmp_path, small):
    ds, _ = small
    d = save_dataset(ds, tmp_path / "d")
    want = load_dataset(d)
    for name in ("ads", "interactions", "users", "features"):
        _to_parquet(d, name)
    got = load_dataset(d)
    assert_same(want, got)
    assert not list(d.glob("*.csv"))


def test_parquet_files_are_checked_like_csv(tmp_path, small):
    import pyarrow.parquet as pq

    ds, _ = small
    d = save_dataset(ds, tmp_path / "d")
    _to_parquet(d, "users")
    t = pq.read_table(d / "users.parquet")
    col = t.column_names[1]
    vals = t.column(col).to_pylist()
    vals[3] = float("nan")
    pq.write_table(t.set_column(1, col, [vals]), d / "users.parquet")
    with pytest.raises(DatasetError, match=rf"users.parquet line 5: feature '{col}' is not finite"):
        load_dataset(d)
    (d / "users.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DatasetError, match="users.parquet: cannot read Parquet file"):
        load_dataset(d)
    save_dataset(ds, tmp_path / "d")  # users.csv back beside users.parquet
    with pytest.raises(DatasetError, match="both users.csv and users.parquet exist"):
        load_dataset(d)
