"""Child-process bodies for the store fault rows (run in a multiprocessing forkserver that has
numpy, lmdb and llmhyper.store.weight_store preloaded, so 50 publisher processes cost milliseconds each)."""

from __future__ import annotations

import numpy as np

F = 64


def rows(seq: int) -> int:
    """Rows of version ``seq``: varies so a torn write could not pass for another version."""
    return 500 + (seq * 389) % 2500


# Slots of the shared ``state`` array a publisher writes (the parent reads it after the kill).
IN_TXN, OP = 0, 1      # IN_TXN: 1 while a write txn is open (llmhyper.store.env.WRITE_TXN_PROBE)
PUBLISH, PRUNE = 1, 2  # OP: which call the process is in


def publisher(path: str, conn, state=None) -> None:
    """Publish forever: version k has rows(k) ads ``k_i``, every weight == k, manifest {"seq": k},
    a record for every 100th ad; prune to 3 every third version. Reports begin/done on ``conn``;
    with ``state`` (a shared int array) also whether a write transaction is open, and in which call."""
    from llmhyper.store import env as store_env
    from llmhyper.store.weight_store import WeightStore

    if state is not None:
        def probe(event: str) -> None:
            state[IN_TXN] = 1 if event == "begin" else 0
        store_env.WRITE_TXN_PROBE = probe
    s = WeightStore(path, map_size=256 << 10)  # small map: kills also land inside map growth
    feats = [("bias", "")] + [(f"f{j}", "") for j in range(1, F)]
    conn.send(("ready", 0))
    while True:
        cur = s.current_version()
        k = int(cur[1:]) + 1 if cur else 1
        conn.send(("begin", k))
        ids = [f"{k}_{i}" for i in range(rows(k))]
        if state is not None:
            state[OP] = PUBLISH
        s.publish(ids, np.full((rows(k), F), k, np.float32), feats, {"seq": k},
                  {a: {"seq": k} for a in ids[::100]})
        if k % 3 == 0:
            if state is not None:
                state[OP] = PRUNE
            s.prune(3)
        if state is not None:
            state[OP] = 0
        conn.send(("done", k))
