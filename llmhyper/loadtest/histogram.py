"""HDR latency histograms (``hdrhistogram``): one layout for every process, so they merge.

Values are integer microseconds from 1 us to 1 hour, 3 significant digits (a recorded value
is off by at most 0.1%). Processes send them to the parent in HDR's compressed base64 form.
"""
from __future__ import annotations

from hdrh.histogram import HdrHistogram

__all__ = ["PERCENTILES", "encode", "merge", "new", "record_s", "summary_ms"]

LOWEST_US = 1
HIGHEST_US = 3_600_000_000
SIG_FIGS = 3
PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p99_9": 99.9}


def new() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIG_FIGS)


def record_s(h: HdrHistogram, seconds: float) -> None:
    """Record a duration given in seconds (clamped into the histogram's range)."""
    us = int(seconds * 1e6 + 0.5)
    h.record_value(min(max(us, LOWEST_US), HIGHEST_US))


def encode(h: HdrHistogram) -> str:
    return h.encode().decode("ascii")


def merge(encoded: list[str]) -> HdrHistogram:
    """One histogram holding every value of the encoded histograms."""
    out = new()
    for e in encoded:
        if e:
            out.add(HdrHistogram.decode(e.encode("ascii")))
    return out


def summary_ms(h: HdrHistogram) -> dict[str, float | int | None]:
    """count, min, mean, p50, p90, p99, p99_9, max and stddev in milliseconds (None when empty)."""
    n = h.get_total_count()
    out: dict[str, float | int | None] = {"count": int(n)}
    keys = ["min", "mean", *PERCENTILES, "max", "stddev"]
    if n == 0:
        out.update({k: None for k in keys})
        return out
    out["min"] = h.get_min_value() / 1e3
    out["mean"] = h.get_mean_value() / 1e3
    for k, p in PERCENTILES.items():
        out[k] = h.get_value_at_percentile(p) / 1e3
    out["max"] = h.get_max_value() / 1e3
    out["stddev"] = h.get_stddev() / 1e3
    return out
