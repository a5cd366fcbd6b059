"""Server operations: health lifecycle, hot swap, version pins, deadlines, overload,
message limits, reflection and graceful stop — real servers, real stores."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
from tests.helpers import make_world, publish_world, wait_for
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmhyper.client import RankerClient, RankerError
from llmhyper.store.weight_store import WeightStore
from scoring import reference as ref


@pytest.fixture
def rw_store(tmp_path, world):
    """A writable store (this process's one LMDB environment for the path) with v000001 published."""
    store = WeightStore(tmp_path / "rw.lmdb")
    publish_world(store, world)
    yield store
    store.close()


def test_health_not_serving_until_a_version_exists(tmp_path, make_server, world):
    store = WeightStore(tmp_path / "empty.lmdb")
    try:
        server, port = make_server(store, poll_interval_s=0.05)
        with RankerClient(f"127.0.0.1:{port}") as c:
            assert c.health() == "NOT_SERVING"
            with pytest.raises(RankerError) as ei:
                c.rank(features={"f1": 1.0}, top_k=1)
            assert ei.value.code == grpc.StatusCode.UNAVAILABLE
            c.ping()  # the port answers even before a version exists
            publish_world(store, world)
            assert wait_for(lambda: c.health() == "SERVING", timeout=2.0)
            assert c.rank("u001", top_k=2).version == "v000001"
    finally:
        server.stop(0).wait(5)
        store.close()


def test_background_warmup_reports_serving(store_path, make_server):
    server, port = make_server(str(store_path), background_warmup=True)
    with RankerClient(f"127.0.0.1:{port}") as c:
        c.wait_until_serving(timeout=30)
        assert server.servicer.ready
        assert len(c.rank("u003", top_k=3).ads) == 3


def test_hot_swap_picked_up(rw_store, make_server, world):
    """A publish is served by the running server; how soon is budgeted in benchmarks/."""
    server, port = make_server(rw_store)
    w2 = make_world(seed=99)
    with RankerClient(f"127.0.0.1:{port}") as c:
        assert c.rank("u001", top_k=3).version == "v000001"
        v2 = rw_store.publish(w2.ad_ids, w2.theta, w2.features, manifest=w2.manifest)
        assert wait_for(lambda: c.rank("u001", top_k=3).version == v2, timeout=30, interval=0.01)
        res = c.rank(features=world.x("u001"), top_k=5)
        idx, _, _ = ref.topk_one(w2.theta, world.x("u001"), 5)
        assert res.ad_ids == [w2.ad_ids[i] for i in idx]  # scored with the new weights
        assert server.servicer.counters()["swaps"] == 1
        assert c.model_info().version == v2


def test_no_mixed_versions_under_publishes(rw_store, make_server, world):
    """Each version's weights encode its number: every response must be self-consistent."""
    server, port = make_server(rw_store, poll_interval_s=0.02)
    F = world.F
    ad_ids = [f"ad{i}" for i in range(6)]
    x = np.zeros(F, dtype=np.float32)
    x[0] = 1.0

    def theta_for(n: int) -> np.ndarray:
        t = np.zeros((6, F), dtype=np.float32)
        t[:, 0] = n * 0.01 - np.arange(6, dtype=np.float32) * 1e-4  # bias logit encodes n, ad order fixed
        return t

    stop = threading.Event()
    bad: list[str] = []
    seen: set[str] = set()

    def load() -> None:
        with RankerClient(f"127.0.0.1:{port}") as c:
            while not stop.is_set():
                try:
                    r = c.rank(features=x, top_k=6)
                except RankerError as e:
                    bad.append(f"error {e}")
                    continue
                n = int(r.version[1:])
                seen.add(r.version)
                if n == 1:
                    continue
                exp = [(n * 0.01 - i * 1e-4) for i in range(6)]
                got = [a.logit for a in r.ads]
                if not np.allclose(got, exp, atol=1e-6):
                    bad.append(f"{r.version}: {got[:2]}")

    rw_store.publish(ad_ids, theta_for(2), world.features)  # same schema, new ads
    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    for n in range(3, 13):
        v = rw_store.publish(ad_ids, theta_for(n), world.features)
        assert int(v[1:]) == n
        time.sleep(0.03)
    time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join(10)
    assert not bad, bad[:5]
    assert "v000012" in seen and len(seen) >= 3


def test_version_pin(rw_store, make_server, world):
    server, port = make_server(rw_store)
    w2 = make_world(seed=5)
    v2 = rw_store.publish(w2.ad_ids, w2.theta, w2.features, manifest=w2.manifest)
    x = world.x("u009")
    with RankerClient(f"127.0.0.1:{port}") as c:
        assert wait_for(lambda: c.model_info().version == v2, timeout=2)
        old = c.rank(features=x, top_k=4, version="v000001")
        new = c.rank(features=x, top_k=4)
        assert old.version == "v000001" and new.version == v2
        assert old.ad_ids == [world.ad_ids[i] for i in ref.topk_one(world.theta, x, 4)[0]]
        assert new.ad_ids == [w2.ad_ids[i] for i in ref.topk_one(w2.theta, x, 4)[0]]
        assert c.model_info(version="v000001").manifest["seed"] == world.manifest["seed"]
        b = c.rank_batch(world.X[:2], top_k=2, version="v000001")
        assert b.version == "v000001"
        assert c.explain("ad001", "u009", version="v000001").version == "v000001"
        with pytest.raises(RankerError) as ei:
            c.rank(features=x, top_k=1, version="v000003")
        assert ei.value.code == grpc.StatusCode.NOT_FOUND and "v000003" in ei.value.details


def test_rollback_is_served(rw_store, make_server, world):
    server, port = make_server(rw_store)
    w2 = make_world(seed=8)
    v2 = rw_store.publish(w2.ad_ids, w2.theta, w2.features)
    with RankerClient(f"127.0.0.1:{port}") as c:
        assert wait_for(lambda: c.rank("u001", top_k=1).version == v2, timeout=1.0)
        before = c.rank(features=world.x("u001"), top_k=5, version="v000001")
        rw_store.rollback()
        assert wait_for(lambda: c.rank("u001", top_k=1).version == "v000001", timeout=1.0)
        after = c.rank(features=world.x("u001"), top_k=5)
        assert after.ad_ids == before.ad_ids
        assert [a.logit for a in after.ads] == [a.logit for a in before.ads]  # bit-identical


def test_deadline_exceeded_skips_kernel(store_path, make_server):
    server, port = make_server(str(store_path), debug_handler_delay_s=0.2)
    with RankerClient(f"127.0.0.1:{port}") as c:
        before = server.servicer.counters()
        for call in (lambda: c.rank("u001", top_k=3, timeout=0.05),
                     lambda: c.rank_batch(np.ones((2, 8), np.float32), top_k=3, timeout=0.05),
                     lambda: c.explain("ad001", "u001", timeout=0.05)):
            with pytest.raises(RankerError) as ei:
                call()
            assert ei.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        # the handlers finish their 0.2 s sleep after the client gave up; then they must skip the kernel
        assert wait_for(lambda: server.servicer.counters()["deadline_skips"] == before["deadline_skips"] + 3, timeout=30)
        assert server.servicer.counters()["kernel_calls"] == before["kernel_calls"]
        # with enough time the same slowed handler runs the kernel
        assert len(c.rank("u001", top_k=3, timeout=5).ads) == 3
        assert server.servicer.counters()["kernel_calls"] == before["kernel_calls"] + 1


def test_concurrency_limit_answers_resource_exhausted(store_path, make_server):
    server, port = make_server(str(store_path), max_concurrent_rpcs=2, workers=4, debug_handler_delay_s=0.4)
    results: list[str] = []
    lock = threading.Lock()

    def call() -> None:
        with RankerClient(f"127.0.0.1:{port}") as c:
            try:
                c.rank("u001", top_k=2, timeout=5)
                out = "OK"
            except RankerError as e:
                out = e.code.name
        with lock:
            results.append(out)

    threads = [threading.Thread(target=call) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results.count("OK") >= 1
    assert results.count("RESOURCE_EXHAUSTED") >= 1
    assert set(results) <= {"OK", "RESOURCE_EXHAUSTED"}, results
    with RankerClient(f"127.0.0.1:{port}") as c:  # recovers once the load is gone
        assert len(c.rank("u001", top_k=2, timeout=5).ads) == 2


def test_oversized_request_resource_exhausted(store_path, make_server):
    server, port = make_server(str(store_path), max_receive_message_bytes=64 * 1024)
    with RankerClient(f"127.0.0.1:{port}") as c:
        big = np.ones((4096, 8), dtype=np.float32)  # 128 KiB of features
        with pytest.raises(RankerError) as ei:
            c.rank_batch(big, top_k=1)
        assert ei.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        small = c.rank_batch(big[:1000], top_k=1)  # 32 KiB: fine
        assert small.ad_index.shape == (1000, 1)


def test_oversized_response_resource_exhausted(store_path, make_server):
    server, port = make_server(str(store_path), max_send_message_bytes=2048)
    with RankerClient(f"127.0.0.1:{port}") as c:
        with pytest.raises(RankerError) as ei:
            c.rank_batch(np.ones((200, 8), dtype=np.float32), top_k=10)
        assert ei.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        c.ping()


def test_reflection_off_by_default_and_on_with_flag(store_path, make_server):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    def list_services(port: int) -> list[str]:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = reflection_pb2_grpc.ServerReflectionStub(ch)
            resp = next(iter(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                                       timeout=5)))
            return [s.name for s in resp.list_services_response.service]

    _, port_off = make_server(str(store_path))
    with pytest.raises(grpc.RpcError) as ei:
        list_services(port_off)
    assert ei.value.code() == grpc.StatusCode.UNIMPLEMENTED
    _, port_on = make_server(str(store_path), reflection=True)
    names = list_services(port_on)
    assert "llmhyper.v1.Ranker" in names and "grpc.health.v1.Health" in names


def test_graceful_stop_finishes_in_flight_and_reports_not_serving(store_path, make_server):
    server, port = make_server(str(store_path), debug_handler_delay_s=0.5, drain_s=1.0)
    out: dict[str, object] = {}

    def slow_call() -> None:
        with RankerClient(f"127.0.0.1:{port}") as c:
            try:
                out["rank"] = c.rank("u001", top_k=2, timeout=5)
            except RankerError as e:
                out["rank"] = e

    t = threading.Thread(target=slow_call)
    t.start()
    time.sleep(0.15)  # the call is in flight (sleeping in the handler)
    stopper = threading.Thread(target=lambda: out.setdefault("event", server.stop(3.0)))
    stopper.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        hs = health_pb2_grpc.HealthStub(ch)
        assert wait_for(lambda: hs.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                        == health_pb2.HealthCheckResponse.NOT_SERVING, timeout=0.9, interval=0.01)
    t.join(5)
    stopper.join(5)
    assert not isinstance(out["rank"], Exception), out["rank"]
    assert len(out["rank"].ads) == 2
    assert out["event"].wait(5)


def test_unknown_server_option_is_rejected(store_path):
    from llmhyper.server import create_server

    with pytest.raises(TypeError, match="unknown server option"):
        create_server("127.0.0.1:0", str(store_path), wokers=3)
    with pytest.raises(ValueError, match="tls_cert and tls_key"):
        create_server("127.0.0.1:0", str(store_path), tls_cert="x.pem")


def test_pinned_version_is_not_found_once_pruned(rw_store, make_server, world):
    """A version pin served once must not outlive a prune of that version (was cached forever)."""
    server, port = make_server(rw_store, poll_interval_s=0.05)
    w2 = make_world(seed=5)
    v2 = rw_store.publish(w2.ad_ids, w2.theta, w2.features)
    x = world.x("u009")
    with RankerClient(f"127.0.0.1:{port}") as c:
        assert wait_for(lambda: c.model_info().version == v2, timeout=2)
        assert c.rank(features=x, top_k=2, version="v000001").version == "v000001"  # pinned state cached
        assert rw_store.prune(1) == ["v000001"]

        def pin_gone() -> bool:
            try:
                c.rank(features=x, top_k=2, version="v000001")
            except RankerError as e:
                return e.code == grpc.StatusCode.NOT_FOUND
            return False

        assert wait_for(pin_gone, timeout=2.0)
        assert c.rank(features=x, top_k=2).version == v2


def test_by_id_requests_never_pair_a_user_row_with_weights_of_another_publish(rw_store, make_server, world):
    """A publish that replaces weights and user table together (one transaction) is served whole
    by the very next by-id request, without waiting for the poller (which never runs here)."""
    server, port = make_server(rw_store, poll_interval_s=3600.0)
    w2 = make_world(seed=11, F=world.F + 2, N=len(world.user_ids))  # new schema: F changes too
    v2 = rw_store.publish(w2.ad_ids, w2.theta, w2.features, manifest=w2.manifest,
                          users=(w2.user_ids, w2.X, w2.features))
    assert server.servicer.current_version == "v000001"  # the poller has not seen it
    with RankerClient(f"127.0.0.1:{port}") as c:
        r = c.rank("u003", top_k=5)
        assert r.version == v2
        idx, logit, _ = ref.topk_one(w2.theta, w2.x("u003"), 5)
        assert r.ad_ids == [w2.ad_ids[i] for i in idx]
        assert np.allclose([a.logit for a in r.ads], logit, atol=1e-5)
        b = c.rank_batch(user_ids=["u000", "u007"], top_k=3)
        assert b.version == v2
        for row, u in enumerate(["u000", "u007"]):
            assert b.ad_index[row].tolist() == ref.topk_one(w2.theta, w2.x(u), 3)[0].tolist()
        e = c.explain(w2.ad_ids[0], "u003")
        assert e.version == v2 and e.logit == pytest.approx(float(w2.theta[0] @ w2.x("u003")), abs=1e-5)
        # a request pinned to the old version stays on it, scored with the user table as it is now
        with pytest.raises(RankerError) as err:
            c.rank("u003", top_k=5, version="v000001")
        assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert server.servicer.counters()["swaps"] == 1


def test_user_table_schema_is_checked_on_every_by_id_request(rw_store, make_server, world):
    """A user table replaced on its own with the same F but other feature names is refused at
    once (no poll runs here), and a batch's cheap argument errors come before any user lookup."""
    server, port = make_server(rw_store, poll_interval_s=3600.0)
    with RankerClient(f"127.0.0.1:{port}") as c:
        assert c.rank("u002", top_k=3).version == "v000001"
        renamed = [world.features[0]] + [(f"{n}_v2", d) for n, d in world.features[1:]]
        rw_store.put_users(world.user_ids, world.X, renamed)
        with pytest.raises(RankerError) as err:
            c.rank("u002", top_k=3)
        assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION and "do not match" in err.value.details
        r = c.rank(features=world.x("u002"), top_k=3)  # inline features still work
        assert r.version == "v000001"
        with pytest.raises(RankerError) as err:
            c.rank_batch(user_ids=["nobody"], top_k=0)
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and "top_k" in err.value.details
