"""``llmhyper publish --rules/--sigma`` and ``llmhyper build --rules`` through the real CLI and LMDB."""
from __future__ import annotations

import json

import numpy as np
import pytest

from llmhyper.cli import main
from llmhyper.store.rules_file import read_rules_file, write_rules_file
from llmhyper.store.weight_store import WeightStore
from tests.helpers import make_world, run_cli


@pytest.fixture
def weights(tmp_path):
    from offline.data.artifact import WeightArtifact

    w = make_world(seed=5, M=6, F=4)
    path = tmp_path / "w.npz"
    WeightArtifact(ad_ids=w.ad_ids, theta=w.theta, features=w.features, manifest={"generator": "knn"}).save(path)
    return w, path


def test_publish_with_rules_csv_json_and_sigma(tmp_path, weights):
    w, path = weights
    csv_file = tmp_path / "rules.csv"
    csv_file.write_text("ad_id,feature,threshold,reason\nad001,f2,0.5,meat dish\nad003,f1,-0.25,\n")
    sig = tmp_path / "sigma.npy"
    np.save(sig, np.full((w.M, w.F), 0.1, np.float32))
    store = tmp_path / "s"
    r = run_cli("publish", str(path), "--store", str(store), "--rules", str(csv_file), "--sigma", str(sig), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["n_rules"] == 2 and json.loads(r.stdout)["sigma"] is True
    js = tmp_path / "rules.json"
    write_rules_file(js, [("ad005", "f3", 1.5)])
    assert read_rules_file(js)[0] == [("ad005", "f3", 1.5)]
    r = run_cli("publish", str(path), "--store", str(store), "--rules", str(js))
    assert r.returncode == 0 and "1 content rules" in r.stdout
    with WeightStore(store, readonly=True) as s:
        v1, v2 = s.view("v000001"), s.view("v000002")
        assert v1.rules.triples() == [(1, 2, 0.5), (3, 1, -0.25)]
        assert np.all(v1.sigma == np.float32(0.1))
        assert v2.rules.triples() == [(5, 3, 1.5)] and v2.sigma is None


@pytest.mark.parametrize("body,match", [
    ("ad_id,feature,threshold\nad001,vegan,0.5\n", r"rules.csv line 2 \(ad 'ad001'\): unknown feature 'vegan'"),
    ("ad_id,feature,threshold\nad001,f1,0.5\nad999,f1,0.5\n", r"rules.csv line 3: unknown ad id 'ad999'"),
    ("ad_id,feature,threshold\nad001,f1,nan\n", r"rules.csv line 2 \(ad 'ad001', feature 'f1'\): threshold nan is not finite"),
    ("ad_id,feature,threshold\nad001,f1,inf\n", r"threshold inf is not finite"),
    ("ad_id,feature,threshold\nad001,f1,high\n", r"rules.csv line 2: threshold is not a number: 'high'"),
    ("ad,feature,threshold\nad001,f1,1\n", r"rules.csv line 1: missing column\(s\) ad_id"),
])
def test_bad_rules_file_exits_2_naming_it_and_publishes_nothing(tmp_path, weights, body, match):
    _, path = weights
    f = tmp_path / "rules.csv"
    f.write_text(body)
    store = tmp_path / "s"
    r = run_cli("publish", str(path), "--store", str(store), "--rules", str(f))
    assert r.returncode == 2, r.stderr
    import re

    assert re.search(match, r.stderr), r.stderr
    if store.exists():
        with WeightStore(store, readonly=True) as s:
            assert s.current_version() is None


def test_bad_json_rules_name_the_entry(tmp_path, weights):
    _, path = weights
    f = tmp_path / "r.json"
    f.write_text(json.dumps([{"ad_id": "ad001", "feature": "f1", "threshold": 1.0}, {"ad_id": "ad002", "feature": "f1"}]))
    r = run_cli("publish", str(path), "--store", str(tmp_path / "s"), "--rules", str(f))
    assert r.returncode == 2 and "r.json rule 1: missing key(s) threshold" in r.stderr


def test_build_with_rules_stores_them_and_checks_the_file_first(tmp_path, capsys):
    work = tmp_path / "work"
    store = tmp_path / "store"
    bad = tmp_path / "bad.csv"
    bad.write_text("ad_id,feature\nx,y\n")
    args = ["build", "--dataset", "synthetic:3", "--store", str(store), "--work-dir", str(work), "--quiet", "--json"]
    assert main(args + ["--rules", str(bad)]) == 2  # refused before the pipeline runs
    assert not work.exists()
    assert main(args + ["--no-publish", "--out", str(tmp_path / "o.npz"), "--rules", str(bad)]) == 2
    capsys.readouterr()
    from offline.pipeline import load_source

    ds = load_source("synthetic:3")
    cold = [ds.ads[i].ad_id for i in ds.time_split().cold]
    feat = [n for n, _ in ds.features][1]
    good = tmp_path / "rules.json"
    write_rules_file(good, [(cold[0], feat, 0.0), (cold[1], feat, 0.5)])
    assert main(args + ["--rules", str(good)]) == 0
    version = json.loads(capsys.readouterr().out)["version"]
    with WeightStore(store, readonly=True) as s:
        view = s.view(version)
        assert view.rules.n_rules == 2
        assert view.rules.of_ad(view.ad_ids.index(cold[1])) == [(1, 1, 0.5)]
    unknown = tmp_path / "unknown.csv"
    unknown.write_text(f"ad_id,feature,threshold\n{cold[0]},no_such_feature,1\n")
    assert main(args + ["--rules", str(unknown)]) == 2
    assert "unknown.csv line 2" in capsys.readouterr().err
    with WeightStore(store, readonly=True) as s:
        assert s.current_version() == version
