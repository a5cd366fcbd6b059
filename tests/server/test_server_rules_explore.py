"""Content rules and Thompson exploration over a real gRPC server and a real LMDB store,
checked against the NumPy twins (scoring.reference)."""
from __future__ import annotations

import grpc
import numpy as np
import pytest

from llmhyper.client import RankerClient, RankerError
from llmhyper.store.weight_store import WeightStore
from scoring import reference as ref
from scoring.rules import make_rules
from tests.helpers import make_world

WORLD = make_world(seed=11, M=40, F=8, N=30)
# "ads 0-9 are not for users with f1 > 0.5"; every ad is hidden from users with f2 > 0.9;
# ad 5 also from users with f3 > 0.2 (several rules on one ad).
RULES = ([(f"ad{a:03d}", "f1", 0.5) for a in range(10)] + [(f"ad{a:03d}", "f2", 0.9) for a in range(40)]
         + [("ad005", "f3", 0.2)])
SIGMA = np.abs(np.random.default_rng(0).normal(0.0, 0.8, (40, 8))).astype(np.float32)


def _rules_value():
    idx = {a: i for i, a in enumerate(WORLD.ad_ids)}
    names = [n for n, _ in WORLD.features]
    return make_rules(WORLD.M, WORLD.F, [(idx[a], names.index(f), t) for a, f, t in RULES])


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    path = tmp_path_factory.mktemp("rules") / "store"
    with WeightStore(path) as st:
        plain = st.publish(WORLD.ad_ids, WORLD.theta, WORLD.features)
        ruled = st.publish(WORLD.ad_ids, WORLD.theta, WORLD.features, rules=RULES, sigma=SIGMA,
                           ad_records=WORLD.ad_records)
        st.put_users(WORLD.user_ids, WORLD.X, WORLD.features)
    return path, plain, ruled


@pytest.fixture(scope="module")
def cli(versions):
    from llmhyper.server import create_server

    srv, port = create_server("127.0.0.1:0", str(versions[0]))
    with RankerClient(f"127.0.0.1:{port}", timeout=10.0) as c:
        yield c
    srv.stop(0).wait(5)


def test_rank_excludes_exactly_the_ruled_ads_for_users_above_threshold(cli, versions):
    rules = _rules_value()
    seen_excluded = 0
    for uid, x in zip(WORLD.user_ids, WORLD.X):
        res = cli.rank(uid, top_k=WORLD.M)
        assert res.version == versions[2] and res.content_rules_applied
        want = ref.topk_one_rules(WORLD.theta, x, WORLD.M, None, rules)
        assert [a.ad_index for a in res.ads] == want[0].tolist()
        excluded = {WORLD.ad_ids[a] for a in np.flatnonzero(ref.rules_excluding(rules, x)[0])}
        by_hand = {a for a, f, t in RULES if x[int(f[1:])] > np.float32(t)}
        assert excluded == by_hand and not excluded & set(res.ad_ids)
        assert set(res.ad_ids) | excluded == set(WORLD.ad_ids)  # nothing else is dropped
        seen_excluded += len(excluded)
        # audit opt-out: every ad, in the greedy order
        audit = cli.rank(uid, top_k=WORLD.M, apply_content_rules=False)
        assert not audit.content_rules_applied
        assert [a.ad_index for a in audit.ads] == ref.topk_one(WORLD.theta, x, WORLD.M)[0].tolist()
    assert seen_excluded > 30  # the fixture really exercises the rules
    # a version without rules ranks everything, and says rules were applied (there are none)
    plain = cli.rank("u000", top_k=WORLD.M, version=versions[1])
    assert len(plain.ads) == WORLD.M and plain.content_rules_applied


def test_rank_batch_applies_rules_per_row_with_padding(cli):
    rules = _rules_value()
    X_inline = WORLD.X[:4].copy()
    X_inline[0, 2] = 0.95  # f2 above 0.9: every ad hidden from this row
    res = cli.rank_batch(X_inline, user_ids=WORLD.user_ids[4:12], top_k=WORLD.M)
    X_all = np.concatenate([X_inline, WORLD.X[4:12]])
    idx, lg, pr = ref.topk_batch_rules(WORLD.theta, X_all, WORLD.M, None, rules)
    assert res.ad_index.tolist() == idx.tolist() and res.content_rules_applied
    assert res.ad_index[0].tolist() == [-1] * WORLD.M and np.all(res.ctr[0] == 0.0)
    assert np.all(np.isneginf(res.logit[res.ad_index < 0]))
    assert (res.ad_index < 0).sum() > WORLD.M  # other rows are padded too
    np.testing.assert_allclose(res.ctr, pr, rtol=1e-6, atol=1e-7)
    assert res.ad_ids_matrix()[0, 0] is None
    audit = cli.rank_batch(X_inline, top_k=5, apply_content_rules=False)
    assert audit.ad_index.tolist() == ref.topk_batch(WORLD.theta, X_inline, 5)[0].tolist()
    assert not audit.content_rules_applied


def test_explain_shows_which_rule_excluded_the_ad(cli):
    x = WORLD.X[0].copy()
    x[1], x[2], x[3] = 0.7, 0.1, 0.3  # ad005: f1 rule and f3 rule fire, f2 rule does not
    e = cli.explain("ad005", features=x)
    assert e.excluded_by_rules
    got = {(c.feature, round(c.threshold, 6), c.fires) for c in e.content_rules}
    assert got == {("f1", 0.5, True), ("f2", 0.9, False), ("f3", 0.2, True)}
    assert {round(c.value, 6) for c in e.content_rules if c.feature == "f1"} == {0.7}
    ok = cli.explain("ad020", features=x)
    assert not ok.excluded_by_rules and [c.feature for c in ok.content_rules] == ["f2"]
    assert "ad005" not in cli.rank(features=x, top_k=40).ad_ids


def test_explore_is_seeded_matches_twin_and_returns_mean_ctr(cli):
    rules = _rules_value()
    x = WORLD.X[3]
    a = cli.rank("u003", top_k=10, explore=True, seed=42)
    b = cli.rank("u003", top_k=10, explore=True, seed=42)
    c = cli.rank("u003", top_k=10, explore=True, seed=43)
    assert a.explored and a.seed == 42
    assert a.ad_ids == b.ad_ids and a.ad_ids != c.ad_ids
    want = ref.topk_one_thompson(WORLD.theta, SIGMA, x, 10, 42, None, rules)
    assert [ad.ad_index for ad in a.ads] == want[0].tolist()
    np.testing.assert_allclose([ad.ctr for ad in a.ads], want[2], rtol=1e-6, atol=1e-7)  # mean CTR
    greedy = cli.rank("u003", top_k=10)
    assert not greedy.explored and greedy.seed == 0
    # no seed: the server picks one and returns it, so the answer can be replayed
    r = cli.rank("u003", top_k=10, explore=True)
    assert r.explored and cli.rank("u003", top_k=10, explore=True, seed=r.seed).ad_ids == r.ad_ids
    # batch: row b drawn with splitmix64(seed + b)
    bres = cli.rank_batch(user_ids=WORLD.user_ids[:6], top_k=8, explore=True, seed=7)
    seeds = ref.row_seeds(7, 6)
    widx = ref.topk_batch_thompson(WORLD.theta, SIGMA, WORLD.X[:6], 8, seeds, None, rules)[0]
    assert bres.explored and bres.seed == 7 and bres.ad_index.tolist() == widx.tolist()


def test_explore_needs_posterior_spread_and_server_default(versions, make_server):
    path, plain, ruled = versions
    with WeightStore(path, readonly=True) as st:
        _, port = make_server(st, explore_default=True)
        with RankerClient(f"127.0.0.1:{port}", timeout=10.0) as c:
            with pytest.raises(RankerError) as ei:
                c.rank("u001", top_k=3, version=plain)
            assert ei.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert f"version {plain} has no posterior spread" in ei.value.details
            assert len(c.rank("u001", top_k=3, version=plain, explore=False).ads) == 3
            d = c.rank("u001", top_k=5, seed=9)  # the server default explores
            assert d.explored and d.ad_ids == c.rank("u001", top_k=5, explore=True, seed=9).ad_ids
            with pytest.raises(RankerError, match="no posterior spread"):
                c.rank_batch(user_ids=["u001"], top_k=3, version=plain)
