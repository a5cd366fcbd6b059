"""One load-generator process: its own gRPC channels, HDR histograms.

Open loop: sender threads (up to ``max_inflight``) take the owned slots in order, sleep
until each is due and send it, so a slow answer never delays the next send. Latency
is measured from the *scheduled* time, so a server (or a generator) that falls behind shows
up in the latency instead of silently lowering the rate (no coordinated omission).
``service`` is measured from the actual send, ``lag`` is how late the send was.
Closed loop: each caller (a thread) sends its next call when the previous one answered.
Blocking calls from threads are used because they were the cheapest client path measured
here: grpc.aio's timers woke up to 1 ms late, and a ``.future()`` call with a completion
callback added ~0.5 ms per call (a hop through grpc's polling thread).

The process reports one result dict (see :func:`run_worker`) on the results queue.
"""
from __future__ import annotations

import itertools
import os
import threading
import time
import traceback
from collections import Counter, defaultdict
from typing import Any

__all__ = ["MAX_MESSAGES", "run_worker"]

MAX_MESSAGES = 5  # distinct error messages kept per status code
_ANNOUNCED = [False]  # whether this process has told the parent it is ready


class Recorder:
    """Histograms and counters of the measured calls of one process."""

    def __init__(self, progress: Any, proc: int, open_loop: bool) -> None:
        from llmhyper.loadtest import histogram as hist

        self._hist = hist
        self.latency, self.service, self.lag, self.latency_ok = hist.new(), hist.new(), hist.new(), hist.new()
        self.codes: Counter = Counter()
        self.messages: dict[str, Counter] = defaultdict(Counter)
        self.first_sched = float("inf")
        self.last_done = float("-inf")
        self.n = 0
        self._progress, self._proc, self._open = progress, proc, open_loop

    def record(self, code: str, message: str, t_sched: float, t_sent: float, t_done: float) -> None:
        """One answered call; times in seconds on the process's test clock."""
        h = self._hist
        h.record_s(self.latency, t_done - t_sched)
        h.record_s(self.service, t_done - t_sent)
        if self._open:  # a closed-loop call is sent when scheduled: no lag to record
            h.record_s(self.lag, t_sent - t_sched)
        self.codes[code] += 1
        if code == "OK":
            h.record_s(self.latency_ok, t_done - t_sched)
        else:
            msgs = self.messages[code]
            if message in msgs or len(msgs) < MAX_MESSAGES:
                msgs[message] += 1
            else:
                msgs["(other messages)"] += 1
        self.first_sched = min(self.first_sched, t_sched)
        self.last_done = max(self.last_done, t_done)
        self.n += 1
        self._progress[self._proc] = self.n

    def result(self) -> dict[str, Any]:
        enc = self._hist.encode
        return {
            "calls": self.n, "codes": dict(self.codes),
            "messages": {c: dict(m) for c, m in self.messages.items()},
            "hist": {"latency": enc(self.latency), "service": enc(self.service), "lag": enc(self.lag),
                     "latency_ok": enc(self.latency_ok)},
            "first_sched_s": None if self.n == 0 else self.first_sched,
            "last_done_s": None if self.n == 0 else self.last_done,
        }


def _channels(spec: Any) -> list[Any]:
    import grpc

    from llmhyper.auth import ClientTLS

    opts: list[tuple[str, Any]] = [("grpc.use_local_subchannel_pool", 1),  # own TCP connection per channel
                                   ("grpc.max_receive_message_length", 256 * 1024 * 1024),
                                   ("grpc.max_send_message_length", -1)]
    out = []
    for _ in range(spec.connections):
        if spec.tls:
            tls = ClientTLS(spec.tls_ca, spec.tls_cert, spec.tls_key, spec.tls_server_name)
            out.append(grpc.secure_channel(spec.target, tls.credentials(), options=opts + tls.channel_options()))
        else:
            out.append(grpc.insecure_channel(spec.target, options=opts))
    return out


def _run(spec: Any, users: Any, proc: int, ready: Any, go: Any, start_at: Any, progress: Any) -> dict[str, Any]:
    import grpc

    from llmhyper._proto import ranker_pb2_grpc as pb_grpc
    from llmhyper.auth import bearer_metadata
    from llmhyper.loadtest import schedule
    from llmhyper.loadtest.calls import RequestFactory

    channels = _channels(spec)
    try:
        for ch in channels:
            grpc.channel_ready_future(ch).result(timeout=min(30.0, spec.timeout + 5.0))
    except grpc.FutureTimeoutError:
        raise ConnectionError(f"cannot connect to {spec.target}") from None
    methods = [getattr(pb_grpc.RankerStub(ch), spec.method) for ch in channels]
    md = bearer_metadata(spec.token) if spec.token else None
    request = RequestFactory(spec, users)
    rec = Recorder(progress, proc, spec.open_loop)
    clock = time.perf_counter
    P = spec.procs

    ready.put(("ready", proc, ""))
    _ANNOUNCED[0] = True
    go.wait()
    # The parent fixed one wall-clock start for every process; map it onto this clock.
    t0 = clock() + (start_at.value - time.time())
    if t0 > clock():
        time.sleep(t0 - clock())
    if spec.open_loop:
        warm = _open_loop(spec, proc, P, t0, methods, request, md, rec, schedule)
    else:
        warm = _closed_loop(spec, proc, P, t0, methods, request, md, rec, schedule)
    for ch in channels:
        ch.close()
    out = rec.result()
    out["warmup_calls"] = warm
    return out


def _open_loop(spec: Any, proc: int, P: int, t0: float, methods: list[Any], request: Any, md: Any,
               rec: Recorder, schedule: Any) -> int:
    """Send each owned slot at its time. ``max_inflight`` sender threads take the slots in
    order; each sleeps until its slot is due and makes a blocking call. Should every sender be
    busy (a stalled server), the next slot goes out late and its latency, counted from the
    schedule, says so. Returns the number of warm-up calls."""
    import grpc

    clock = time.perf_counter
    W = round(spec.rate * spec.warmup)
    N = spec.calls if spec.calls is not None else schedule.open_loop_total(spec.rate, spec.seconds)
    slots = iter(schedule.open_loop_slots(0, W + N, proc, P))
    lock = threading.Lock()
    n_warm = [0]

    def sender() -> None:
        while True:
            with lock:
                k = next(slots, None)
            if k is None:
                return
            t_sched = t0 + k / spec.rate
            delay = t_sched - clock()
            if delay > 0:
                time.sleep(delay)
            measured = k >= W
            m = k - W if measured else k
            code, msg = "OK", ""
            t_sent = clock()
            try:
                methods[m % len(methods)](request(m), timeout=spec.timeout, metadata=md)
            except grpc.RpcError as e:
                code, msg = e.code().name, e.details() or ""
            t_done = clock()
            with lock:
                if measured:
                    rec.record(code, msg, t_sched - t0, t_sent - t0, t_done - t0)
                else:
                    n_warm[0] += 1

    _threads(sender, spec.max_inflight)
    return n_warm[0]


def _threads(target: Any, n: int) -> None:
    threads = [threading.Thread(target=target, name=f"loadtest-caller-{i}", daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _closed_loop(spec: Any, proc: int, P: int, t0: float, methods: list[Any], request: Any, md: Any,
                 rec: Recorder, schedule: Any) -> int:
    """``callers`` threads, each making blocking calls back to back. Returns warm-up calls."""
    import grpc

    clock = time.perf_counter
    mine = schedule.callers(spec.concurrency, P)
    t_measure = t0 + spec.warmup
    t_end = None if spec.seconds is None else t_measure + spec.seconds
    if spec.calls is not None:
        numbers = iter(schedule.closed_loop_block(spec.calls, mine, proc))
    else:
        numbers = (proc + P * j for j in itertools.count())
    lock = threading.Lock()
    warm = itertools.count()
    n_warm = [0]

    def caller() -> None:
        while True:
            now = clock()
            measured = now >= t_measure
            if measured:
                if t_end is not None and now >= t_end:
                    return
                with lock:
                    m = next(numbers, None)
                if m is None:
                    return
            else:
                m = next(warm)
            code, msg = "OK", ""
            try:
                methods[m % len(methods)](request(m), timeout=spec.timeout, metadata=md)
            except grpc.RpcError as e:
                code, msg = e.code().name, e.details() or ""
            t_done = clock()
            with lock:
                if measured:
                    rec.record(code, msg, now - t0, now - t0, t_done - t0)
                else:
                    n_warm[0] += 1

    _threads(caller, mine[proc])
    return n_warm[0]


def _tight_timers() -> None:
    """Linux: timer slack 1 us instead of 50 us for this thread and the threads it starts, so
    a sender wakes closer to its slot (halved the median send lag here). Elsewhere: nothing."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(29, 1000, 0, 0, 0)  # PR_SET_TIMERSLACK, in ns
    except (OSError, AttributeError):
        pass


def run_worker(spec_json: str, users: Any, proc: int, ready: Any, go: Any, start_at: Any,
               progress: Any, results: Any) -> None:
    """Process entry point. Puts ``("ready", proc, "")`` on ``ready`` once connected (or
    ``("error", proc, message)``), waits for ``go``, runs, then puts one dict on ``results``:
    ``proc``, ``calls``, ``warmup_calls``, ``codes`` {status name: n}, ``messages``
    {status name: {message: n}}, ``hist`` (encoded HDR histograms in us: latency from the
    scheduled send, service from the actual send, lag of the send, latency of OK calls),
    ``first_sched_s`` / ``last_done_s`` (seconds after the common start), ``error``."""
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    from llmhyper.loadtest.spec import LoadSpec

    _tight_timers()
    try:
        spec = LoadSpec.model_validate_json(spec_json)
        out = _run(spec, users, proc, ready, go, start_at, progress)
        out.update(proc=proc, error=None)
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which fails the test run
        msg = f"{type(e).__name__}: {e}"
        if not isinstance(e, (ConnectionError, ValueError, OSError)):
            msg += "\n" + traceback.format_exc(limit=5)
        if not _ANNOUNCED[0]:
            ready.put(("error", proc, msg))
        out = {"proc": proc, "error": msg}
    results.put(out)
