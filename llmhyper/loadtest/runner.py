"""Start the load-generator processes, release them together, collect their results.

Processes are started with ``spawn`` (no gRPC state crosses a fork). Each connects its own
channels and reports ready; the parent then fixes one wall-clock start a moment ahead, so
process start-up and connection set-up never fall inside the measured time.
"""
from __future__ import annotations

import multiprocessing as mp
import queue
import time
from typing import Any

from llmhyper.loadtest import schedule
from llmhyper.loadtest.spec import LoadSpec
from llmhyper.loadtest.users import Users

__all__ = ["LoadError", "expected_calls", "run"]

READY_TIMEOUT_S = 120.0  # spawn + imports + connect, on a loaded machine
START_DELAY_S = 0.25


class LoadError(RuntimeError):
    """A load-generator process could not connect or failed; the message says which and why."""


def expected_calls(spec: LoadSpec) -> int | None:
    """Measured calls the test will make (None for a closed loop bounded by time)."""
    if spec.calls is not None:
        return spec.calls
    if spec.rate is not None and spec.seconds is not None:
        return schedule.open_loop_total(spec.rate, spec.seconds)
    return None


def run(spec: LoadSpec, users: Users, *, show_progress: bool | None = None) -> tuple[list[dict[str, Any]], float]:
    """Run the test; returns (one result dict per process, ordered by process; the start's wall time).

    ``show_progress``: tqdm bar on stderr (None: only when stderr is a terminal).
    Raises LoadError when a process fails to start, connect or finish.
    """
    from tqdm import tqdm

    from llmhyper.loadtest.worker import run_worker

    ctx = mp.get_context("spawn")
    ready, results = ctx.Queue(), ctx.Queue()
    go = ctx.Event()
    start_at = ctx.RawValue("d", 0.0)
    progress = ctx.RawArray("q", spec.procs)
    spec_json = spec.model_dump_json()
    procs = [ctx.Process(target=run_worker, name=f"loadtest-{p}", daemon=True,
                         args=(spec_json, users, p, ready, go, start_at, progress, results))
             for p in range(spec.procs)]
    for pr in procs:
        pr.start()
    try:
        _wait_ready(procs, ready)
        start_at.value = time.time() + START_DELAY_S
        go.set()
        out = _collect(spec, procs, results, progress, tqdm, show_progress)
    finally:
        for pr in procs:
            pr.join(timeout=5)
            if pr.is_alive():
                pr.terminate()
                pr.join(timeout=5)
    return out, start_at.value


def _wait_ready(procs: list[Any], ready: Any) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    n = 0
    while n < len(procs):
        try:
            kind, p, msg = ready.get(timeout=0.5)
        except queue.Empty:
            dead = [pr.name for pr in procs if pr.exitcode is not None]
            if dead or time.monotonic() > deadline:
                raise LoadError(f"load-generator process(es) {dead or 'all'} did not start "
                                f"within {READY_TIMEOUT_S:.0f}s") from None
            continue
        if kind == "error":
            raise LoadError(f"load-generator process {p}: {msg}")
        n += 1


def _collect(spec: LoadSpec, procs: list[Any], results: Any, progress: Any, tqdm: Any,
             show_progress: bool | None) -> list[dict[str, Any]]:
    got: dict[int, dict[str, Any]] = {}
    total = expected_calls(spec)
    bar = tqdm(total=total, unit="call", desc="loadtest", disable=(None if show_progress is None else not show_progress),
               leave=False)
    try:
        while len(got) < len(procs):
            try:
                r = results.get(timeout=0.25)
                got[r["proc"]] = r
            except queue.Empty:
                missing = [p for p, pr in enumerate(procs) if p not in got and pr.exitcode is not None]
                if missing:
                    # a result may still sit in the pipe; give it a moment before declaring the loss
                    try:
                        r = results.get(timeout=2.0)
                        got[r["proc"]] = r
                        continue
                    except queue.Empty:
                        raise LoadError(f"load-generator process(es) {missing} exited without a result "
                                        f"(exit codes {[procs[p].exitcode for p in missing]})") from None
            bar.update(sum(progress) - bar.n)
    finally:
        bar.close()
    failed = [r for r in got.values() if r.get("error")]
    if failed:
        raise LoadError("; ".join(f"load-generator process {r['proc']}: {r['error']}" for r in failed))
    return [got[p] for p in sorted(got)]
