"""``llmhyper refresh`` over a real LMDB store: a published generated version, logs in the
interactions.csv form, a new version with provenance; bad input exits 2 and publishes nothing."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from llmhyper.cli.main import main
from llmhyper.store.weight_store import WeightStore

M, F, N = 12, 5, 400
LAUNCH = 1_000_000.0


@pytest.fixture
def setup(tmp_path):
    """A store with one generated version (records carry launched_at) and logs for ads 0..7."""
    rng = np.random.default_rng(11)
    feats = [["bias", "intercept"]] + [[f"f{j}", f"feature {j}"] for j in range(1, F)]
    X = np.column_stack([np.ones(N), rng.random((N, F - 1))]).astype(np.float32)
    truth = rng.normal(0, 1.0, (M, F))
    truth[:, 0] = -1.5
    gen = (truth + rng.normal(0, 0.7, (M, F))).astype(np.float32)  # the generated (prior) weights
    ads = [f"ad{i:02d}" for i in range(M)]
    users = [f"u{n:03d}" for n in range(N)]
    path = tmp_path / "store"
    with WeightStore(path) as st:
        v1 = st.publish(ads, gen, feats, manifest={"generator": "test", "implicit_negatives": False, "l2": 1.0},
                        ad_records={a: {"launched_at": LAUNCH + 10 * i, "rationale": {"bias": "r"}}
                                    for i, a in enumerate(ads)},
                        users=(users, X, feats))
    logs = tmp_path / "interactions.csv"
    rows = []
    P = 1.0 / (1.0 + np.exp(-(X.astype(np.float64) @ truth.T)))
    for i in range(8):  # ads 8..11 get no logs
        for n in rng.choice(N, 250, replace=False):
            rows.append((users[n], ads[i], int(rng.random() < P[n, i]), LAUNCH + 10 * i + 1 + n))
    with open(logs, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "ad_id", "clicked", "timestamp"])
        w.writerows(rows)
    return {"path": path, "logs": logs, "gen": gen, "ads": ads, "v1": v1, "rows": rows, "truth": truth, "X": X}


def test_refresh_publishes_a_version_with_provenance(setup, capsys):
    s = setup
    assert main(["refresh", "--store", str(s["path"]), "--logs", str(s["logs"]), "--prior-scale", "0.5", "--json"]) == 0
    capsys.readouterr()
    with WeightStore(s["path"], readonly=False) as st:
        v = st.current_version()
        assert v != s["v1"]
        view = st.view(v)
        ref = view.manifest["refresh"]
        assert ref["policy"] == "prior" and ref["prior_version"] == s["v1"] and ref["n_updated"] == 8
        theta = np.array(view.theta)
        sigma, prior = st.version_array(v, "sigma"), st.version_array(v, "prior")
        assert sigma.shape == (M, F) and sigma.dtype == np.float32
        np.testing.assert_array_equal(view.sigma, sigma)  # what Thompson serving samples from
        assert prior.tobytes() == s["gen"].tobytes()
        # ads without logs: bit for bit the generated weights, prior spread
        assert theta[8:].tobytes() == s["gen"][8:].tobytes()
        np.testing.assert_array_equal(sigma[8:], np.float32(0.5))
        assert np.all(sigma[:8] < 0.5)
        for i in range(8):
            rec = st.ad_record(v, s["ads"][i])["refresh"]
            mine = [r for r in s["rows"] if r[1] == s["ads"][i]]
            assert rec["impressions"] == len(mine) == 250
            assert rec["clicks"] == sum(r[2] for r in mine)
            assert 0.0 < rec["data_weight"] < 1.0 and rec["prior_weight"] == pytest.approx(1 - rec["data_weight"])
        assert st.ad_record(v, s["ads"][9])["refresh"]["updated"] is False
        assert st.ad_record(v, s["ads"][0])["rationale"] == {"bias": "r"}  # generator provenance kept
        # the data pulled the updated ads towards the truth
        err_gen = np.abs(s["gen"][:8] - s["truth"][:8]).mean()
        err_new = np.abs(theta[:8] - s["truth"][:8]).mean()
        assert err_new < err_gen
    # refreshing the refreshed version with the same logs starts again from the generated prior
    assert main(["refresh", "--store", str(s["path"]), "--logs", str(s["logs"]), "--json"]) == 0
    with WeightStore(s["path"], readonly=False) as st:
        v3 = st.current_version()
        assert st.view(v3).manifest["refresh"]["prior_version"] == s["v1"]
        assert st.view(v3).manifest["refresh"]["prior_scale"] == 0.5
        np.testing.assert_allclose(st.view(v3).theta, theta, atol=1e-5)


def test_switch_and_none_policies(setup, capsys):
    s = setup
    assert main(["refresh", "--store", str(s["path"]), "--logs", str(s["logs"]), "--prior-scale", "0.5",
                 "--policy", "none"]) == 0
    with WeightStore(s["path"], readonly=False) as st:
        assert np.array(st.view().theta).tobytes() == s["gen"].tobytes()
    assert main(["refresh", "--store", str(s["path"]), "--logs", str(s["logs"]), "--prior-scale", "0.5",
                 "--policy", "switch", "--min-clicks", "1000"]) == 0  # nobody reaches 1000 clicks
    assert main(["refresh", "--store", str(s["path"]), "--logs", str(s["logs"]), "--prior-scale", "0.5",
                 "--policy", "switch", "--min-clicks", "5"]) == 0
    clicks = [sum(r[2] for r in s["rows"] if r[1] == a) for a in s["ads"]]
    with WeightStore(s["path"], readonly=False) as st:
        v = st.current_version()
        assert st.view(v).manifest["refresh"]["n_updated"] == sum(c >= 5 for c in clicks) > 0
        theta = np.array(st.view(v).theta)
        for i, c in enumerate(clicks):
            rec = st.ad_record(v, s["ads"][i])["refresh"]
            assert rec["updated"] is (c >= 5)
            assert (theta[i].tobytes() == s["gen"][i].tobytes()) is (c < 5)
        assert np.array(st.view(v).theta)[8:].tobytes() == s["gen"][8:].tobytes()


def _bad(s, capsys, extra, logs_rows=None, match=""):
    logs = s["logs"]
    if logs_rows is not None:
        logs = s["path"].parent / "bad.csv"
        logs.write_text("user_id,ad_id,clicked,timestamp\n" + "\n".join(logs_rows) + "\n")
    code = main(["refresh", "--store", str(s["path"]), "--logs", str(logs), "--prior-scale", "0.5", *extra])
    err = capsys.readouterr().err
    assert code == 2, err
    assert match in err, err
    with WeightStore(s["path"], readonly=False) as st:
        assert st.current_version() == s["v1"] and len(st.list_versions()) == 1


@pytest.mark.parametrize("rows, match", [
    (["u001,ad00,1,1000005", "u002,adXX,1,1000006"], "bad.csv line 3: unknown ad_id 'adXX'"),
    (["u001,ad03,1,1000005"], "bad.csv line 2: timestamp 1000005 is before ad 'ad03' launched"),
    (["u001,ad00,1,1000005", "u001,ad00,1,1000005"], "bad.csv line 3: duplicate row"),
    (["u001,ad00,yes,1000005"], "bad.csv line 2: clicked must be 0 or 1, got 'yes'"),
    (["u001,ad00,1,1000005", "nobody,ad00,1,1000006"], "bad.csv line 3: unknown user_id 'nobody'"),
])
def test_malformed_logs_exit_2_naming_the_line_and_publish_nothing(setup, capsys, rows, match):
    _bad(setup, capsys, [], rows, match)


@pytest.mark.parametrize("extra, match", [
    (["--policy", "switch"], "--policy switch needs --min-clicks N"),
    (["--min-clicks", "3"], "--min-clicks applies to --policy switch only"),
    (["--policy", "switch", "--min-clicks", "0"], "--min-clicks must be >= 1"),
    (["--policy", "greedy"], "--policy must be one of prior, switch, none"),
    (["--prior-scale", "-1"], "--prior-scale must be a finite number > 0"),
])
def test_wrong_policy_arguments_exit_2(setup, capsys, extra, match):
    _bad(setup, capsys, extra, None, match)


def test_missing_logs_file_exits_2(setup, capsys):
    s = setup
    code = main(["refresh", "--store", str(s["path"]), "--logs", str(s["path"].parent / "none.csv")])
    err = capsys.readouterr().err
    assert code == 2 and "logs file not found" in err and "none.csv" in err
