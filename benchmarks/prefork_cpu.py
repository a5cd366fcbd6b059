"""Server CPU-seconds per call for ``--processes 1`` and ``2`` (issue 13), and 10,000 garbage-byte
requests. Closed-loop unary Rank by user id from separate client processes; CPU is utime+stime
of the parent and its children from /proc.

Run:  .venv/bin/python benchmarks/prefork_cpu.py [--seconds 8] [--clients 2] [--threads 4]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llmhyper.server.prefork import pid_cpu_seconds  # noqa: E402
from tests.helpers import REPO, cli_env  # noqa: E402
from tests.server.test_prefork import child_pids  # noqa: E402


def _client(target: str, seconds: float, threads: int, q: mp.Queue) -> None:
    import threading

    from llmhyper.client import RankerClient

    lat: list[float] = []
    errors = [0]
    stop = time.monotonic() + seconds

    def run(i: int) -> None:
        with RankerClient(target, timeout=5) as c:
            c.rank("u00000", top_k=10)
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                try:
                    c.rank(f"u{(i * 7919 + len(lat)) % 2000:05d}", top_k=10)
                    lat.append(time.perf_counter() - t0)
                except Exception:
                    errors[0] += 1

    ts = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    q.put((lat, errors[0]))


def start(store: str, processes: int) -> tuple[subprocess.Popen, str]:
    p = subprocess.Popen([sys.executable, "-m", "llmhyper", "serve", "--store", store, "--port", "0",
                          "--processes", str(processes), "--log-level", "WARNING"],
                         cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, text=True)
    target = "127.0.0.1:" + re.search(r":(\d+) ", p.stdout.readline()).group(1)
    from llmhyper.client import RankerClient

    for _ in range(4 * processes):
        with RankerClient(target) as c:
            c.wait_until_serving(timeout=120)
            c.rank("u00000", top_k=10)
    return p, target


def server_cpu(p: subprocess.Popen) -> float:
    return sum(pid_cpu_seconds(pid) for pid in {p.pid, *child_pids(p.pid)})


def measure(store: str, processes: int, seconds: float, clients: int, threads: int) -> dict:
    p, target = start(store, processes)
    try:
        q: mp.Queue = mp.Queue()
        c0 = server_cpu(p)
        procs = [mp.Process(target=_client, args=(target, seconds, threads, q)) for _ in range(clients)]
        t0 = time.monotonic()
        for pr in procs:
            pr.start()
        got = [q.get(timeout=seconds + 120) for _ in procs]
        wall = time.monotonic() - t0
        c1 = server_cpu(p)
        for pr in procs:
            pr.join()
        lat = np.array([x for g in got for x in g[0]])
        n = len(lat)
        return {"processes": processes, "calls": n, "errors": sum(g[1] for g in got),
                "throughput_per_s": round(n / wall, 1), "p50_ms": round(float(np.percentile(lat, 50)) * 1e3, 3),
                "p99_ms": round(float(np.percentile(lat, 99)) * 1e3, 3),
                "server_cpu_s": round(c1 - c0, 3), "server_cpu_us_per_call": round((c1 - c0) / n * 1e6, 1)}
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(60)


def garbage(store: str, n: int = 10_000) -> dict:
    import grpc

    p = subprocess.Popen([sys.executable, "-m", "llmhyper", "serve", "--store", store, "--port", "0"],
                         cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    target = "127.0.0.1:" + re.search(r":(\d+) ", p.stdout.readline()).group(1)
    from llmhyper.client import RankerClient

    with RankerClient(target) as c:
        c.wait_until_serving(timeout=120)
    c0 = server_cpu(p)
    codes: dict[str, int] = {}
    rng = np.random.default_rng(0)
    with grpc.insecure_channel(target) as ch:
        raw = ch.unary_unary("/llmhyper.v1.Ranker/Rank")
        for i in range(n):
            try:
                raw(b"\xff" + rng.bytes(15), timeout=5)
                codes["OK"] = codes.get("OK", 0) + 1
            except grpc.RpcError as e:
                codes[e.code().name] = codes.get(e.code().name, 0) + 1
    c1 = server_cpu(p)
    p.send_signal(signal.SIGTERM)
    p.wait(60)
    err = p.stderr.read()
    return {"requests": n, "codes": codes, "server_cpu_s": round(c1 - c0, 3),
            "log_lines": sum(1 for line in err.splitlines() if "do not parse" in line or "Traceback" in line
                             or "deserializ" in line), "stderr_lines_total": len(err.splitlines())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--threads", type=int, default=4)
    a = ap.parse_args()
    from llmhyper.store.weight_store import WeightStore

    F, M, N = 64, 120, 2000
    store = str(Path(tempfile.mkdtemp()) / "store")
    rng = np.random.default_rng(0)
    feats = [("bias", "intercept")] + [(f"f{j}", "x") for j in range(1, F)]
    X = rng.random((N, F), dtype=np.float32)
    X[:, 0] = 1
    with WeightStore(store) as s:
        s.publish([f"ad{i:04d}" for i in range(M)], rng.normal(0, .3, (M, F)).astype(np.float32), feats,
                  manifest={"generator": "bench"})
        s.put_users([f"u{i:05d}" for i in range(N)], X, feats)
    out = {"scaling": [measure(store, n, a.seconds, a.clients, a.threads) for n in (1, 2)], "garbage": garbage(store)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
