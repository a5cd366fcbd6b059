"""``llmhyper loadtest`` against real servers on free loopback ports: exact call and status
counts, the open-loop schedule, several processes merged, TLS with a token, the report files.
No timing assertions: only counts, codes and the report's shape."""
from __future__ import annotations

import base64
import json

import pytest

from llmhyper.cli.main import main
from llmhyper.store.weight_store import WeightStore
from tests.helpers import make_world, publish_world

REPORT_KEYS = {
    "schema", "target", "method", "mode", "spec", "users", "batch_size", "started_at", "elapsed_s", "calls",
    "ok", "errors", "status_codes", "error_messages", "target_rate_per_s", "throughput_per_s", "rate_ratio",
    "users_per_s", "latency_ms", "latency_ok_ms", "service_ms", "send_lag_ms", "warmup", "procs",
    "per_process", "histogram", "files",
}
LATENCY_KEYS = {"count", "min", "mean", "p50", "p90", "p99", "p99_9", "max", "stddev"}


@pytest.fixture(scope="module")
def world_store(tmp_path_factory):
    world = make_world(seed=3, M=30, F=6, N=20)
    path = tmp_path_factory.mktemp("lt") / "store.lmdb"
    with WeightStore(path) as s:
        publish_world(s, world)
    return world, path


@pytest.fixture(scope="module")
def target(world_store):
    from llmhyper.server import create_server

    srv, port = create_server("127.0.0.1:0", str(world_store[1]))
    yield f"127.0.0.1:{port}"
    srv.stop(0).wait(5)


def _run(capsys, *args: str) -> dict:
    code = main(["loadtest", *args, "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out)


def test_calls_and_status_codes_counted_exactly(capsys, tmp_path, target) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("u001\nu002\nno-such-user\nu003\n")  # every 4th call asks for an unknown user
    rep = _run(capsys, "--target", target, "--users-file", str(ids), "--concurrency", "3", "--procs", "2",
               "--calls", "120")
    assert rep["calls"] == 120
    assert rep["status_codes"] == {"NOT_FOUND": 30, "OK": 90}
    assert (rep["ok"], rep["errors"]) == (90, 30)
    assert any("no-such-user" in m for m in rep["error_messages"]["NOT_FOUND"])
    # two processes, both worked, and their counts add up to the whole
    assert [p["proc"] for p in rep["per_process"]] == [0, 1]
    assert all(p["calls"] > 0 for p in rep["per_process"])
    assert sum(p["calls"] for p in rep["per_process"]) == 120
    assert sum(p["status_codes"].get("NOT_FOUND", 0) for p in rep["per_process"]) == 30
    assert rep["latency_ms"]["count"] == 120 and rep["latency_ok_ms"]["count"] == 90


def test_open_loop_makes_the_scheduled_calls(capsys, world_store, target) -> None:
    rep = _run(capsys, "--target", target, "--store", str(world_store[1]), "--rate", "100", "--duration", "1.5",
               "--warmup", "0.5", "--procs", "2", "--max-inflight", "2")
    assert rep["mode"] == "open" and rep["target_rate_per_s"] == 100
    assert rep["calls"] == 150 and rep["status_codes"] == {"OK": 150}
    assert rep["warmup"]["calls"] == 50
    assert [p["calls"] for p in rep["per_process"]] == [75, 75]
    assert rep["send_lag_ms"]["count"] == 150
    assert rep["rate_ratio"] == pytest.approx(rep["throughput_per_s"] / 100)


def test_rankbatch_and_explain(capsys, world_store, target) -> None:
    world, path = world_store
    rep = _run(capsys, "--target", target, "--store", str(path), "--method", "RankBatch", "--batch-size", "5",
               "--concurrency", "2", "--calls", "20", "--send", "features")
    assert rep["status_codes"] == {"OK": 20} and rep["batch_size"] == 5
    assert rep["users"] == {"source": f"store:{path}", "count": len(world.user_ids),
                            "sent_as": "features"}
    assert rep["users_per_s"] == pytest.approx(5 * rep["throughput_per_s"])
    rep = _run(capsys, "--target", target, "--store", str(path), "--method", "explain", "--concurrency", "1",
               "--calls", "10")
    assert rep["method"] == "Explain" and rep["status_codes"] == {"OK": 10}
    assert rep["spec"]["ad"] == world.ad_ids[0]  # learned from GetModelInfo
    rep = _run(capsys, "--target", target, "--store", str(path), "--method", "Explain", "--ad", "ad-missing",
               "--concurrency", "1", "--calls", "4")
    assert rep["status_codes"] == {"NOT_FOUND": 4}
    feats = ",".join(["1"] + ["0.5"] * (world.F - 1))
    rep = _run(capsys, "--target", target, "--features", feats, "--rate", "50", "--calls", "10")
    assert rep["status_codes"] == {"OK": 10} and rep["users"]["sent_as"] == "features"


def test_tls_and_token(capsys, world_store, tls_files, make_server) -> None:
    _, port = make_server(str(world_store[1]), tls_cert=str(tls_files.server_cert),
                          tls_key=str(tls_files.server_key), tokens=("s3cret",))
    common = ["--target", f"localhost:{port}", "--tls-ca", str(tls_files.ca), "--store", str(world_store[1]),
              "--concurrency", "2", "--procs", "2", "--calls", "30"]
    rep = _run(capsys, *common, "--token", "s3cret")
    assert rep["status_codes"] == {"OK": 30}
    assert rep["spec"]["token"] == "(set)"  # never written out
    rep = _run(capsys, *common, "--token", "wrong")
    assert rep["status_codes"] == {"UNAUTHENTICATED": 30}


def test_report_files_and_table(capsys, tmp_path, world_store, target) -> None:
    out = tmp_path / "rep"
    code = main(["loadtest", "--target", target, "--store", str(world_store[1]), "--rate", "200",
                 "--calls", "60", "--procs", "2", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    rep = json.loads((out / "report.json").read_text())
    assert set(rep) == REPORT_KEYS
    for key in ("latency_ms", "latency_ok_ms", "service_ms", "send_lag_ms"):
        assert set(rep[key]) == LATENCY_KEYS
        assert rep[key]["count"] == 60
    lat = rep["latency_ms"]
    assert lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99_9"] <= lat["max"]
    assert rep["schema"] == "llmhyper.loadtest/1" and rep["status_codes"] == {"OK": 60}
    assert rep["files"] == {"json": str(out / "report.json"), "png": str(out / "latency.png")}
    assert (out / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from hdrh.histogram import HdrHistogram

    h = HdrHistogram.decode(rep["histogram"]["encoded"].encode())
    assert h.get_total_count() == 60
    base64.b64decode(rep["histogram"]["encoded"])
    for word in ("p50", "p99.9", "OK", "60 calls", "target 200/s", str(out / "latency.png")):
        assert word in printed


@pytest.mark.parametrize("args,option", [
    (["--rate", "0"], "--rate"),
    (["--rate", "10", "--concurrency", "2"], "--concurrency"),
    (["--concurrency", "1", "--procs", "3"], "--procs"),
    (["--rate", "10", "--batch-size", "4"], "--batch-size"),
    (["--rate", "10", "--calls", "5", "--duration", "2"], "--duration"),
    (["--rate", "10", "--limit-users", "0"], "--limit-users"),
    (["--rate", "10", "--warmup", "-1"], "--warmup"),
    (["--rate", "10", "--max-inflight", "0"], "--max-inflight"),
])
def test_bad_arguments_exit_2_naming_the_option(capsys, world_store, args: list[str], option: str) -> None:
    code = main(["loadtest", "--target", "127.0.0.1:1", "--store", str(world_store[1]), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert option in err


def test_bad_user_sources_exit_2(capsys, tmp_path) -> None:
    for args, option in ((["--users-file", str(tmp_path / "none.txt")], "--users-file"),
                         (["--store", str(tmp_path / "nostore")], "--store"),
                         (["--users-file", str(tmp_path / "x"), "--send", "features"], "--send")):
        code = main(["loadtest", "--target", "127.0.0.1:1", "--rate", "5", *args])
        assert code == 2 and option in capsys.readouterr().err


def test_unreachable_server_is_a_runtime_failure(capsys, world_store) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once closed
    code = main(["loadtest", "--target", f"127.0.0.1:{port}", "--store", str(world_store[1]), "--rate", "5",
                 "--calls", "2", "--timeout", "1"])
    assert code == 1
    assert "cannot reach" in capsys.readouterr().err
