"""ContentKNNGenerator's content encoder and stacked intercept (offline/generators/content_knn.py), on
synthetic ads whose CTR depends on a stated year and on the embedding; plus the MovieLens
adapter's ``feature_cutoff`` used by the faithful pseudo-cold validation."""


import numpy as np
import pytest
from scipy.special import expit, logit
from scipy.stats import spearmanr

from offline.stages.calibrate import mean_ctr
from offline import metrics as M
from offline.data.content import ContentEncoder, content_year
from offline.generators.content_knn import ContentKNNGenerator
from offline.selection.weights import effective_size, shift_weights, weighted_auc, weighted_metrics
from offline.data.dataset import Ad
from offline.types import Neighbour

DAY = 86400.0
T0 = 880_000_000.0  # unix s, late 1997


def test_content_year_title_then_description():
    assert content_year(Ad("1", "Titanic (1997)", "A 1997 film.")) == 1997.0
    assert content_year(Ad("2", "2001: A Space Odyssey (1968)")) == 1968.0  # last year in the title
    assert content_year(Ad("3", "Shoes", "Launched for the 2024 season")) == 2024.0
    assert np.isnan(content_year(Ad("4", "Shoes 12345", "no year here")))


def test_encoder_columns():
    ads = [Ad("a", "X (1990)", category="c1", launched_at=T0), Ad("b", "Y", category="c1", launched_at=T0),
           Ad("c", "Z (1997)", category="c2", launched_at=T0)]
    enc = ContentEncoder(min_count=1).fit(ads)
    A = enc.transform(ads, np.zeros((3, 2)))
    assert enc.categories == ["c1", "c2"] and A.shape == (3, 2 + 2 + 4)
    assert A[0, 2] == 1 and A[2, 3] == 1
    # year block: has_year, log1p(age), age < 1, age < 2 (T0 is in 1997)
    assert A[1, 4:].tolist() == [0, 0, 0, 0]
    assert A[0, 4] == 1 and A[0, 5] == pytest.approx(np.log1p(1970 + T0 / (365.25 * DAY) - 1990))
    assert A[2, 4:].tolist()[2:] == [1.0, 1.0] and A[0, 6] == 0


def _world(seed=0, n_warm=400, n_cold=150, F=6, d=16):
    """Ads launched over 60 days before a cutoff (retired) and after it (cold); log-odds CTR =
    -3 + 1.5 [new release] + emb . u (+ noise). Returns the pieces fit_arrays needs."""
    rng = np.random.default_rng(seed)
    n = n_warm + n_cold
    emb = rng.normal(size=(n, d))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    cutoff = T0 + 60 * DAY
    launched = np.concatenate([T0 + rng.uniform(0, 60, n_warm) * DAY, cutoff + rng.uniform(0, 30, n_cold) * DAY])
    year_now = 1970 + launched / (365.25 * DAY)
    new = rng.random(n) < 0.4
    years = np.where(new, np.floor(year_now), np.floor(year_now) - rng.integers(3, 40, n))
    ads = [Ad(str(i), f"Film {i} ({int(years[i])})", category="g" + str(i % 3), launched_at=float(launched[i]))
           for i in range(n)]
    u = rng.normal(size=d) * 1.5
    lo = -3 + 1.5 * new + emb @ u + 0.2 * rng.normal(size=n)
    ctr = expit(lo)
    theta = rng.normal(scale=0.3, size=(n, F))
    X = np.concatenate([np.ones((300, 1)), rng.normal(size=(300, F - 1))], axis=1)
    return ads, emb, launched, ctr, theta, X, cutoff, n_warm


def _neighbours(i, emb, ads, theta, ctr, n_warm, k=10):
    s = emb[:n_warm] @ emb[i]
    top = np.argsort(-s)[:k]
    return [Neighbour(ad=ads[j], theta=theta[j], similarity=float(s[j]), mean_ctr=float(ctr[j])) for j in top]


def _fitted(world, **opts):
    ads, emb, launched, ctr, theta, X, cutoff, nw = world
    g = ContentKNNGenerator(**opts)
    return g.fit_arrays(theta[:nw], ctr[:nw], launched[:nw], emb[:nw], cutoff, X,
                        {a.ad_id: emb[i] for i, a in enumerate(ads)}, warm_ads=ads[:nw])


def test_stacked_intercept_uses_content_and_beats_neighbour_ctr():
    world = _world()
    ads, emb, launched, ctr, theta, X, cutoff, nw = world
    cold = range(nw, len(ads))
    truth = logit(ctr[nw:])
    rho = {}
    for name in ("stacked", "neighbour_ctr"):
        g = _fitted(world, intercept=name, ctr_k=10)
        pred = [g.intercept_logit(ads[i], _neighbours(i, emb, ads, theta, ctr, nw)) for i in cold]
        rho[name] = spearmanr(pred, truth)[0]
    # the neighbours cannot see the stated year; the stacked content model can
    assert rho["stacked"] > 0.6
    assert rho["stacked"] > rho["neighbour_ctr"] + 0.1
    g = _fitted(world, intercept="stacked")
    assert len(g.config()["stack_coef"]) == 3 and g.config()["stack_coef"][2] > 0


def test_stack_content_and_ridge_options_shape_the_stack():
    world = _world()
    assert len(_fitted(world).config()["stack_coef"]) == 3  # constant, nbr, content
    g = _fitted(world, stack_content=False)
    assert len(g.config()["stack_coef"]) == 2  # constant, nbr
    a, b = _fitted(world).config()["stack_coef"], _fitted(world, stack_l2=100.0).config()["stack_coef"]
    assert abs(b[1]) + abs(b[2]) < abs(a[1]) + abs(a[2])  # the ridge penalty shrinks the stack


@pytest.mark.parametrize("opts, msg", [({"intercept": "genre"}, "intercept: Input should be 'stacked'"),
                                       ({"shrink": 0.5}, "unknown ContentKNNGenerator option 'shrink'"),
                                       ({"stack_l2": -1.0}, "stack_l2: Input should be greater than or equal to 0"),
                                       ({"stack_l2": float("nan")}, "stack_l2: Input should be a finite number")])
def test_stack_options_are_checked(opts, msg):
    with pytest.raises(ValueError, match=msg):
        ContentKNNGenerator(**opts)


def test_quantile_map_keeps_predictions_in_retired_range_and_shift_hits_target():
    world = _world(seed=1)
    ads, emb, launched, ctr, theta, X, cutoff, nw = world
    g = _fitted(world)  # default: stacked + quantile map
    lo_held, hi_held = g.qmap[1][0], g.qmap[1][-1]
    feats = [("bias", "")] + [(f"f{j}", "") for j in range(theta.shape[1] - 1)]
    for i in range(nw, nw + 20):
        nbs = _neighbours(i, emb, ads, theta, ctr, nw)
        lo = g.intercept_logit(ads[i], nbs)
        assert lo_held - 1e-9 <= lo <= hi_held + 1e-9
        th = g.generate(ads[i], nbs, feats).theta
        assert mean_ctr(th, g.X_sample) == pytest.approx(expit(lo), rel=1e-3)


def test_weighted_auc_matches_plain_and_replicated():
    rng = np.random.default_rng(0)
    Y = (rng.random((50, 7)) < 0.3).astype(np.uint8)
    S = np.round(rng.normal(size=(50, 7)) + Y, 1)  # rounded: ties must count half
    assert weighted_auc(Y, S, np.ones(7)) == pytest.approx(M.auc(Y, S), abs=1e-12)
    w = np.array([1, 2, 0, 3, 1, 1, 2])
    rep = np.repeat(np.arange(7), w)
    assert weighted_auc(Y, S, w) == pytest.approx(M.auc(Y[:, rep], S[:, rep]), abs=1e-12)
    m = weighted_metrics(Y, S, np.ones(7), n_draws=3)
    assert 0.0 <= m["ndcg10"] <= 1.0 and m["per_ad_auc"] == pytest.approx(M.mean_per_ad_auc(Y, S))


def test_shift_weights_upweight_target_like_rows():
    rng = np.random.default_rng(1)
    src = rng.normal(size=(400, 2))
    tgt = rng.normal(size=(300, 2)) + np.array([1.0, 0.0])  # target shifted along the first column
    w = shift_weights(src, tgt, cap=10.0)
    assert w.shape == (400,) and np.all(w > 0) and w.mean() == pytest.approx(1.0) and w.max() <= 10.0 * (1 + 1e-6)
    # weighted source mean moves toward the target mean on the shifted column, not the other
    assert (w * src[:, 0]).sum() / w.sum() > 0.6
    assert abs((w * src[:, 1]).sum() / w.sum()) < 0.2
    assert 1.0 < effective_size(w) < 400.0
    with pytest.raises(ValueError, match="equal p"):
        shift_weights(src, tgt[:, :1])


def test_options_are_checked():
    with pytest.raises(ValueError, match="intercept"):
        ContentKNNGenerator(intercept="magic")
    with pytest.raises(ValueError, match="stack_frac"):
        ContentKNNGenerator(stack_frac=1.0)
    with pytest.raises(ValueError, match="unknown"):
        ContentKNNGenerator(lambda_=0.5)
    g = ContentKNNGenerator()
    with pytest.raises(ValueError, match="fit"):
        g.generate(Ad("x", "t"), [], [("bias", "")])


@pytest.mark.movielens
def test_movielens_feature_cutoff_drops_later_ratings():
    from offline.data.adapters.movielens import load_movielens
    from offline.pipeline import movielens_path

    root = movielens_path()
    full = load_movielens(root)
    T = full.meta["time_split"]["cutoff"]
    part = load_movielens(root, feature_cutoff=T - 10 * DAY)
    assert part.ad_ids == full.ad_ids and part.meta["time_split"]["cutoff"] == T
    j = [n for n, _ in full.features].index("log_history")
    assert np.all(part.X[:, j] <= full.X[:, j] + 1e-6) and np.any(part.X[:, j] < full.X[:, j] - 1e-3)
    assert np.array_equal(load_movielens(root, feature_cutoff=T + 1e9).X, full.X)


def test_selection_turns_drift_off_where_weights_do_not_drift(tmp_path):
    """The synthetic world's true weights do not change with launch time, so a fitted trend is
    noise: the default generator's retired-only selection must switch drift off, keep only a
    combination that beats raw kNN on every part of the objective, and the result must then
    target at least as well as raw kNN on the active ads (per-ad AUC on real clicks)."""
    from offline import pipeline
    from offline import metrics
    from offline.generators.content_knn import ContentKNNGenerator
    from offline.generators.knn import RawKNNGenerator
    from offline.selection.select import SELECTION_OBJECTIVE

    ds = pipeline.load_source("synthetic")
    prep = pipeline.prepare(ds, pipeline.BuildConfig(dataset="synthetic", work_dir=str(tmp_path)), quiet=True)
    gen = ContentKNNGenerator().fit(prep)
    chosen = gen.selection["chosen"]
    assert chosen.startswith("drift off") and not gen.cfg.drift and not gen.cfg.ctr_drift and gen.raw is None
    table = gen.selection["metrics"]
    assert len(table) == 5 and "knn-raw" in table  # 2 drift x 2 intercept settings + the reference
    assert all(table[chosen][k] > table["knn-raw"][k] for k in SELECTION_OBJECTIVE)
    beats = [n for n in table if n != "knn-raw" and all(table[n][k] > table["knn-raw"][k] for k in SELECTION_OBJECTIVE)]
    assert table[chosen]["objective"] == max(table[n]["objective"] for n in beats)
    assert gen.config()["selection"] == gen.selection

    forced = ContentKNNGenerator(auto_drift=False).fit(prep)  # the option's old name: drift kept, as configured
    assert forced.cfg.drift and forced.cfg.intercept == "stacked" and not getattr(forced, "selection", None)

    Y = ds.labels(prep.split.cold)
    X = ds.X.astype(np.float64)
    nl = pipeline.neighbour_lists(prep)

    def per_ad(g) -> float:
        th = np.stack([g.generate(prep.cold_ads[c], nl[c], ds.features).theta for c in range(len(nl))])
        return metrics.mean_per_ad_auc(Y, X @ th.T.astype(np.float64))

    auto, drift, raw = per_ad(gen), per_ad(forced), per_ad(RawKNNGenerator(k=10))
    assert auto > drift + 0.03 and auto >= raw - 0.005, (auto, drift, raw)


def test_register_embedding_gives_a_new_ad_its_own_content_intercept():
    world = _world(seed=3)
    ads, emb, launched, ctr, theta, X, cutoff, nw = world
    g = ContentKNNGenerator(intercept="content")
    with pytest.raises(ValueError, match="must run before register_embedding"):
        g.register_embedding("x", emb[0])
    g = _fitted(world, intercept="content")
    nbs = _neighbours(nw, emb, ads, theta, ctr, nw)
    new = Ad("rewritten", ads[nw].title, category=ads[nw].category, launched_at=ads[nw].launched_at)
    fallback = g.intercept_logit(new, nbs)  # unknown id: the neighbours' CTR path
    g.register_embedding("rewritten", -emb[nw])
    own = g.intercept_logit(new, nbs)
    assert own != pytest.approx(fallback)
    assert own == pytest.approx(g.predict_logit_ctr(-emb[nw], new.launched_at, new))
    with pytest.raises(ValueError, match="not finite"):
        g.register_embedding("bad", np.full(emb.shape[1], np.nan))


@pytest.mark.parametrize("opts, msg", [({"stack_l2": "abc"}, "stack_l2: Input should be a valid number"),
                                       ({"k": "5"}, "k: Input should be a valid integer"), ({"k": 2.5}, "k: Input should be a valid integer"),
                                       ({"drift": 1}, "drift: Input should be a valid boolean"),
                                       ({"stack_content": "yes"}, "stack_content: Input should be a valid boolean"),
                                       ({"recency_scale_days": "7"}, "recency_scale_days: Input should be a valid number")])
def test_option_types_are_checked_with_the_option_named(opts, msg):
    with pytest.raises(ValueError, match=msg):
        ContentKNNGenerator(**opts)
    assert ContentKNNGenerator(k=5.0).cfg.k == 5 and ContentKNNGenerator(recency_scale_days=None).cfg.recency_scale_days is None
