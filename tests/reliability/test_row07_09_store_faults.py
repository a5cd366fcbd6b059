"""Rows 7, 8, 9 -- store faults with real processes and a real LMDB store.

Row 7: a publisher process SIGKILLed at random points, 50 times: after every kill the store
opens (read-only and writable) and a reader sees one complete version. The child marks in
shared memory when an LMDB write transaction is open (``llmhyper.store.env.WRITE_TXN_PROBE``), so
the kills that landed inside a write transaction -- the case that matters -- are counted.
Row 8: a store that cannot grow (map at its maximum; and a file-size limit, like a full disk,
through ``llmhyper publish``): the publish fails with a clear error and the running
``llmhyper serve`` keeps serving the old version with the same scores.
Row 9: ``llmhyper serve`` reader processes SIGKILLed, then 20 versions published: their stale
reader slots are cleared and the file's growth stays bounded.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import resource
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.helpers import REPO, cli_env, make_world, publish_world
from llmhyper.client import RankerClient
from llmhyper.store.weight_store import PublishError, WeightStore

from . import store_procs
from tests.store.test_store_crash import assert_complete  # same version encoding as store_procs

from .store_procs import F, rows

KILLS = 50


@pytest.fixture(scope="module")
def forkserver():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["numpy", "lmdb", "llmhyper.store.weight_store", "tests.reliability.store_procs"])
    return ctx


@pytest.mark.slow
def test_row07_publisher_sigkilled_50_times(tmp_path, forkserver, record):
    path = str(tmp_path / "k.lmdb")
    rng = random.Random(7)
    with WeightStore(path, map_size=64 << 10) as w:
        w.publish([f"1_{i}" for i in range(rows(1))], np.full((rows(1), F), 1, np.float32),
                  [("bias", "")] + [(f"f{j}", "") for j in range(1, F)], {"seq": 1},
                  {f"1_{i}": {"seq": 1} for i in range(0, rows(1), 100)})
    mid_publish = 0
    in_txn = {store_procs.PUBLISH: 0, store_procs.PRUNE: 0}
    committed_by_killed = 0
    last_done = 1
    t0 = time.monotonic()
    for _ in range(KILLS):
        recv, send = forkserver.Pipe(duplex=False)
        state = forkserver.RawArray("i", 2)
        p = forkserver.Process(target=store_procs.publisher, args=(path, send, state), daemon=True)
        p.start()
        send.close()
        assert recv.poll(30) and recv.recv() == ("ready", 0)
        time.sleep(rng.uniform(0.0, 0.1))
        os.kill(p.pid, signal.SIGKILL)
        p.join(30)
        assert p.exitcode == -signal.SIGKILL
        msgs = []
        while recv.poll(0):
            try:
                msgs.append(recv.recv())
            except EOFError:
                break
        recv.close()
        if msgs and msgs[-1][0] == "begin":
            mid_publish += 1
        if state[store_procs.IN_TXN]:  # killed with a write transaction open
            in_txn[state[store_procs.OP]] += 1
        dones = [k for m, k in msgs if m == "done"]
        if dones:
            last_done = max(dones)
        reader = WeightStore(path, readonly=True)  # the store opens after every kill
        try:
            cur = int(assert_complete(reader)[1:])
        finally:
            reader.close()
        # every publish reported done is durable; at most the killed one may have committed
        assert last_done <= cur <= last_done + 1, (cur, last_done)
        committed_by_killed += cur == last_done + 1
        last_done = cur
    with WeightStore(path) as w:  # and it is still writable
        assert_complete(w)
        v = w.publish(["x"], np.ones((1, F), np.float32), [("bias", "")] + [(f"f{j}", "") for j in range(1, F)])
        assert w.view(v).theta.shape == (1, F)
    record("row07", kills=KILLS, kills_inside_write_txn=sum(in_txn.values()),
           kills_inside_publish_txn=in_txn[store_procs.PUBLISH], kills_inside_prune_txn=in_txn[store_procs.PRUNE],
           kills_between_begin_and_done_messages=mid_publish, killed_publish_committed=committed_by_killed,
           final_version=last_done, opens_ok=KILLS, complete_views=KILLS, seconds=round(time.monotonic() - t0, 1))
    assert in_txn[store_procs.PUBLISH] >= KILLS // 10, f"only {in_txn} kills landed inside a write transaction"


def _scores(target: str, world) -> tuple:
    with RankerClient(target, timeout=5) as c:
        r = [c.rank(u, top_k=5) for u in world.user_ids[:5]]
        b = c.rank_batch(world.X, top_k=5)
    return tuple((x.version, tuple((a.ad_id, a.logit) for a in x.ads)) for x in r) + ((b.version, b.logit.tobytes()),)


def test_row08_map_full_publish_fails_serving_unchanged(tmp_path, serve, record):
    world = make_world()
    path = tmp_path / "full.lmdb"
    cap = 1 << 20
    w = WeightStore(path, map_size=cap, max_map_size=cap)
    try:
        v1 = publish_world(w, world)
        sp = serve(path)
        before = _scores(sp.target, world)
        big = np.ones((6000, 64), np.float32)  # 1.5 MiB: cannot fit a 1 MiB map
        with pytest.raises(PublishError) as ei:
            w.publish([f"b{i}" for i in range(6000)], big, [("bias", "")] + [(f"f{j}", "") for j in range(1, 64)])
        msg = str(ei.value)
        assert "is full" in msg and "max_map_size" in msg and "current version is unchanged" in msg, msg
        assert w.current_version() == v1 and np.array_equal(w.view().theta, world.theta)
        time.sleep(0.3)  # a few hot-swap polls
        after = _scores(sp.target, world)
        assert after == before and after[0][0] == v1
        v2 = w.publish(world.ad_ids, world.theta * 2, world.features)  # small ones still fit
    finally:
        w.close()
    record("row08_map_full", max_map_size=cap, attempted_bytes=big.nbytes, error=msg[:160],
           serving_before=v1, serving_after=after[0][0], scores_identical=after == before, next_small_publish=v2)


def _ignore_sigxfsz_and_limit(limit: int):
    def pre() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    return pre


def test_row08_disk_full_cli_publish_fails_serving_unchanged(tmp_path, serve, record):
    from offline.data.artifact import WeightArtifact

    world = make_world()
    path = tmp_path / "disk.lmdb"
    with WeightStore(path) as w:
        v1 = publish_world(w, world)
    sp = serve(path)
    before = _scores(sp.target, world)
    n = 20000
    art = WeightArtifact(ad_ids=[f"d{i}" for i in range(n)], theta=np.zeros((n, world.F), np.float32),
                         features=list(world.features), manifest={"generator": "big"}, ad_records={})
    npz = tmp_path / "big.npz"
    art.save(npz)
    size = os.path.getsize(path / "data.mdb")
    p = subprocess.run([sys.executable, "-m", "llmhyper", "publish", str(npz), "--store", str(path)], cwd=REPO,
                       env=cli_env(), capture_output=True, text=True, timeout=60,
                       preexec_fn=_ignore_sigxfsz_and_limit(size + (32 << 10)))
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    assert "publish failed (the previous version still serves)" in p.stderr, p.stderr
    time.sleep(0.3)
    after = _scores(sp.target, world)
    with WeightStore(path, readonly=True) as r:  # a separate opener (this process had the writer closed)
        cur = r.current_version()
    record("row08_disk_full", file_limit_bytes=size + (32 << 10), exit_code=p.returncode,
           error=p.stderr.strip().splitlines()[-1][:200], serving_after=after[0][0], scores_identical=after == before)
    assert cur == v1 and after == before


@pytest.mark.slow
def test_row09_killed_readers_cleared_and_growth_bounded(tmp_path, serve, record):
    M, Fw = 400, 64
    vbytes = M * Fw * 4  # 100 KiB per version
    feats = [("bias", "")] + [(f"f{j}", "") for j in range(1, Fw)]
    path = tmp_path / "readers.lmdb"
    w = WeightStore(path, durable=False)

    def cycles(n: int, pause: float = 0.0) -> None:
        for _ in range(n):
            k = int(w.current_version()[1:]) + 1 if w.current_version() else 1
            w.publish([f"a{i}" for i in range(M)], np.full((M, Fw), k, np.float32), feats)
            w.prune(2)
            time.sleep(pause)

    try:
        cycles(6)
        readers = [serve(path, "--poll-interval", "0.05") for _ in range(3)]
        for r in readers:
            with RankerClient(r.target) as c:
                assert c.rank(features={"f1": 1.0}, top_k=1).version == w.current_version()
        slots_before = w.reader_pids()
        assert {r.pid for r in readers} <= set(slots_before)
        killed, live = readers[:2], readers[2]
        for r in killed:
            r.proc.send_signal(signal.SIGKILL)
            r.proc.wait(10)
        assert {r.pid for r in killed} <= set(w.reader_pids())  # stale until someone clears them
        base = w.stats()["file_bytes"]
        cycles(20, pause=0.06)  # the live server follows every version
        slots_after = w.reader_pids()
        growth = w.stats()["file_bytes"] - base
        with RankerClient(live.target) as c:
            served = c.rank(features={"f1": 1.0}, top_k=1)
        cur = w.current_version()
    finally:
        w.close()
    bound = 8 * vbytes  # the live server may pin up to 4 cached versions (LRU) + the writer's working set
    record("row09", killed_readers=len(killed), stale_slots_before=sum(p in slots_before for p in (r.pid for r in killed)),
           stale_slots_after=sum(p in slots_after for p in (r.pid for r in killed)),
           live_reader_kept=live.pid in slots_after, publishes=20, version_bytes=vbytes, file_growth_bytes=growth,
           growth_bound_bytes=bound, live_server_version=served.version, current=cur)
    assert not ({r.pid for r in killed} & set(slots_after)), "stale reader slots were not cleared"
    assert live.pid in slots_after
    assert growth <= bound, growth
    assert served.version == cur
