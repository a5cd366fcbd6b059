"""Prometheus /metrics (issue 13): exact counts per method and code over a real HTTP scrape,
the version metric following publishes under load, garbage request bytes answered INVALID_ARGUMENT with a
bounded number of log lines, and the client's shipped service config."""

from __future__ import annotations

import json
import logging
import threading
import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmhyper.client import RankerClient, RankerError, service_config
from llmhyper.server.app import create_server
from llmhyper.store.weight_store import WeightStore
from tests.helpers import make_world, publish_world, wait_for


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} from http://127.0.0.1:port/metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def requests(m: dict, method: str, code: str) -> float:
    return m.get(("llmhyper_requests_total", (("code", code), ("method", method))), 0.0)


@pytest.fixture
def metered(tmp_path):
    world = make_world()
    store = WeightStore(tmp_path / "store")  # writable, shared with the in-process server
    publish_world(store, world)
    server, port = create_server("127.0.0.1:0", store, metrics_port=0, poll_interval_s=0.02)
    yield server, port, world, store
    server.stop(0).wait(10)
    store.close()


def test_counts_per_method_and_code_are_exact(metered):
    server, port, world, _ = metered
    with RankerClient(f"127.0.0.1:{port}", retries=False) as c:
        for _ in range(7):
            c.rank(world.user_ids[0], top_k=3)
        for _ in range(3):
            with pytest.raises(RankerError):
                c.rank("no-such-user", top_k=3)
        for _ in range(2):
            with pytest.raises(RankerError):
                c.rank(world.user_ids[0], top_k=0)
        c.rank_batch(user_ids=world.user_ids[:4], top_k=2)
        c.explain(world.ad_ids[0], user_id=world.user_ids[1])
    m = scrape(server.metrics_port)
    assert requests(m, "Rank", "OK") == 7
    assert requests(m, "Rank", "NOT_FOUND") == 3
    assert requests(m, "Rank", "INVALID_ARGUMENT") == 2
    assert requests(m, "RankBatch", "OK") == 1
    assert requests(m, "Explain", "OK") == 1
    assert m[("llmhyper_request_duration_seconds_count", (("method", "Rank"),))] == 12
    buckets = [le for (name, labels), _ in m.items() if name == "llmhyper_request_duration_seconds_bucket"
               for k, le in labels if k == "le"]
    assert "5e-05" in buckets and "1.0" in buckets
    assert m[("llmhyper_in_flight_requests", ())] == 0
    assert m[("llmhyper_user_table_users", ())] == len(world.user_ids)
    assert m[("llmhyper_store_used_bytes", ())] > 0
    # the counters dict still works beside the metrics
    assert server.servicer.counters()["errors"] == {"NOT_FOUND": 3, "INVALID_ARGUMENT": 2}


def test_version_metric_follows_publishes(metered):
    """10 publishes while 3 clients call Rank: the info metric names each new version in turn,
    and the Rank OK count still equals the calls the clients saw succeed."""
    server, port, world, s = metered
    before = requests(scrape(server.metrics_port), "Rank", "OK")
    stop = threading.Event()
    done = [0, 0, 0]
    failed: list[str] = []

    def load(i: int) -> None:
        with RankerClient(f"127.0.0.1:{port}", timeout=10) as c:
            while not stop.is_set():
                try:
                    c.rank(world.user_ids[i], top_k=3)
                    done[i] += 1
                except RankerError as e:
                    failed.append(e.code.name)

    threads = [threading.Thread(target=load, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    try:
        for i in range(10):
            v = s.publish(world.ad_ids, world.theta * (i + 2), world.features, manifest={"generator": f"gen{i}"})
            key = ("llmhyper_served_version_info", (("generator", f"gen{i}"), ("n_ads", str(world.M)),
                                                    ("n_features", str(world.F)), ("version", v)))
            assert wait_for(lambda: scrape(server.metrics_port).get(key) == 1.0, timeout=30), v
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not failed, failed[:5]
    assert sum(done) > 0
    m = scrape(server.metrics_port)
    assert requests(m, "Rank", "OK") - before == sum(done)
    assert m[("llmhyper_hot_swaps_total", ())] == 10
    assert sum(val for (n, _), val in m.items() if n == "llmhyper_served_version_info") == 1.0
    assert m[("llmhyper_last_swap_duration_seconds", ())] > 0


def test_garbage_bytes_are_invalid_argument_with_bounded_logs(metered, caplog):
    server, port, _, _ = metered
    n = 300
    codes: dict[str, int] = {}
    with caplog.at_level(logging.INFO):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            for method in ("Rank", "RankBatch", "Explain"):
                raw = ch.unary_unary(f"/llmhyper.v1.Ranker/{method}")
                for i in range(n // 3):
                    try:
                        raw(bytes([0xFF, i % 256, 0x07, 0x0A]), timeout=5)
                        codes["OK"] = codes.get("OK", 0) + 1
                    except grpc.RpcError as e:
                        codes[e.code().name] = codes.get(e.code().name, 0) + 1
    assert codes == {"INVALID_ARGUMENT": n}
    lines = [r for r in caplog.records if "do not parse" in r.getMessage() or "deserializ" in r.getMessage()]
    assert 1 <= len(lines) <= 3, [r.getMessage() for r in lines]
    assert not [r for r in caplog.records if r.exc_info]
    m = scrape(server.metrics_port)
    assert requests(m, "Rank", "INVALID_ARGUMENT") == n // 3
    with RankerClient(f"127.0.0.1:{port}") as c:  # still serving
        assert c.rank("u000", top_k=1).ads


def test_client_service_config_retries_unavailable():
    cfg = json.loads(service_config(0.25))
    mc = cfg["methodConfig"][0]
    assert mc["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert mc["retryPolicy"]["maxAttempts"] >= 2 and mc["timeout"] == "0.250s"
