"""Optional per-version float32 [M, F] arrays (``publish(arrays=...)``, ``version_array``)."""

from __future__ import annotations

import numpy as np
import pytest

from llmhyper.store.weight_store import InvalidWeights, VersionNotFound, WeightStore
from tests.helpers import make_world


def test_arrays_round_trip_and_are_pruned_with_their_version(tmp_path):
    w = make_world(M=6, F=4, N=3)
    sigma = np.abs(w.theta) + 0.1
    with WeightStore(tmp_path / "s") as st:
        v1 = st.publish(w.ad_ids, w.theta, w.features, sigma=sigma, arrays={"prior": w.theta * 2})
        v2 = st.publish(w.ad_ids, w.theta, w.features)
        got = st.version_array(v1, "sigma")
        assert got.dtype == np.float32 and got.shape == (6, 4) and not got.flags.writeable
        np.testing.assert_array_equal(got, sigma.astype(np.float32))
        np.testing.assert_array_equal(st.version_array(v1, "prior"), w.theta * 2)
        np.testing.assert_array_equal(st.view(v1).sigma, got)  # the serving path's zero-copy view
        assert st.version_array(v1, "other") is None and st.version_array(v2, "sigma") is None
        assert st.view(v1).theta.tobytes() == w.theta.tobytes()  # theta itself unchanged
        assert st.prune(1) == [v1]
        with pytest.raises(VersionNotFound):
            st.version_array(v1, "sigma")
        left = st._env().read(lambda txn: [bytes(k) for k, _ in txn.cursor(db=st._env().dbs["matrices"])])
        assert left == [v2.encode()]


@pytest.mark.parametrize("arrays, match", [
    ({"prior": np.ones((5, 4))}, "arrays\\['prior'\\] has 5 rows"),
    ({"prior": np.full((6, 4), np.nan)}, "non-finite"),
    ({"not a name": np.ones((6, 4))}, "identifier"),
    ({"sigma": np.ones((6, 4))}, "pass sigma="),
])
def test_bad_arrays_are_refused_and_nothing_is_published(tmp_path, arrays, match):
    w = make_world(M=6, F=4, N=3)
    with WeightStore(tmp_path / "s") as st:
        with pytest.raises(InvalidWeights, match=match):
            st.publish(w.ad_ids, w.theta, w.features, arrays=arrays)
        assert st.current_version() is None
