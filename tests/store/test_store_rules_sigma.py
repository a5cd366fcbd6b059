"""Content rules and posterior spread stored with a version in a real LMDB store."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from llmhyper.store.weight_store import InvalidWeights, WeightStore

FEATS = [("bias", "intercept"), ("veg", "vegetarian preference"), ("age", "age z-score")]
ADS = ["meat", "salad", "car"]


def _theta() -> np.ndarray:
    return np.arange(9, dtype=np.float32).reshape(3, 3) / 10


def test_rules_and_sigma_round_trip_and_prune(tmp_path) -> None:
    sigma = np.full((3, 3), 0.25, np.float32)
    with WeightStore(tmp_path / "s") as st:
        v1 = st.publish(ADS, _theta(), FEATS, rules=[("meat", "veg", 0.5), ("car", 2, -1.0), ("meat", "age", 2.0)],
                        sigma=sigma)
        v2 = st.publish(ADS, _theta(), FEATS)
        view = st.view(v1)
        assert view.rules.ad_ptr.tolist() == [0, 2, 2, 3]
        assert view.rules.feature.tolist() == [1, 2, 2]
        assert view.rules.threshold.tolist() == [0.5, 2.0, -1.0]
        assert np.array_equal(view.sigma, sigma) and not view.sigma.flags.writeable
        assert st.view(v2).rules is None and st.view(v2).sigma is None
        del view
        st.rollback(v2)
        assert st.prune(1) == [v1]
    # a fresh process reads what was stored (and nothing of the pruned version is left)
    with WeightStore(tmp_path / "s", readonly=True) as ro:
        assert [v["version"] for v in ro.list_versions()] == [v2]
        assert ro.view(v2).rules is None


def test_sigma_outlives_its_view_safely(tmp_path) -> None:
    """The sigma array keeps its LMDB snapshot pinned after the view leaves the cache."""
    with WeightStore(tmp_path / "s", views_cached=1) as st:
        v1 = st.publish(ADS, _theta(), FEATS, sigma=np.ones((3, 3), np.float32))
        sig = st.view(v1).sigma
        st.release(v1)
        st.stats()  # runs collect(): the pin must survive while `sig` is alive
        assert st.stats()["pinned_views"] == 1
        for _ in range(3):
            st.publish(ADS, _theta() + 1, FEATS, sigma=np.zeros((3, 3), np.float32))
        assert sig.tolist() == [[1.0] * 3] * 3
        del sig
        assert st.stats()["pinned_views"] == 0


@pytest.mark.parametrize("rules,match", [
    ([("meat", "vegan", 0.5)], r"rules\[0\] \(ad 'meat'\): unknown feature 'vegan'"),
    ([("meat", "veg", 0.5), ("boat", "veg", 1.0)], r"rules\[1\]: unknown ad id 'boat'"),
    ([("salad", "age", float("inf"))], r"rules\[0\] \(ad 'salad', feature 'age'\): threshold inf is not finite"),
    ([("salad", 3, 1.0)], r"rules\[0\] \(ad 'salad'\): feature index 3 is out of range \[0, 3\)"),
    ([("salad", "age", "high")], r"threshold must be a number"),
    ([("salad", "age")], r"rules\[0\]: expected \(ad_id, feature, threshold\)"),
])
def test_bad_rules_are_refused_naming_ad_and_rule(tmp_path, rules, match) -> None:
    with WeightStore(tmp_path / "s") as st:
        with pytest.raises(InvalidWeights, match=match):
            st.publish(ADS, _theta(), FEATS, rules=rules)
        assert st.current_version() is None


def test_bad_sigma_is_refused(tmp_path) -> None:
    with WeightStore(tmp_path / "s") as st:
        with pytest.raises(InvalidWeights, match=r"sigma must be >= 0.*sigma\[1, 2\]"):
            st.publish(ADS, _theta(), FEATS, sigma=np.array([[0, 0, 0], [0, 0, -1], [0, 0, 0]], np.float32))
        with pytest.raises(InvalidWeights, match="sigma has 2 rows"):
            st.publish(ADS, _theta(), FEATS, sigma=np.zeros((2, 3), np.float32))
        assert st.current_version() is None


def test_a_store_written_by_the_previous_code_still_loads(tmp_path) -> None:
    """Publish with the main checkout's code (no rules, no sigma keys), read with this one."""
    main = "/work/main"
    if not os.path.isdir(os.path.join(main, "llmhyper", "store")) or os.path.realpath(main) == os.getcwd():
        pytest.skip("no separate previous checkout to write the store with")
    code = ("import numpy as np; from llmhyper.store.weight_store import WeightStore as W; "
            f"s = W({str(tmp_path / 'old')!r}); "
            "print(s.publish(['a', 'b'], np.ones((2, 2), np.float32), [('bias', ''), ('f', '')])); s.close()")
    out = subprocess.run([sys.executable, "-c", code], cwd=main, env={**os.environ, "PYTHONPATH": main},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    with WeightStore(tmp_path / "old") as st:
        view = st.view(out.stdout.strip())
        assert view.rules is None and view.sigma is None and view.theta.tolist() == [[1, 1], [1, 1]]
        v2 = st.publish(["a", "b"], np.ones((2, 2), np.float32), [("bias", ""), ("f", "")],
                        rules=[("a", "f", 0.0)])
        assert st.view(v2).rules.n_rules == 1
