"""``llmhyper replay`` on a small synthetic world: real LMDB stores per policy refreshed through
the refresh command's code, real scoring kernels, per-step metrics and a cold-start period."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llmhyper.cli.main import main


@pytest.fixture(scope="module")
def prep(tmp_path_factory):
    """A prepared small synthetic world; embeddings are category one-hots plus noise (no MiniLM
    download or torch start-up in a unit test), neighbours through the real faiss index."""
    from offline import pipeline
    from offline.data.adapters.synthetic import make_synthetic

    ds, _ = make_synthetic(n_ads=90, n_users=500, seed=2)
    work = tmp_path_factory.mktemp("work")
    cfg = pipeline.BuildConfig(dataset="synthetic", work_dir=str(work), k=10)
    split = ds.time_split()
    warm_theta, l2 = pipeline.train_warm(ds, split, cfg)
    cats = sorted({a.category for a in ds.ads})
    rng = np.random.default_rng(0)
    emb = np.array([[a.category == c for c in cats] for a in ds.ads], dtype=np.float32)
    emb += rng.normal(0, 0.1, emb.shape).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    nbr, sim = pipeline.neighbours(emb, split, ds.ad_ids, 10)
    return pipeline.Prepared(ds, split, warm_theta, ds.mean_ctr(split.warm), l2, emb, nbr, sim, {})


def test_replay_reports_every_policy_per_step_and_a_cold_start_period(prep, tmp_path):
    from llmhyper.cli.replay_cmd import StoreReplayOps
    from offline.warm.replay import ReplayConfig, run_replay
    from offline.warm.report import write_replay_reports

    cfg = ReplayConfig(dataset="synthetic", seeds=1, step_days=4.0, min_clicks=5, max_steps=8, rolling=3, min_pos=3,
                       work_dir=str(tmp_path / "work"), quiet=True)
    ops = StoreReplayOps(tmp_path / "stores")
    try:
        result = run_replay(cfg, ops, prep=prep)
    finally:
        ops.close()
    names = {"frozen", "switch@5", "prior", "ceiling"}
    assert set(result["summary"]) == names
    assert result["prior_scale"]["chosen"] and result["prior_scale"]["scale"] > 0
    for n in names:
        steps = result["steps"][n]
        assert len(steps["auc"]) == 8 and len(steps["rolling_auc"]) == 8
        assert all(0.0 <= a <= 1.0 for a in steps["auc"] if a == a)
        assert sum(a == a for a in steps["auc"]) >= 6  # most steps have both classes
    # step 1 is scored with logs of step 0 only: few ads have any, most keep the generated weights
    # by the last step the prior-updated weights differ from the frozen ones
    assert result["steps"]["prior"]["auc"][-1] != result["steps"]["frozen"]["auc"][-1]
    cs = result["summary"]["ceiling"]["cold_start_steps"]["per_seed"][0]
    assert cs is not None and cs <= 1  # the ceiling is within its own band from the first scored step
    for n in names:
        v = result["summary"][n]["cold_start_steps"]["per_seed"][0]
        assert v is None or 0 <= v < 8
    files = write_replay_reports(result, tmp_path / "out")
    md = (tmp_path / "out" / "replay.md").read_text()
    assert "prior-updated" in md and "hard switch at 5 clicks" in md and "implicit negatives" in md
    assert json.loads((tmp_path / "out" / "replay.json").read_text())["summary"].keys() == names
    assert (tmp_path / "out" / "replay.png").stat().st_size > 1000 and len(files) == 3
    # the paired first-days differences agree with the pooled AUCs of the same pairs
    from offline.warm.replay import paired_first, verdict

    for a, b in (("prior", "frozen"), ("prior", "switch@5"), ("switch@5", "frozen")):
        (r,) = paired_first(result["per_seed_paired"], a, b)
        pooled = result["summary"][a]["auc_first_pooled"]["mean"] - result["summary"][b]["auc_first_pooled"]["mean"]
        assert r["diff"] == pytest.approx(pooled, abs=1e-9) and r["lo"] <= r["hi"] and r["n_clusters"] > 0
    assert "## Can the data tell?" in md and "prior - switch@5" in md
    assert result["checks"]["prior_vs_switch_first_days_paired"] == verdict(
        paired_first(result["per_seed_paired"], "prior", "switch@5"))
    # the paired rolling windows are the rolling AUC's windows: same difference where it is scored
    (seed_file,) = (tmp_path / "work" / "replay").glob("*/seed0.json")
    raw = json.loads(seed_file.read_text())
    roll = [np.nan if d is None else d for d, _, _ in raw["prior"]["paired_rolling_vs_frozen"]]
    want = [np.nan if (a is None or b is None) else a - b
            for a, b in zip(raw["prior"]["rolling_auc"], raw["frozen"]["rolling_auc"])]
    assert len(roll) == 8 and sum(np.isfinite(want)) >= 3
    np.testing.assert_allclose(roll, want, atol=1e-9)  # NaN in the same places
    for tag in ("steps", "rolling"):
        sure = result["checks"][f"prior_{tag}_surely_below_frozen_by_0.01"][0]
        mine = result["per_seed_summary"][0]["prior"]
        assert 0 <= sure <= mine[f"{tag}_judged_vs_frozen"] <= 8 and 0 <= mine[f"{tag}_below_frozen_by_gap"] <= 8
        assert mine[f"{tag}_judged_vs_frozen"] > 0  # this world scores >= 10 users per step

    # resume: a second run reads the finished seed and gives the same numbers
    ops = StoreReplayOps(tmp_path / "stores2")
    try:
        again = run_replay(cfg, ops, prep=prep)
    finally:
        ops.close()
    write_replay_reports(again, tmp_path / "out2")
    first, second = (json.loads((tmp_path / d / "replay.json").read_text()) for d in ("out", "out2"))
    assert first["steps"] == second["steps"] and first["summary"] == second["summary"]


def test_verdict_needs_every_seed_on_one_side():
    from offline.warm.replay import verdict

    nan = float("nan")
    assert verdict([{"lo": 0.01, "hi": 0.05}, {"lo": 0.002, "hi": 0.03}]) == "better"
    assert verdict([{"lo": -0.05, "hi": -0.01}, {"lo": -0.2, "hi": -0.001}]) == "worse"
    assert verdict([{"lo": 0.01, "hi": 0.05}, {"lo": -0.01, "hi": 0.03}]) == "not resolved"
    assert verdict([{"lo": 0.01, "hi": 0.05}, {"lo": nan, "hi": nan}]) == "not resolved"
    assert verdict([]) == "not resolved"


@pytest.mark.parametrize("args, match", [
    (["--seeds", "0"], "seeds must be >= 1"),
    (["--step-days", "0"], "step_days must be > 0"),
    (["--min-clicks", "0"], "min_clicks must be >= 1"),
    (["--resamples", "0"], "resamples must be >= 1"),
    (["--dataset", "/nonexistent/layout"], "neither a directory in the dataset layout"),
])
def test_bad_replay_arguments_exit_2(tmp_path, capsys, args, match):
    code = main(["replay", "--work-dir", str(tmp_path), "--out", str(tmp_path / "o"), "--quiet", *args])
    err = capsys.readouterr().err
    assert code == 2 and match in err, err
