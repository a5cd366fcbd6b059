"""Row 2 -- overload: concurrency limit 4, 64 concurrent clients for 20 s.

Pass: the excess gets RESOURCE_EXHAUSTED (and nothing else fails), the server recovers, and
its memory stays flat. The accepted calls' p99 against the unloaded p99 is recorded here; its
2x budget is asserted in benchmarks/test_reliability_bench.py (a latency ratio on a shared
machine is a benchmark, not a test: it measured 3.73x on a loaded box).

Set-up: a real ``llmhyper serve --max-concurrent 4 --workers 4`` process. The handler is
given a 10 ms service time with the test hook (``--debug-handler-delay 0.01``): the limit's
job is to stop *queueing*, and the claim "accepted calls are not slowed by the overload" is
only measurable when a call's own service time, not the test box's CPU, dominates. (On this
2-core machine the 64 clients' own process takes a core; with microsecond CPU-bound handlers
any latency measurement is a measurement of CPU starvation -- the second test records those
numbers and checks only codes and memory.) The clients live in two separate load-generator
processes (32 each, one channel per client) and back off after RESOURCE_EXHAUSTED with capped
exponential full-jitter backoff, as well-behaved clients do; every latency is measured by the
same tool in the unloaded and the loaded phase.
"""

from __future__ import annotations

import numpy as np
import pytest

from .conftest import loadgen_result, run_loadgen

CLIENTS = 64
LOAD_S = 20.0
MIX = "rank,batch,explain"
RSS_TOL = 1.10      # after <= before * 1.10 + 8 MiB
RSS_SLACK_KIB = 8 * 1024


def _load(target: str, tmp_path, clients: int, seconds: float, procs: int, **opts) -> dict:
    per = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    runs = [run_loadgen(target, tmp_path / f"lg{i}.json", clients=n, seconds=seconds, wait=False, mix=MIX, **opts)
            for i, n in enumerate(per)]
    parts = [loadgen_result(p, tmp_path / f"lg{i}.json", timeout=seconds + 90) for i, p in enumerate(runs)]
    codes: dict[str, int] = {}
    for r in parts:
        for k, v in r["codes"].items():
            codes[k] = codes.get(k, 0) + v
    lat = np.concatenate([np.asarray(r["ok_ms"]) for r in parts]) if parts else np.array([])
    return {"codes": codes, "ok_ms": lat, "messages": {k: v for r in parts for k, v in r["first_message"].items()},
            "p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
            "alive_threads": sum(r["alive_threads"] for r in parts)}


def _run(serve, store_path, tmp_path, delay: float, load_s: float) -> dict:
    sp = serve(store_path, "--max-concurrent", "4", "--workers", "4", "--debug-handler-delay", str(delay))
    warm = _load(sp.target, tmp_path, 1, 1.0, 1)  # first calls: connection, caches
    assert set(warm["codes"]) == {"OK"}
    unloaded = _load(sp.target, tmp_path, 1, 3.0, 1)
    rss_before = sp.rss_kib()
    loaded = _load(sp.target, tmp_path, CLIENTS, load_s, 2, backoff_ms=5, backoff_cap_ms=100)
    rss_after = sp.rss_kib()
    recovered = _load(sp.target, tmp_path, 1, 1.0, 1)
    assert sp.proc.poll() is None
    return {"unloaded": unloaded, "loaded": loaded, "recovered": recovered,
            "rss_before": rss_before, "rss_after": rss_after}


def _summary(r: dict) -> dict:
    u, lo = r["unloaded"], r["loaded"]
    return {
        "clients": CLIENTS, "limit": 4, "codes_loaded": lo["codes"], "codes_unloaded": u["codes"],
        "p50_ms_unloaded": round(u["p50"], 3), "p99_ms_unloaded": round(u["p99"], 3),
        "p50_ms_loaded": round(lo["p50"], 3), "p99_ms_loaded": round(lo["p99"], 3),
        "p99_ratio": round(lo["p99"] / u["p99"], 2),
        "rss_kib_before": r["rss_before"], "rss_kib_after": r["rss_after"],
        "rss_growth_pct": round(100.0 * (r["rss_after"] - r["rss_before"]) / r["rss_before"], 2),
        "resource_exhausted_message": lo["messages"].get("RESOURCE_EXHAUSTED", ""),
    }


def _common_asserts(r: dict) -> None:
    lo = r["loaded"]
    assert set(lo["codes"]) <= {"OK", "RESOURCE_EXHAUSTED"}, (lo["codes"], lo["messages"])
    assert lo["codes"].get("RESOURCE_EXHAUSTED", 0) > 0, "the limit never shed load"
    assert lo["codes"].get("OK", 0) > 0
    assert lo["alive_threads"] == 0
    assert set(r["recovered"]["codes"]) == {"OK"}, r["recovered"]["codes"]  # recovers when the load stops
    assert r["rss_after"] <= r["rss_before"] * RSS_TOL + RSS_SLACK_KIB, (r["rss_before"], r["rss_after"])


@pytest.mark.slow
def test_row02_overload_sheds_excess_keeps_memory(serve, store_path, tmp_path, record):
    r = _run(serve, store_path, tmp_path, delay=0.010, load_s=LOAD_S)
    s = _summary(r)
    record("row02", seconds=LOAD_S, handler_delay_ms=10, **s)
    _common_asserts(r)
    # with 10 ms handlers and 4 slots the server can accept at most 400 calls/s: the limit held
    assert r["loaded"]["codes"]["OK"] <= 4 * LOAD_S / 0.010 * 1.05, s


@pytest.mark.slow
def test_row02_cpu_bound_handlers_codes_and_memory(serve, store_path, tmp_path, record):
    """No handler delay: codes and memory must hold; latency numbers are recorded (CPU-starved box)."""
    r = _run(serve, store_path, tmp_path, delay=0.0, load_s=5.0)
    s = _summary(r)
    record("row02_cpu_bound", seconds=5.0, handler_delay_ms=0, **s)
    _common_asserts(r)
