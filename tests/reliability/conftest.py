"""Fixtures of the reliability suite (issue 5): real ``llmhyper serve`` processes, the server
process's RSS, an out-of-process load generator, and a recorder for each row's numbers.

The shared fixtures of tests/conftest.py (``world``, ``store_path``, ``make_server``,
``tls_files``) are used as they are. Numbers a row measures are passed to ``record``: they go
into the test's junit ``user_properties`` and, when ``LLMHYPER_RELIABILITY_OUT`` names a
directory, into ``<dir>/<row>.json`` (RELIABILITY.md is written from those files).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.helpers import REPO, cli_env  # tests/conftest.py (tests/ is on sys.path; this dir is a package)

LOADGEN = Path(__file__).with_name("loadgen.py")


def rss_kib(pid: int) -> int:
    """Resident set size of process ``pid`` in KiB (VmRSS of /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass
class ServeProc:
    """A running ``llmhyper serve`` subprocess."""

    proc: subprocess.Popen
    port: int
    argv: list[str]

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_kib(self) -> int:
        return rss_kib(self.proc.pid)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, wait, SIGKILL if it did not exit; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def start_serve(store: str | os.PathLike, *extra: str, wait_serving: bool = True, token: str | None = None,
                tls=None) -> ServeProc:
    """Start ``python -m llmhyper serve --store STORE --port 0 EXTRA...`` and wait for SERVING."""
    argv = [sys.executable, "-m", "llmhyper", "serve", "--store", str(store), "--port", "0", *extra]
    proc = subprocess.Popen(argv, cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
    if not m:
        proc.kill()
        raise AssertionError(f"serve did not start: {line!r} {proc.stderr.read()[-2000:]}")
    sp = ServeProc(proc, int(m.group(1)), argv)
    if wait_serving:
        from llmhyper.client import RankerClient

        target = f"localhost:{sp.port}" if tls is not None else sp.target
        with RankerClient(target, token=token, tls=tls, timeout=5) as c:
            c.wait_until_serving(timeout=60)
    return sp


@pytest.fixture
def serve() -> Iterator[Callable[..., ServeProc]]:
    """Factory ``serve(store, *flags, ...) -> ServeProc``; every process is stopped after the test."""
    procs: list[ServeProc] = []

    def factory(store, *extra: str, **kw) -> ServeProc:
        sp = start_serve(store, *extra, **kw)
        procs.append(sp)
        return sp

    yield factory
    for sp in procs:
        if sp.proc.poll() is None:
            sp.proc.kill()
            sp.proc.wait(10)
        for f in (sp.proc.stdout, sp.proc.stderr):
            if f is not None:
                f.close()


def run_loadgen(target: str, out: Path, *, clients: int, seconds: float, wait: bool = True,
                **opts: object) -> subprocess.Popen | dict:
    """Run tests/reliability/loadgen.py in its own process; returns its JSON result (or the
    Popen when ``wait=False``). ``opts`` become ``--name value`` flags (``pause_ms=1``)."""
    argv = [sys.executable, str(LOADGEN), "--target", target, "--clients", str(clients), "--seconds", str(seconds),
            "--out", str(out)]
    for k, v in opts.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    p = subprocess.Popen(argv, cwd=REPO, env=cli_env())
    if not wait:
        return p
    assert p.wait(timeout=seconds + 60) == 0, f"loadgen failed: {argv}"
    return json.loads(out.read_text())


def loadgen_result(p: subprocess.Popen, out: Path, timeout: float = 90.0) -> dict:
    assert p.wait(timeout=timeout) == 0, "loadgen failed"
    return json.loads(out.read_text())


@pytest.fixture
def record(request: pytest.FixtureRequest) -> Callable[..., dict]:
    """``record(row, **numbers)``: keep a row's measured numbers (junit property + optional JSON file)."""
    store: dict = {}

    def rec(row: str, **numbers: object) -> dict:
        store.setdefault(row, {}).update(numbers)
        request.node.user_properties.append((row, json.dumps(numbers, default=str)))
        out = os.environ.get("LLMHYPER_RELIABILITY_OUT")
        if out:
            d = Path(out)
            d.mkdir(parents=True, exist_ok=True)
            f = d / f"{row}.json"
            old = json.loads(f.read_text()) if f.exists() else {}
            old.update({**numbers, "test": request.node.nodeid, "recorded_at": time.time()})
            f.write_text(json.dumps(old, indent=2, default=str))
        print(f"[{row}] " + json.dumps(numbers, default=str))
        return store[row]

    return rec
