"""Process faults against a real LMDB weight store: a publisher SIGKILLed at random points,
and reader processes killed while holding snapshots (stale reader slots)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from llmhyper.store.weight_store import WeightStore

from tests.helpers import REPO  # noqa: E402
F = 64


def rows(seq: int) -> int:
    """Rows of version ``seq``: varies so a torn write could not pass for another version."""
    return 500 + (seq * 389) % 2500


# Publishes forever; version k has rows(k) ads "k_i", every weight == k, a record per 100th
# ad and manifest {"seq": k}. Prints "begin k" / "done vK" so the test knows where it died.
PUBLISHER = f"""
import sys, numpy as np
from llmhyper.store.weight_store import WeightStore
F = {F}
def rows(seq): return 500 + (seq * 389) % 2500
s = WeightStore(sys.argv[1], map_size=256 << 10)
feats = [("bias", "")] + [(f"f{{j}}", "") for j in range(1, F)]
print("ready", flush=True)
while True:
    cur = s.current_version()
    k = int(cur[1:]) + 1 if cur else 1
    print("begin", k, flush=True)
    ids = [f"{{k}}_{{i}}" for i in range(rows(k))]
    v = s.publish(ids, np.full((rows(k), F), k, np.float32), feats, {{"seq": k}},
                  {{a: {{"seq": k}} for a in ids[::100]}})
    if k % 3 == 0:
        s.prune(3)
    print("done", v, flush=True)
"""

# Opens the store read-only, pins the current version, reports, then waits to be killed.
READER = """
import sys, time
from llmhyper.store.weight_store import WeightStore
s = WeightStore(sys.argv[1], readonly=True)
v = s.view()
print("ready", v.version, flush=True)
time.sleep(600)
"""


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _spawn(script: str, path: Path) -> subprocess.Popen:
    # Unbuffered bytes: readline() must not swallow lines that communicate() should see later.
    return subprocess.Popen([sys.executable, "-c", script, str(path)], env=_env(), bufsize=0,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _line(p: subprocess.Popen) -> list[str]:
    return p.stdout.readline().decode().split()


def assert_complete(store: WeightStore) -> str:
    """The current version is whole: shape, every weight, ids, manifest and records agree."""
    v = store.view()
    k = int(v.version[1:])
    assert v.theta.shape == (rows(k), F), (v.version, v.theta.shape)
    assert np.all(v.theta == k), f"{v.version} holds weights of another version"
    assert v.ad_ids[0] == f"{k}_0" and v.ad_ids[-1] == f"{k}_{rows(k) - 1}"
    assert v.manifest["seq"] == k
    assert store.ad_record(v.version, f"{k}_100") == {"seq": k}
    return v.version


def _kill_publisher_loop(tmp_path: Path, iterations: int, seed: int) -> None:
    path = tmp_path / "w.lmdb"
    rng = random.Random(seed)
    with WeightStore(path, map_size=64 << 10) as w:  # tiny map: kills also land in growth
        w.publish([f"1_{i}" for i in range(rows(1))], np.full((rows(1), F), 1, np.float32),
                  [("bias", "")] + [(f"f{j}", "") for j in range(1, F)], {"seq": 1},
                  {f"1_{i}": {"seq": 1} for i in range(0, rows(1), 100)})
    reader = WeightStore(path, readonly=True)  # stays open, like a server, across all kills
    mid_publish = 0
    last_done = 1
    hidden = False  # the last kill may have committed a publish that this reader cannot see yet
    try:
        for _ in range(iterations):
            p = _spawn(PUBLISHER, path)
            assert _line(p) == ["ready"], p.stderr.read()
            time.sleep(rng.uniform(0.0, 0.12))
            p.send_signal(signal.SIGKILL)
            out, err = p.communicate(timeout=30)
            assert p.returncode == -signal.SIGKILL, err
            lines = out.decode().split()
            dones = [int(x[1:]) for x in lines if x.startswith("v")]
            if len(lines) >= 2 and lines[-2] == "begin":
                mid_publish += 1
            if dones:
                last_done = max(dones)
            cur = assert_complete(reader)
            # every publish reported done is durable; at most the killed one may have committed.
            # LMDB: a writer killed after writing its meta page but before updating the lock
            # file's last txnid has committed, yet a reader that keeps the lock file open sees
            # it only once the next writer takes the lock (the dead owner's recovery); the next
            # publisher's open does that, so a hidden publish shows up one kill later.
            seen = int(cur[1:])
            assert last_done <= seen <= last_done + 1 + hidden, (cur, last_done, hidden)
            hidden = len(lines) >= 2 and lines[-2] == "begin" and seen < int(lines[-1])
            last_done = seen
    finally:
        reader.close()
    assert mid_publish >= iterations // 4, f"only {mid_publish} kills landed inside publish()"
    with WeightStore(path) as w:  # the store is still writable after all of it
        v = w.publish(["x"], np.ones((1, F), np.float32), [("bias", "")] + [(f"f{j}", "") for j in range(1, F)])
        assert w.view(v).theta.shape == (1, F)


def test_publisher_killed_at_random_points(tmp_path: Path) -> None:
    _kill_publisher_loop(tmp_path, iterations=20, seed=1)


def _publish_cycles(w: WeightStore, n: int, M: int) -> None:
    for _ in range(n):
        cur = w.current_version()
        k = int(cur[1:]) + 1 if cur else 1
        w.publish([f"a{i}" for i in range(M)], np.full((M, F), k, np.float32),
                  [("bias", "")] + [(f"f{j}", "") for j in range(1, F)])
        w.prune(2)


def test_killed_readers_are_cleared_and_file_growth_stays_bounded(tmp_path: Path) -> None:
    path = tmp_path / "w.lmdb"
    M = 400
    vbytes = M * F * 4  # 100 KiB per version
    w = WeightStore(path, durable=False)
    _publish_cycles(w, 6, M)
    readers = [_spawn(READER, path) for _ in range(4)]
    try:
        for r in readers:
            line = _line(r)
            assert line and line[0] == "ready", r.stderr.read()
        pids = {r.pid for r in readers}
        assert pids <= set(w.reader_pids())

        # Control: a live (stopped) reader pins its snapshot, so nothing freed can be reused.
        stopped, killed = readers[0], readers[1:]
        stopped.send_signal(signal.SIGSTOP)
        for r in killed:
            r.send_signal(signal.SIGKILL)
            r.wait(10)
        base = w.stats()["file_bytes"]
        _publish_cycles(w, 20, M)
        live = set(w.reader_pids())
        assert not ({r.pid for r in killed} & live), "stale reader slots were not cleared"
        assert stopped.pid in live
        pinned_growth = w.stats()["file_bytes"] - base
        assert pinned_growth >= 15 * vbytes, pinned_growth

        # Killed while pinning: its slot is cleared on the next publish and reuse resumes.
        stopped.send_signal(signal.SIGKILL)
        stopped.wait(10)
        _publish_cycles(w, 3, M)  # let the free list catch up
        settled = w.stats()["file_bytes"]
        assert stopped.pid not in w.reader_pids()
        _publish_cycles(w, 20, M)
        assert w.stats()["file_bytes"] - settled <= 2 * vbytes, (settled, w.stats()["file_bytes"])
        assert w.view().theta[0, 0] == int(w.current_version()[1:])
    finally:
        for r in readers:
            if r.poll() is None:
                r.kill()
                r.wait(10)
            r.stdout.close()
            r.stderr.close()
        w.close()


# Writes into a store whose file may not grow (RLIMIT_FSIZE, like a full disk): the publish
# must fail with PublishError and leave the current version serving in this process.
DISK_FULL = """
import os, resource, signal, sys, numpy as np
from llmhyper.store.weight_store import PublishError, WeightStore
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
s = WeightStore(sys.argv[1])
v1 = s.current_version()
size = os.path.getsize(os.path.join(s.path, "data.mdb"))
resource.setrlimit(resource.RLIMIT_FSIZE, (size + (32 << 10), resource.RLIM_INFINITY))
try:
    s.publish([f"b{i}" for i in range(2000)], np.zeros((2000, 64), np.float32),
              [("bias", "")] + [(f"f{j}", "") for j in range(1, 64)])
    print("PUBLISHED")
except PublishError as e:
    print("ERROR", e)
print("CURRENT", s.current_version(), s.current_version() == v1, float(s.view().theta[0, 0]))
"""


def test_publish_on_a_full_disk_fails_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "w.lmdb"
    with WeightStore(path) as w:
        v1 = w.publish(["a", "b"], np.full((2, F), 3, np.float32),
                       [("bias", "")] + [(f"f{j}", "") for j in range(1, F)])
    p = subprocess.run([sys.executable, "-c", DISK_FULL, str(path)], env=_env(),
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith("ERROR") and "Input/output error" in lines[0], p.stdout
    assert "nothing was changed" in lines[0]
    assert lines[1] == f"CURRENT {v1} True 3.0", p.stdout
    with WeightStore(path, readonly=True) as r:
        assert r.current_version() == v1 and np.all(r.view().theta == 3)
