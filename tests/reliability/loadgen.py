"""Closed-loop gRPC load generator for the reliability suite, run as its own process.

``python tests/reliability/loadgen.py --target HOST:PORT --clients 64 --seconds 20 --out r.json``

Each client is a thread with its own channel (own TCP connection) calling Rank / RankBatch /
Explain in a loop for ``--seconds`` wall seconds (a hard bound), optionally pausing
``--pause-ms`` between calls and backing off ``--backoff-ms`` after a
RESOURCE_EXHAUSTED (capped exponential backoff with full jitter, as a
well-behaved client does after load shedding). The JSON written to ``--out`` holds: counts per status code and method,
latencies (ms) of the calls that succeeded, the first message seen per error code, and the
wall time. Running it as a separate process keeps the load's CPU and GIL out of the test's
own measurements.
"""

from __future__ import annotations

import argparse
import json
import random
import threading
import time
from collections import Counter

import grpc
import numpy as np

from llmhyper._proto import ranker_pb2 as pb
from llmhyper._proto import ranker_pb2_grpc as pb_grpc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--mix", default="rank", help="comma list of rank,batch,explain (round robin per client)")
    ap.add_argument("--users", default="u001,u002,u003", help="user ids to rank for")
    ap.add_argument("--ad", default="ad001", help="ad id for Explain")
    ap.add_argument("--batch", type=int, default=16, help="users per RankBatch (from --users, repeated)")
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--timeout", type=float, default=5.0, help="per-call deadline (s)")
    ap.add_argument("--pause-ms", type=float, default=0.0)
    ap.add_argument("--backoff-ms", type=float, default=0.0,
                    help="after the n-th RESOURCE_EXHAUSTED in a row sleep U(0, min(cap, backoff * 2**n)) ms")
    ap.add_argument("--backoff-cap-ms", type=float, default=100.0)
    ap.add_argument("--token", default=None)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)

    users = a.users.split(",")
    mix = a.mix.split(",")
    md = (("authorization", f"Bearer {a.token}"),) if a.token else None
    batch_ids = [users[i % len(users)] for i in range(a.batch)]
    lock = threading.Lock()
    codes: Counter = Counter()
    by_method: Counter = Counter()
    first_msg: dict[str, str] = {}
    ok_ms: list[float] = []
    start = threading.Event()
    t_end = [0.0]

    def client(i: int) -> None:
        rng = random.Random(i)
        ch = grpc.insecure_channel(a.target, options=[("grpc.use_local_subchannel_pool", 1)])
        stub = pb_grpc.RankerStub(ch)
        calls = {
            "rank": lambda: stub.Rank(pb.RankRequest(user_id=rng.choice(users), top_k=a.top_k),
                                      timeout=a.timeout, metadata=md),
            "batch": lambda: stub.RankBatch(pb.RankBatchRequest(user_ids=batch_ids, top_k=a.top_k, skip_ad_ids=True),
                                            timeout=a.timeout, metadata=md),
            "explain": lambda: stub.Explain(pb.ExplainRequest(ad_id=a.ad, user_id=rng.choice(users)),
                                            timeout=a.timeout, metadata=md),
        }
        local_ok: list[float] = []
        local_codes: Counter = Counter()
        local_m: Counter = Counter()
        local_msg: dict[str, str] = {}
        n = i
        streak = 0
        start.wait()
        while time.monotonic() < t_end[0]:
            name = mix[n % len(mix)]
            n += 1
            t0 = time.perf_counter()
            try:
                calls[name]()
                local_ok.append((time.perf_counter() - t0) * 1e3)
                code = "OK"
            except grpc.RpcError as e:
                code = e.code().name
                local_msg.setdefault(code, e.details() or "")
            local_codes[code] += 1
            local_m[f"{name}:{code}"] += 1
            if code == "RESOURCE_EXHAUSTED" and a.backoff_ms:
                time.sleep(rng.uniform(0, min(a.backoff_cap_ms, a.backoff_ms * 2 ** streak)) / 1e3)
                streak = min(streak + 1, 16)
            elif code == "OK":
                streak = 0
            if a.pause_ms:
                time.sleep(a.pause_ms / 1e3)
        ch.close()
        with lock:
            ok_ms.extend(local_ok)
            codes.update(local_codes)
            by_method.update(local_m)
            for k, v in local_msg.items():
                first_msg.setdefault(k, v)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(a.clients)]
    for t in threads:
        t.start()
    t0 = time.monotonic()
    t_end[0] = t0 + a.seconds
    start.set()
    for t in threads:
        t.join(a.seconds + a.timeout + 30)
    wall = time.monotonic() - t0
    lat = np.asarray(ok_ms)
    out = {
        "clients": a.clients, "seconds": a.seconds, "wall_s": wall, "codes": dict(codes),
        "by_method": dict(by_method), "first_message": first_msg, "ok_ms": lat.round(4).tolist(),
        "p50_ms": float(np.percentile(lat, 50)) if lat.size else None,
        "p99_ms": float(np.percentile(lat, 99)) if lat.size else None,
        "alive_threads": sum(t.is_alive() for t in threads),
    }
    with open(a.out, "w") as f:
        json.dump(out, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
