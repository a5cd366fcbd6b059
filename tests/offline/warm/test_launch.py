"""The simulated launch (offline/warm/launch.py) on a small synthetic world: real build with the
default generator, real refresh (MAP + Laplace), real compiled greedy and Thompson kernels."""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest

from llmhyper.cli.main import main
from offline.warm.launch import POLICIES, LaunchConfig, make_world, run_launch, run_seed


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """90 ads / 400 users; embeddings are category one-hots plus noise (no MiniLM in a unit test),
    neighbours through the real faiss index; the default generator builds the cold ads."""
    from offline import pipeline
    from offline.data.adapters.synthetic import make_synthetic

    ds, truth = make_synthetic(n_ads=90, n_users=400, seed=3)
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
    prep = pipeline.Prepared(ds, split, warm_theta, ds.mean_ctr(split.warm), l2, emb, nbr, sim, {})
    lcfg = LaunchConfig(prior_scale=1.0, steps=6, users_per_step=30, top_k=3, work_dir=str(work), quiet=True)
    return make_world(lcfg, prep, truth), prep, truth


def _cfg(**kw) -> LaunchConfig:
    base = dict(seeds=2, steps=6, users_per_step=30, top_k=3, prior_scale=1.0, sample_scale=1.0, quiet=True)
    return LaunchConfig(**{**base, **kw})


def test_world_is_the_build_output_with_its_spread(world):
    w, prep, truth = world
    assert w.prior.mu.shape == w.truth.shape == (len(prep.split.cold), prep.dataset.X.shape[1])
    assert w.info["generator"] == "knn-content" and w.info["prior_source"].get("spread", 0) > 0
    row = {a: i for i, a in enumerate(prep.dataset.ad_ids)}
    assert np.array_equal(w.truth, truth[[row[a] for a in w.ad_ids]])
    assert 0 < w.info["truth_diagnosis"]["z_std"] < 10


def test_launch_is_deterministic_given_the_seed(world):
    w = world[0]
    a, b = run_seed(_cfg(), w, 0), run_seed(_cfg(), w, 0)
    assert a == b
    c = run_seed(_cfg(), w, 1)
    assert c["greedy"]["clicks"] != a["greedy"]["clicks"] or c["thompson"]["regret"] != a["thompson"]["regret"]


def test_regret_is_nonnegative_and_cumulative_monotone(world, tmp_path):
    from offline.warm.launch_report import write_launch_reports

    res = run_launch(_cfg(), world=world[0])
    for s in res["per_seed"]:
        for p in POLICIES:
            assert len(s[p]["regret"]) == 6 and all(r >= 0.0 for r in s[p]["regret"])
            assert all(i == 30 * 3 for i in s[p]["impressions"])
            assert all(0 <= c <= 90 for c in s[p]["clicks"])
    for p in POLICIES:
        cr = np.array(res["steps"][p]["cum_regret_mean"])
        cc = np.array(res["steps"][p]["cum_clicks_mean"])
        assert np.all(np.diff(cr) >= 0) and np.all(np.diff(cc) >= 0) and cr[-1] > 0
        assert res["summary"][p]["cum_regret"]["per_seed"] == pytest.approx(
            [sum(s[p]["regret"]) for s in res["per_seed"]])
    # exploring costs something at the start: the two policies did not show the same ads
    assert res["per_seed"][0]["thompson"]["regret"] != res["per_seed"][0]["greedy"]["regret"]
    files = write_launch_reports(res, tmp_path / "out")
    md = (tmp_path / "out" / "launch.md").read_text()
    assert "| greedy |" in md and "| thompson |" in md and "Regret saved by Thompson" in md
    assert json.loads((tmp_path / "out" / "launch.json").read_text())["summary"].keys() == set(POLICIES)
    assert (tmp_path / "out" / "launch.png").stat().st_size > 1000 and len(files) == 3


def test_thompson_with_zero_spread_is_greedy_exactly(world):
    out = run_seed(_cfg(sample_scale=0.0), world[0], 0)
    assert out["thompson"] == out["greedy"]
    assert run_seed(_cfg(), world[0], 0)["thompson"] != out["greedy"]


@pytest.mark.parametrize("args, match", [
    (["--steps", "0"], "--steps must be an integer >= 1"),
    (["--users-per-step", "-3"], "--users-per-step must be an integer >= 1"),
    (["--top-k", "0"], "--top-k must be an integer >= 1"),
    (["--seeds", "0"], "--seeds must be an integer >= 1"),
    (["--sample-scale", "-1"], "--sample-scale must be a finite number >= 0"),
    (["--prior-scale", "nan"], "--prior-scale must be a finite number > 0"),
    (["--n-ads", "30"], "--n-ads must be an integer >= 40"),
    (["--n-users", "0"], "--n-users must be an integer >= 1, got 0"),
    (["--steps", "two"], "invalid int value"),
    (["--sample-scale", "wide"], "must be a number >= 0 or 'auto'"),
])
def test_bad_launch_options_exit_2(tmp_path, capsys, args, match):
    with pytest.raises(SystemExit) if args[1] in ("two", "wide") else contextlib.nullcontext() as e:
        code = main(["simulate-launch", "--work-dir", str(tmp_path), "--out", str(tmp_path / "o"), "--quiet", *args])
    if args[1] in ("two", "wide"):  # argparse rejects a non-integer itself, with its usage exit code 2
        code = e.value.code
    err = capsys.readouterr().err
    assert code == 2 and match in err, err
    assert not (tmp_path / "o").exists()


def test_pseudo_cold_priors_use_the_components_the_build_chose(world, tmp_path):
    """The retired ads' pseudo-cold priors (prior scale choice, spread calibration) come from the
    generator the build runs: same drift / intercept choice as the build's manifest records."""
    from offline import pipeline
    from offline.generators.content_knn import ContentKNNGenerator
    from offline.warm.scale import build_components, generator_priors

    _, prep, _ = world
    built = pipeline.build(pipeline.BuildConfig(dataset="synthetic", work_dir=str(tmp_path), k=10),
                           quiet=True, prep=prep)
    chosen = built.artifact.manifest["generator_config"]
    comp = build_components(prep)
    assert comp is not None and comp["auto_select"] is False
    assert {k: comp[k] for k in ("drift", "ctr_drift", "intercept")} == \
        {k: chosen[k] for k in ("drift", "ctr_drift", "intercept")}
    ds, sp = prep.dataset, prep.split
    lw = ds.launched_at[sp.warm]
    cand = np.argsort(lw, kind="stable")[-8:]
    mu, spread = generator_priors(prep, cand)
    assert mu.shape == spread.shape == (8, ds.X.shape[1]) and np.all(np.isfinite(mu)) and np.all(spread >= 0)
    # the unselected default differs whenever the selection turned a component off
    if not (comp["drift"] and comp["ctr_drift"] and comp["intercept"] == "stacked"):
        pool = np.flatnonzero(lw < lw[cand].min())
        raw = ContentKNNGenerator(auto_select=False).fit_arrays(
            prep.warm_theta[pool], prep.warm_ctr[pool], lw[pool], prep.emb[sp.warm][pool], float(lw[cand].min()),
            ds.X, {a: prep.emb[i] for i, a in enumerate(ds.ad_ids)}, warm_ads=[ds.ads[sp.warm[j]] for j in pool])
        assert raw.cfg.drift != comp["drift"] or raw.cfg.intercept != comp["intercept"]


def test_sample_scale_is_chosen_on_retired_launches(world):
    """The default sample scale comes from the same launch played on retired ads (their trained
    weights as the truth); the world records it and run_seed samples with it."""
    from offline.warm.launch import SAMPLE_GRID, choose_sample_scale, retired_world

    w, prep, _ = world
    assert w.info["sample_scale"] in SAMPLE_GRID and "retired ads" in w.info["sample_scale_how"]
    rl = w.info["retired_launch"]
    assert rl["sample_scale"] == w.info["sample_scale"]
    assert min(rl["regret"].values()) == rl["regret"][f"{rl['sample_scale']:g}"]
    rw = retired_world(prep, 1.0, 1.0)
    assert set(rw.ad_ids).isdisjoint(w.ad_ids)  # no cold ad is played
    row = {a: i for i, a in enumerate(prep.dataset.ad_ids)}
    warm_pos = {int(a): j for j, a in enumerate(prep.split.warm)}
    assert np.array_equal(rw.truth, prep.warm_theta[[warm_pos[row[a]] for a in rw.ad_ids]])
    # scale 0 is greedy exactly, so its retired regret is greedy's
    cfg = _cfg(sample_scale=None)
    ch = choose_sample_scale(cfg, prep, 1.0, 1.0, grid=(0.0, 4.0), seeds=2)
    g = np.mean([sum(run_seed(_cfg(sample_scale=0.0), rw, 10_000 + i)["greedy"]["regret"]) for i in range(2)])
    assert ch["regret"]["0"] == pytest.approx(g) and ch["sample_scale"] in (0.0, 4.0)
    # the chosen scale is what run_seed uses when the config leaves it unset
    assert run_seed(_cfg(sample_scale=None), w, 0) == run_seed(_cfg(sample_scale=w.info["sample_scale"]), w, 0)


def test_scale_replay_counts_only_the_cohorts_activity(world):
    """The retired replay's logs are the replayed cohort's rows only (as a refresh sees only the
    cold ads' logs), so a user active only on other retired ads is no implicit trial."""
    from offline.warm.logs import counts_between
    from offline.warm.replay import cohort_logs

    _, prep, _ = world
    ds, sp = prep.dataset, prep.split
    ads = sp.warm[np.argsort(ds.launched_at[sp.warm], kind="stable")[-8:]]
    logs = cohort_logs(ds, ads)
    in_cohort = np.isin(ds.inter_ad, ads)
    assert logs.n == int(in_cohort.sum()) and logs.n < ds.inter_ad.size
    assert set(np.unique(logs.ad)) <= set(range(ads.size))
    np.testing.assert_array_equal(ads[logs.ad], ds.inter_ad[in_cohort])
    launched = ds.launched_at[ads]
    tr, _ = counts_between(logs, ds.n_users, launched, np.full(ads.size, np.inf), ds.implicit)
    elsewhere = np.setdiff1d(np.unique(ds.inter_user[~in_cohort]), np.unique(ds.inter_user[in_cohort]))
    assert elsewhere.size > 0 and not tr[elsewhere].any()
