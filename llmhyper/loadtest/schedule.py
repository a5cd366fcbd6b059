"""Which calls each load-generator process makes, and when.

Calls are numbered over the whole test. Open loop: global slot ``k`` is due ``k / rate`` seconds
after the start, and process ``p`` of ``P`` owns the slots ``k = p, p + P, p + 2P, ...``, so
the processes together send one evenly spaced stream at ``rate``. The first ``W`` slots
(``W = round(rate * warmup)``) are the warm-up; measured call ``m`` is slot ``W + m``.
Closed loop: process ``p`` owns a contiguous block of the measured call numbers, sized in
proportion to its share of the callers.
"""
from __future__ import annotations

__all__ = ["callers", "closed_loop_block", "open_loop_slots", "open_loop_total", "split"]


def split(total: int, parts: int, weights: list[int] | None = None) -> list[int]:
    """``total`` split into ``parts`` integers that add up to it (proportional to ``weights``
    when given, else as equal as possible; remainders go to the first parts)."""
    if parts < 1:
        raise ValueError("parts must be >= 1")
    w = weights or [1] * parts
    if len(w) != parts or any(x < 0 for x in w) or sum(w) == 0:
        raise ValueError(f"bad weights {w!r} for {parts} parts")
    base = [total * x // sum(w) for x in w]
    rest = total - sum(base)
    for i in range(rest):
        base[i % parts] += 1
    return base


def callers(concurrency: int, procs: int) -> list[int]:
    """Closed-loop callers per process (C split over P, every process at least one)."""
    return split(concurrency, procs)


def open_loop_total(rate: float, seconds: float) -> int:
    """Slots in ``seconds`` at ``rate`` calls/s (at least 1)."""
    return max(1, round(rate * seconds))


def open_loop_slots(first: int, end: int, proc: int, procs: int) -> range:
    """Process ``proc``'s global slots k in ``[first, end)``, i.e. those with ``k % procs == proc``."""
    start = first + ((proc - first) % procs)
    return range(start, end, procs)


def closed_loop_block(calls: int, per_proc_callers: list[int], proc: int) -> range:
    """Process ``proc``'s measured call numbers in a closed-loop test of ``calls`` calls."""
    sizes = split(calls, len(per_proc_callers), per_proc_callers)
    lo = sum(sizes[:proc])
    return range(lo, lo + sizes[proc])
