"""Speed claims of the reliability rows (RELIABILITY.md), measured as same-run ratios.

The reliability tests (tests/reliability/) assert what the code guarantees -- status codes,
counts, ordering, memory. How FAST those things happen depends on the machine's load, so the
timing halves live here (issue 9: no p99 or sub-second assertion in tests/):

* row 1, deadline: the slowest client call of 30 DEADLINE_EXCEEDED calls (50 ms deadline)
  against the 200 ms the slowed handler takes: <= 1.0x (the client never waited for it).
* row 2, overload: accepted-call p99 under 64 clients against a limit of 4, vs the unloaded
  p99 of the same server measured just before by the same load generator: <= 2.0x.
* row 5b, grace: a stuck call is cut when the grace period ends (cut / grace <= 1.75) and the
  process exits within drain + grace + 0.5 s (exit / that <= 1.5).
* rows 6/10, hot swap and rollback: time from a publish (or rollback) to the first response
  naming that version, in poll intervals (<= 10x ``poll_interval_s``).

Run:  .venv/bin/python -m pytest benchmarks/test_reliability_bench.py -q -s
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from llmhyper.client import RankerClient, RankerError
from llmhyper.store.weight_store import WeightStore
from tests.helpers import make_world, publish_world, wait_for
from tests.reliability.conftest import loadgen_result, run_loadgen, start_serve


def _row(budget_rows: list, case: str, ratio: float, budget: float, measured: str, *, below: bool = True) -> None:
    ok = ratio <= budget if below else ratio >= budget
    budget_rows.append({"suite": "reliab", "case": case, "measured": measured, "ratio": ratio, "budget": budget,
                        "statistic": "max" if "max" in measured else "p99" if "p99" in measured else "single",
                        "source": "this run", "ok": ok})
    print(f"\n{case}: {ratio:.3f} (budget {budget}) {measured}")


@pytest.fixture(scope="module")
def world_store(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    world = make_world()
    path = tmp_path_factory.mktemp("reliab-bench") / "w.lmdb"
    with WeightStore(path) as s:
        publish_world(s, world)
    return world, path


def test_row01_client_gives_up_before_the_slow_handler(world_store, budget_rows):
    from llmhyper.server import create_server

    world, path = world_store
    delay, timeout = 0.2, 0.05
    server, port = create_server("127.0.0.1:0", str(path), debug_handler_delay_s=delay, workers=4)
    try:
        with RankerClient(f"127.0.0.1:{port}", timeout=5) as c:
            c.model_info()
            elapsed = []
            for i in range(30):
                t0 = time.perf_counter()
                with pytest.raises(RankerError) as ei:
                    [lambda: c.rank("u001", top_k=3, timeout=timeout),
                     lambda: c.rank_batch(world.X[:4], top_k=3, timeout=timeout),
                     lambda: c.explain("ad001", "u002", timeout=timeout)][i % 3]()
                elapsed.append(time.perf_counter() - t0)
                assert ei.value.code.name == "DEADLINE_EXCEEDED"
    finally:
        server.stop(0).wait(5)
    ratio = max(elapsed) / delay
    _row(budget_rows, "row01 deadline: slowest give-up / handler time", ratio, 1.0,
         f"max {max(elapsed) * 1e3:.1f} ms, median {np.median(elapsed) * 1e3:.1f} ms vs handler {delay * 1e3:.0f} ms")
    assert ratio <= 1.0, f"a client waited {max(elapsed) * 1e3:.0f} ms, longer than the {delay * 1e3:.0f} ms handler"


def _load(target: str, tmp: Path, clients: int, seconds: float, procs: int, **opts) -> np.ndarray:
    per = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    runs = [run_loadgen(target, tmp / f"lg{i}.json", clients=n, seconds=seconds, wait=False,
                        mix="rank,batch,explain", **opts) for i, n in enumerate(per)]
    parts = [loadgen_result(p, tmp / f"lg{i}.json", timeout=seconds + 90) for i, p in enumerate(runs)]
    codes = {k for r in parts for k in r["codes"]}
    assert codes <= {"OK", "RESOURCE_EXHAUSTED"}, codes
    return np.concatenate([np.asarray(r["ok_ms"]) for r in parts])


def test_row02_accepted_p99_under_overload_vs_unloaded(world_store, tmp_path, budget_rows):
    _, path = world_store
    sp = start_serve(path, "--max-concurrent", "4", "--workers", "4", "--debug-handler-delay", "0.01")
    try:
        _load(sp.target, tmp_path, 1, 1.0, 1)  # connection and caches
        unloaded = _load(sp.target, tmp_path, 1, 3.0, 1)
        loaded = _load(sp.target, tmp_path, 64, 10.0, 2, backoff_ms=5, backoff_cap_ms=100)
    finally:
        sp.stop()
        for f in (sp.proc.stdout, sp.proc.stderr):
            f.close()
    p99_u, p99_l = float(np.percentile(unloaded, 99)), float(np.percentile(loaded, 99))
    ratio = p99_l / p99_u
    _row(budget_rows, "row02 overload: accepted p99 / unloaded p99", ratio, 2.0,
         f"p99 {p99_l:.2f} ms loaded (64 clients, limit 4) vs {p99_u:.2f} ms unloaded, 10 ms handlers")
    assert ratio <= 2.0, f"accepted-call p99 {ratio:.2f}x unloaded (budget 2x)"


def test_row05_stuck_call_cut_at_grace_and_prompt_exit(world_store, budget_rows):
    _, path = world_store
    grace, stuck = 1.0, 10.0
    sp = start_serve(path, "--drain", "0", "--grace", str(grace), "--debug-handler-delay", str(stuck))
    out: dict[str, float] = {}

    def slow() -> None:
        with RankerClient(sp.target, timeout=30) as c:
            try:
                c.rank("u001", top_k=1)
            except RankerError:
                pass
            out["t"] = time.monotonic()

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.3)
    t_sig = time.monotonic()
    sp.proc.send_signal(signal.SIGTERM)
    code = sp.proc.wait(timeout=stuck + 10)
    took = time.monotonic() - t_sig
    t.join(15)
    for f in (sp.proc.stdout, sp.proc.stderr):
        f.close()
    cut = out["t"] - t_sig
    _row(budget_rows, "row05 grace: stuck call cut / grace", cut / grace, 1.75, f"cut after {cut:.3f} s, grace {grace} s")
    _row(budget_rows, "row05 grace: exit / (grace + 0.5 s)", took / (grace + 0.5), 1.5,
         f"exit code {code} after {took:.3f} s")
    assert code == 0 and cut / grace <= 1.75 and took / (grace + 0.5) <= 1.5, (cut, took)


def test_rows06_10_publish_and_rollback_pickup_in_poll_intervals(tmp_path, budget_rows):
    from llmhyper.server import create_server

    poll = 0.05
    world, other = make_world(), make_world(seed=99)
    store = WeightStore(tmp_path / "swap.lmdb")
    first = publish_world(store, world)
    server, port = create_server("127.0.0.1:0", str(tmp_path / "swap.lmdb"), poll_interval_s=poll)
    try:
        with RankerClient(f"127.0.0.1:{port}", timeout=5) as c:
            assert c.rank("u001", top_k=1).version == first
            waits = {}
            for what in ("publish", "rollback"):
                if what == "publish":
                    target = store.publish(other.ad_ids, other.theta, other.features)
                else:
                    target = store.rollback()
                t0 = time.monotonic()
                assert wait_for(lambda: c.rank("u001", top_k=1).version == target, timeout=30, interval=0.002)
                waits[what] = time.monotonic() - t0
    finally:
        server.stop(0).wait(5)
        store.close()
    for what, w in waits.items():
        _row(budget_rows, f"rows06/10 {what} pickup / poll interval", w / poll, 10.0,
             f"{w * 1e3:.1f} ms with poll_interval_s {poll}")
    assert all(w / poll <= 10.0 for w in waits.values()), waits
