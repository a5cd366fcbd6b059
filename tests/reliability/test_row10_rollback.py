"""Row 10 -- rollback: publish a bad (valid but wrongly ranking) version, roll back with
``llmhyper store rollback``; the previous version serves again with bit-identical scores.
How soon it serves again is recorded here and budgeted in benchmarks/test_reliability_bench.py."""

from __future__ import annotations

import time

import numpy as np

from tests.helpers import make_world, publish_world, run_cli, wait_for
from llmhyper.client import RankerClient
from llmhyper.store.weight_store import WeightStore

USERS = [f"u{i:03d}" for i in range(0, 30, 3)]


def _snapshot(c: RankerClient, X: np.ndarray) -> dict:
    out = {"version": None, "rank": [], "batch": None}
    for u in USERS:
        r = c.rank(u, top_k=10)
        out["version"] = r.version
        out["rank"].append(([a.ad_id for a in r.ads], [a.logit for a in r.ads], [a.ctr for a in r.ads]))
    b = c.rank_batch(X, top_k=10)
    out["batch"] = (b.version, b.ad_index.tobytes(), b.logit.tobytes(), b.ctr.tobytes())
    return out


def test_row10_rollback_restores_previous_scores(tmp_path, serve, record):
    world = make_world()
    path = tmp_path / "rb.lmdb"
    with WeightStore(path) as w:
        good = publish_world(w, world)
    sp = serve(path, "--poll-interval", "0.1")
    with RankerClient(sp.target, timeout=5) as c:
        before = _snapshot(c, world.X)
        assert before["version"] == good
        with WeightStore(path) as w:  # the bad version: valid weights, ranking reversed
            bad = w.publish(world.ad_ids, np.ascontiguousarray(-world.theta), world.features,
                            manifest={"generator": "broken"})
        assert wait_for(lambda: c.rank("u000", top_k=1).version == bad, timeout=30)
        during = _snapshot(c, world.X)
        assert during["version"] == bad
        assert [r[0] for r in during["rank"]] != [r[0] for r in before["rank"]]  # it really ranks differently

        r = run_cli("store", "rollback", "--store", str(path), "--json")
        t0 = time.monotonic()
        assert r.returncode == 0, r.stderr
        assert f'"current": "{good}"' in r.stdout
        assert wait_for(lambda: c.rank("u000", top_k=1).version == good, timeout=30, interval=0.005)
        took = time.monotonic() - t0
        after = _snapshot(c, world.X)
    identical = after == before
    record("row10", good=good, bad=bad, rollback_to_served_ms=round(took * 1e3, 1),
           users_compared=len(USERS), batch_rows=int(world.X.shape[0]), bit_identical=identical)
    assert after["version"] == good
    assert after["rank"] == before["rank"]    # ids, logits, ctrs: exact float equality
    assert after["batch"] == before["batch"]  # packed bytes equal
