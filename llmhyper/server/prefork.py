"""``llmhyper serve --processes N``: N server processes on one port, supervised by the parent.

The parent reserves the port (a bound, non-listening SO_REUSEPORT socket, so port 0 resolves
once for all children), then starts N children as fresh ``llmhyper serve`` processes (exec, not
a bare fork: no grpc or LMDB state crosses over), each with ``--child``: it binds the same port
with SO_REUSEPORT, pins numpy/numba to one thread and opens the LMDB store read-only itself.
The kernel spreads new connections over the children.

Supervision: a child that exits while the parent is not stopping is replaced at once (its
metric files are marked dead). SIGTERM/SIGINT to the parent is forwarded to every child, which
drains like a single server (health NOT_SERVING first, then ``--grace``); the parent exits once
every child has exited, with status 0.

Metrics: the children write prometheus-client multiprocess files into a temp dir the parent
creates (``PROMETHEUS_MULTIPROC_DIR``); the parent serves their aggregate on the metrics port,
plus the store gauges it reads itself.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from typing import Callable, Sequence

log = logging.getLogger("llmhyper.server")


def reserve_port(host: str, port: int) -> socket.socket:
    """A bound (not listening) SO_REUSEPORT socket holding ``host:port``; port 0 picks one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind((host, port))
    return s


def supervise(child_argv: Callable[[int], list[str]], *, host: str, port: int, processes: int,
              store_path: str, metrics_port: int | None, metrics_host: str,
              on_started: Callable[[int, int | None], None] | None = None) -> int:
    """Run ``processes`` children of ``child_argv(port)`` until SIGTERM/SIGINT; returns 0.

    ``on_started(port, metrics_port)`` is called once the children are started.
    """
    reserved = reserve_port(host, port)
    port = reserved.getsockname()[1]
    mp_dir = tempfile.mkdtemp(prefix="llmhyper-metrics-")
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=mp_dir, NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1",
               OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        received.append(signum)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    children: list[subprocess.Popen | None] = [None] * processes
    http = None
    store = None
    restarts = 0
    try:
        def start(i: int) -> subprocess.Popen:
            return subprocess.Popen(child_argv(port), env=env, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)

        for i in range(processes):
            children[i] = start(i)
        bound_metrics = None
        if metrics_port is not None:
            from prometheus_client import CollectorRegistry
            from prometheus_client.multiprocess import MultiProcessCollector

            from llmhyper.server import metrics as m
            from llmhyper.store.weight_store import WeightStore

            store = WeightStore(store_path, readonly=True)

            def published_at() -> float | None:
                cur = store.current_version()
                if cur is None:
                    return None
                for v in store.list_versions():
                    if v.get("version") == cur:
                        return float(v.get("created_at") or 0.0)
                return None

            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=mp_dir)
            registry.register(m.StoreCollector(lambda: m.store_stats(store), published_at))
            http = m.start_metrics_http(metrics_port, metrics_host, registry)
            bound_metrics = int(http.server_port)
        if on_started is not None:
            on_started(port, bound_metrics)
        from prometheus_client.multiprocess import mark_process_dead

        while not stop.wait(0.05):
            for i, p in enumerate(children):
                if p is not None and p.poll() is not None:
                    mark_process_dead(p.pid, mp_dir)
                    if stop.is_set():
                        break
                    restarts += 1
                    log.warning("server process %d (pid %d) exited with %s; starting a new one",
                                i, p.pid, p.returncode)
                    children[i] = start(i)
        log.info("signal %s: forwarding SIGTERM to %d server processes", received[0] if received else "?",
                 sum(1 for p in children if p is not None and p.poll() is None))
        for p in children:
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in children:
            if p is not None:
                p.wait()
                mark_process_dead(p.pid, mp_dir)
        log.info("all server processes exited (%d restarted while serving)", restarts)
        return 0
    finally:
        for p in children:
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        for sig, h in previous.items():
            signal.signal(sig, h)
        if http is not None:
            http.shutdown()
            http.server_close()
        if store is not None:
            store.close()
        reserved.close()
        shutil.rmtree(mp_dir, ignore_errors=True)


def child_args(argv: Sequence[str]) -> Callable[[int], list[str]]:
    """Builder of a child's command line: this ``serve`` invocation, one process, the given port."""
    base = [sys.executable, "-m", "llmhyper", *argv]

    def build(port: int) -> list[str]:
        return [*base, "--processes", "1", "--port", str(port), "--child"]

    return build


def pid_cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` in seconds (from /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

