"""``llmhyper build`` end to end: dataset -> weights -> store, caches, failures publish nothing.

Runs the real CLI in-process (``llmhyper.cli.main.main``) against real LMDB stores in tmp dirs,
the bundled MiniLM encoder, and for LLM generators the real google-genai client pointed at the
local Gemini-protocol server.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llmhyper.cli import main
from offline.pipeline import BuildConfig, build, load_source, movielens_path


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache dir for the module, so MiniLM runs once per dataset."""
    return tmp_path_factory.mktemp("build-work")


def _store_versions(path: Path) -> list[dict]:
    from llmhyper.store.weight_store import WeightStore

    with WeightStore(path, readonly=True) as s:
        return s.list_versions()


def test_build_publishes_every_cold_ad_and_reuses_caches(tmp_path: Path, work: Path, capsys) -> None:
    store = tmp_path / "store"
    args = ["build", "--dataset", "synthetic:3", "--store", str(store), "--work-dir", str(work), "--json", "--quiet"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    ds = load_source("synthetic:3")
    split = ds.time_split()
    assert first["n_published"] == len(split.cold) > 0
    assert first["cache"]["warm_cache"] == "miss" and first["cache"]["embed_misses"] > 0

    assert main(args) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["cache"] == {"warm_cache": "hit", "embed_hits": ds.n_ads, "embed_misses": 0}
    versions = _store_versions(store)
    assert [v["version"] for v in versions] == [first["version"], second["version"]]

    from llmhyper.store.weight_store import WeightStore

    with WeightStore(store, readonly=True) as s:
        v1, v2 = s.view(first["version"]), s.view(second["version"])
        assert np.array_equal(v1.theta, v2.theta)  # deterministic generator, same inputs
        assert set(v2.ad_ids) == {ds.ads[i].ad_id for i in split.cold}
        rec = s.ad_record(v2.version, v2.ad_ids[0])
        assert len(rec["neighbours"]) == BuildConfig().k and all(n[0] not in v2.ad_ids for n in rec["neighbours"])
        assert v2.manifest["generator"] and v2.manifest["config"]["dataset"] == "synthetic:3"
        assert s.n_users() == ds.n_users


def test_build_out_file_round_trips_through_publish(tmp_path: Path, work: Path, capsys) -> None:
    out = tmp_path / "weights.npz"
    assert main(["build", "--dataset", "synthetic:3", "--work-dir", str(work), "--no-publish", "--out", str(out),
                 "--quiet"]) == 0
    assert out.is_file() and out.with_suffix(".users.npz").is_file()
    store = tmp_path / "store"
    assert main(["publish", str(out), "--store", str(store), "--users", str(out.with_suffix(".users.npz"))]) == 0
    assert "published v000001" in capsys.readouterr().out


@pytest.mark.parametrize("argv, needle", [
    (["build", "--dataset", "synthetic"], "give --store"),
    (["build", "--dataset", "synthetic", "--no-publish"], "--no-publish needs --out"),
    (["build", "--dataset", "/no/such/dir", "--store", "S"], "neither a directory"),
])
def test_build_bad_arguments_exit_2_with_message(argv, needle, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and needle in err


@pytest.mark.parametrize("column, bad, needle", [
    ("users", "nan", "users.csv"),
    ("interactions", "no_such_ad", "no_such_ad"),
    ("ads", "not-a-time", "not-a-time"),
])
def test_build_on_a_malformed_dataset_exits_2_naming_it(column, bad, needle, tmp_path: Path, capsys) -> None:
    """A malformed dataset is the caller's input: exit 2 with the file or value named, nothing published."""
    import csv

    from offline.data.adapters.synthetic import make_synthetic
    from offline.data.writer import save_dataset

    ds, _ = make_synthetic(seed=1)
    root = tmp_path / "ds"
    save_dataset(ds, root)
    path = root / f"{column}.csv"
    rows = list(csv.reader(path.open(newline="")))
    target = rows[0].index({"users": rows[0][1], "interactions": "ad_id", "ads": "launched_at"}[column])
    rows[1][target] = bad
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    store = tmp_path / "store"
    assert main(["build", "--dataset", str(root), "--store", str(store), "--quiet"]) == 2
    assert needle in capsys.readouterr().err
    assert not store.exists() or _store_versions(store) == []


def test_bad_config_key_is_named(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"dataset": "synthetic", "neighbors": 5}))
    assert main(["build", "--config", str(cfg), "--store", str(tmp_path / "s")]) == 2
    assert "neighbors" in capsys.readouterr().err


def test_llm_build_through_gemini_protocol_and_failed_run_publishes_nothing(tmp_path: Path, work: Path,
                                                                            monkeypatch, capsys) -> None:
    from tests.fakes.llm_server import FakeLLMServer

    monkeypatch.setenv("GEMINI_API_KEY", "test-key")
    store = tmp_path / "store"
    base = {"dataset": "synthetic:3", "work_dir": str(work), "generator": "gemini", "k": 5,
            "generator_options": {"n_samples": 1, "shots": 3, "max_retries": 1, "backoff_base": 0.0,
                                  "backoff_cap": 0.0, "max_concurrency": 2}}
    with FakeLLMServer() as llm:
        opts = {**base["generator_options"], "base_url": llm.base_url, "model": "gemini-test"}
        cfg = tmp_path / "ok.json"
        cfg.write_text(json.dumps({**base, "generator_options": opts}))
        assert main(["build", "--config", str(cfg), "--store", str(store), "--json", "--quiet"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["n_failed"] == 0
        n_cold = report["n_published"]
        assert llm.ok_count >= n_cold  # at least one validated answer per ad (features are batched)
        calls = sum(llm.calls_by_route.values())
        # a rerun answers every batch from the response cache: no new call reaches the server
        assert main(["build", "--config", str(cfg), "--store", str(store), "--quiet"]) == 0
        capsys.readouterr()
        assert sum(llm.calls_by_route.values()) == calls
        first = _store_versions(store)
        assert len(first) == 2 and first[0]["generator"].startswith("llm")

        # every answer poisoned + on_failure=abort: the build fails and the store is untouched
        llm.always("nan")
        cfg2 = tmp_path / "bad.json"
        cfg2.write_text(json.dumps({**base, "on_failure": "abort", "work_dir": str(tmp_path / "fresh"),
                                    "generator_options": opts}))
        assert main(["build", "--config", str(cfg2), "--store", str(store), "--quiet"]) == 1
        assert "nothing published" in capsys.readouterr().err
        assert _store_versions(store) == first


@pytest.mark.slow
@pytest.mark.movielens
def test_movielens_build_end_to_end(tmp_path: Path, capsys) -> None:
    """Issue 3's bar: every cold movie gets published weights, and a rerun hits every cache."""
    path = movielens_path()
    work = tmp_path / "work"
    store = tmp_path / "store"
    args = ["build", "--dataset", f"movielens-100k:{path}", "--store", str(store), "--work-dir", str(work),
            "--json", "--quiet"]
    assert main(args) == 0
    rep = json.loads(capsys.readouterr().out)
    ds = load_source(f"movielens-100k:{path}")
    assert rep["n_published"] == len(ds.time_split().cold) == 224
    assert main(args) == 0
    rep2 = json.loads(capsys.readouterr().out)
    assert rep2["cache"]["warm_cache"] == "hit" and rep2["cache"]["embed_misses"] == 0


def test_failed_llm_ad_falls_back_to_knn_weights_calibrated_as_knn(tmp_path: Path, work: Path, monkeypatch) -> None:
    """A poisoned ad gets the default kNN weights, calibrated the kNN way (no unit norm, no
    shift), while the LLM ads get the paper's normalise + shift."""
    from tests.fakes.llm_server import FakeLLMServer

    monkeypatch.setenv("GEMINI_API_KEY", "test-key")
    ds = load_source("synthetic:3")
    bad = ds.ads[ds.time_split().cold[0]]
    with FakeLLMServer() as llm:
        llm.always("nan", match=bad.title)
        cfg = BuildConfig(dataset="synthetic:3", work_dir=str(work), generator="gemini", k=5, limit_cold=3,
                          generator_options={"n_samples": 1, "shots": 3, "max_retries": 1, "backoff_base": 0.0,
                                             "backoff_cap": 0.0, "base_url": llm.base_url, "model": "gemini-test",
                                             "cache_dir": str(tmp_path / "llm-cache")})  # no answers from other tests
        res = build(cfg, quiet=True, dataset=ds)
    recs = res.artifact.ad_records
    assert recs[bad.ad_id]["failed"] and recs[bad.ad_id]["fallback"] == "knn-content"
    assert recs[bad.ad_id]["alpha"] is None and recs[bad.ad_id]["scale"] == 1.0
    good = [a for a in res.artifact.ad_ids if a != bad.ad_id]
    assert good and all(recs[a]["alpha"] is not None and recs[a]["scale"] != 1.0 for a in good)
    knn = build(BuildConfig(dataset="synthetic:3", work_dir=str(work), k=5, limit_cold=3), quiet=True, dataset=ds)
    row = res.artifact.ad_ids.index(bad.ad_id)
    assert np.allclose(res.artifact.theta[row], knn.artifact.theta[knn.artifact.ad_ids.index(bad.ad_id)], atol=1e-6)
