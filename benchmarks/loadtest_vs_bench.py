"""``llmhyper loadtest`` open loop against ``make bench``'s Rank p50, measured the same way (issue 13).

The two numbers differed by 1.05-1.55x when taken minutes apart on different servers. What
differs between them, and what this script holds equal:

* **When.** On this shared 2-core box the bench's own Rank p50 (and its Ping with it) moved
  0.39-0.70 ms between runs minutes apart, more than any difference between the tools. So the
  rounds here alternate bench and loadtest on ONE server, back to back, and report each round's
  ratio and each tool's run-to-run spread.
* **Server and store.** Both talk to one ``llmhyper serve`` with the bench's flags
  (``--poll-interval 0.1``, default workers) on a store shaped like the bench's (120 ads x 64
  features, 2,000 users, from ``benchmarks/test_rpc_bench.py``).
* **Requests.** The bench ranks one user (``u00042``) by id, top 10; the loadtest cycles through
  the store's users, which puts LMDB reads of users not read since the last commit in the
  measurement (the snapshot's row cache is cold for each user's first call). Here the loadtest
  gets a users file holding that one user; ``--cycle-users`` adds a round with every user.
* **Clock start.** The loadtest's headline p50 runs from each call's *scheduled* send (no
  coordinated omission), so it includes the generator's send lag (~0.05-0.1 ms here); the bench
  times from the actual send, as the loadtest's ``service_ms`` does. Both are reported.
* **Load shape.** The bench's budget loop calls back to back (Ping, Rank by id, Rank inline, in
  turn); the open loop sends one call every 2 ms, so client and server are idle between calls
  and wake for each (measured: +0.1 ms here). The bench now also reports Rank by id paced at
  500 calls/s (``test_rank_paced_like_loadtest``): that is the number the open loop measures.
  The loadtest's closed loop with one caller (``--concurrency 1``) is reported too: it measures
  what the back-to-back bench measures.

* **CPU placement.** The round trip is two thread hand-offs in each process (grpc's serving
  thread to a handler thread in the server, a completion back to the caller in the client). How
  the scheduler spreads those threads over the 2 cores sets the absolute p50: with the server
  pinned to one core and the client to the other the bench's Ping was 0.31-0.48 ms, unpinned
  0.55-0.63 ms in the same hour, while Rank / Ping stayed 1.14-1.16x. A new process (each
  loadtest run, each bench run) gets a new placement. ``--pin`` puts the server on CPU 0 and
  this process and the loadtest (which inherits the affinity) on CPU 1.

Not a difference that showed above the noise: the loadtest's per-call deadline (the bench sets
none) and its separate process (a paced caller in the bench's process measured the same p50).

Run:  .venv/bin/python benchmarks/loadtest_vs_bench.py [--rounds 3] [--rate 500] [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.test_rpc_bench import F, TOP_K, _interleaved, _paced, make_store  # noqa: E402
from tests.helpers import REPO, cli_env  # noqa: E402

USER = "u00042"  # the bench's by-id request


def start_server(store: Path, pin: bool) -> tuple[subprocess.Popen, str]:
    """``llmhyper serve`` with the bench fixture's flags (on CPU 0 with ``pin``); returns
    (process, target) once SERVING."""
    from llmhyper.client import RankerClient

    prefix = ["taskset", "-c", "0"] if pin else []
    p = subprocess.Popen([*prefix, sys.executable, "-m", "llmhyper", "serve", "--store", str(store), "--port", "0",
                          "--log-level", "WARNING", "--poll-interval", "0.1"],
                         cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    m = re.search(r"listening on [\d.]+:(\d+)", p.stdout.readline())
    if not m:
        p.kill()
        raise SystemExit("server did not start")
    target = f"127.0.0.1:{m.group(1)}"
    with RankerClient(target) as c:
        c.wait_until_serving(timeout=120)
    return p, target


def bench_round(target: str, rounds: int = 3000) -> dict[str, float]:
    """The bench's measurements: p50 in ms of Ping, Rank by id and Rank with inline features,
    interleaved back to back (test_rank_roundtrip_vs_ping), and of Rank by id paced at 500
    calls/s (test_rank_paced_like_loadtest), from this process on a plain channel."""
    import grpc

    from llmhyper._proto import ranker_pb2 as pb
    from llmhyper._proto import ranker_pb2_grpc as pb_grpc

    with grpc.insecure_channel(target) as ch:
        stub = pb_grpc.RankerStub(ch)
        ping, rank = pb.PingRequest(), pb.RankRequest(user_id=USER, top_k=TOP_K)
        x = np.random.default_rng(5).random(F, dtype=np.float32)
        x[0] = 1.0
        feat = pb.RankRequest(features=x.tolist(), top_k=TOP_K)
        for _ in range(200):
            stub.Ping(ping)
            stub.Rank(rank)
        t = _interleaved({"ping": lambda: stub.Ping(ping), "rank_user": lambda: stub.Rank(rank),
                          "rank_features": lambda: stub.Rank(feat)}, rounds=rounds)
        paced, _ = _paced(lambda: stub.Rank(rank), 500.0, 2000)  # test_rank_paced_like_loadtest
    out = {k: float(np.median(v)) * 1e3 for k, v in t.items()}
    out["rank_paced"] = float(np.median(paced)) * 1e3
    return out


def loadtest_round(target: str, users: list[str], *shape: str) -> dict[str, float]:
    """One ``llmhyper loadtest`` run; its p50s in ms and the achieved rate."""
    out = subprocess.run([sys.executable, "-m", "llmhyper", "loadtest", "--target", target, *users, *shape,
                          "--warmup", "1", "--json"], cwd=REPO, env=cli_env(), capture_output=True, text=True,
                         timeout=300)
    if out.returncode != 0:
        raise SystemExit(f"loadtest failed ({out.returncode}): {out.stderr[-2000:]}")
    rep = json.loads(out.stdout)
    return {"p50_sched": rep["latency_ms"]["p50"], "p50_service": rep["service_ms"]["p50"],
            "rate_ratio": rep["rate_ratio"] or 0.0, "errors": rep["errors"], "lag_p50": rep["send_lag_ms"]["p50"]}


def spread(values: list[float]) -> str:
    return f"{min(values):.3f}-{max(values):.3f} ms ({max(values) / min(values):.2f}x)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate", type=float, default=500.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--cycle-users", action="store_true", help="also run the loadtest over every user of the store")
    ap.add_argument("--pin", action="store_true", help="server on CPU 0, bench and loadtest clients on CPU 1 (Linux)")
    ap.add_argument("--dir", default=None, help="working directory (default: a new temporary one)")
    ap.add_argument("--json", default=None, help="also write the rounds to this JSON file")
    a = ap.parse_args(argv)
    work = Path(a.dir) if a.dir else Path(tempfile.mkdtemp(prefix="lt-vs-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    store = work / "store.lmdb"
    if not store.exists():
        make_store(store)
    users_file = work / "users.txt"
    users_file.write_text(USER + "\n")
    proc, target = start_server(store, a.pin)
    if a.pin:
        os.sched_setaffinity(0, {1})  # this process and the loadtest processes it starts
    rows = []
    try:
        for r in range(a.rounds):
            load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
            b = bench_round(target)
            lt = loadtest_round(target, ["--users-file", str(users_file)], "--rate", str(a.rate),
                                "--duration", str(a.seconds))
            c1 = loadtest_round(target, ["--users-file", str(users_file)], "--concurrency", "1", "--duration", "5")
            row = {"round": r, "loadavg": load, "bench": b, "open": lt, "closed1": c1}
            if a.cycle_users:
                row["open_all_users"] = loadtest_round(target, ["--store", str(store)], "--rate", str(a.rate),
                                                       "--duration", str(a.seconds))
            rows.append(row)
            print(f"round {r} (load {' '.join(load)}): bench Ping {b['ping']:.3f} ms, Rank by id {b['rank_user']:.3f} ms"
                  f" (paced 500/s {b['rank_paced']:.3f} ms)"
                  f" | open {a.rate:g}/s: p50 {lt['p50_sched']:.3f} ms from schedule, {lt['p50_service']:.3f} ms"
                  f" from send, rate {lt['rate_ratio']:.4f}x, {lt['errors']} errors | closed c=1 {c1['p50_sched']:.3f} ms"
                  + (f" | open, all users: {row['open_all_users']['p50_sched']:.3f} ms" if a.cycle_users else ""),
                  flush=True)
            time.sleep(1.0)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    bench = [row["bench"]["rank_user"] for row in rows]
    sched = [row["open"]["p50_sched"] for row in rows]
    serv = [row["open"]["p50_service"] for row in rows]
    paced = [row["bench"]["rank_paced"] for row in rows]
    r_sched = [s / b for s, b in zip(sched, bench)]
    r_serv = [s / b for s, b in zip(serv, bench)]
    r_paced = [s / b for s, b in zip(serv, paced)]
    print(f"bench Rank-by-id p50 over the rounds: back to back {spread(bench)}; paced 500/s {spread(paced)}")
    print(f"loadtest open-loop p50 from schedule: {spread(sched)}; from send: {spread(serv)}")
    print(f"ratio loadtest / bench per round: from schedule {', '.join(f'{x:.2f}' for x in r_sched)}"
          f" (median {np.median(r_sched):.2f}); from send {', '.join(f'{x:.2f}' for x in r_serv)}"
          f" (median {np.median(r_serv):.2f})")
    print(f"ratio loadtest from send / bench paced 500/s per round: {', '.join(f'{x:.2f}' for x in r_paced)}"
          f" (median {np.median(r_paced):.2f})")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
