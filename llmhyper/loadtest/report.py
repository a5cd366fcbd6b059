"""Merge the processes' results into one report: a JSON-ready dict, a PNG and a table.

Report keys (``schema`` "llmhyper.loadtest/1"): ``target``, ``method``, ``mode`` ("open" |
"closed"), ``spec`` (every option), ``users`` {source, count}, ``started_at`` (unix s),
``elapsed_s`` (first measured scheduled send to last answer; open loop at least calls / rate), ``calls`` (measured), ``ok``,
``errors``, ``status_codes`` {name: n}, ``error_messages`` {name: {message: n}},
``target_rate_per_s`` (open loop, else null), ``throughput_per_s`` (calls / elapsed_s),
``rate_ratio`` (throughput / target rate, open loop), ``users_per_s`` (throughput x batch),
``latency_ms`` (every answered call, from its scheduled send; count, min, mean, p50, p90, p99,
p99_9, max, stddev), ``latency_ok_ms`` (OK calls only), ``service_ms`` (from the actual send),
``send_lag_ms`` (actual minus scheduled send), ``warmup`` {seconds, calls}, ``per_process``
[{proc, calls, status_codes, p50_ms, p99_ms}], ``histogram`` {unit, lowest, highest,
significant_figures, encoded} (the merged latency histogram in HDR's base64 form),
``files`` {json, png}.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from llmhyper.loadtest import histogram as hist
from llmhyper.loadtest.spec import LoadSpec
from llmhyper.loadtest.users import Users

__all__ = ["SCHEMA", "build", "plot", "write"]

SCHEMA = "llmhyper.loadtest/1"
_SECRET = {"token"}


def build(spec: LoadSpec, users: Users, results: list[dict[str, Any]], started_at: float) -> dict[str, Any]:
    """The report of one run from its per-process ``results`` (see :func:`llmhyper.loadtest.worker.run_worker`)."""
    codes: Counter = Counter()
    messages: dict[str, Counter] = {}
    for r in results:
        codes.update(r["codes"])
        for code, msgs in r["messages"].items():
            messages.setdefault(code, Counter()).update(msgs)
    merged = {k: hist.merge([r["hist"][k] for r in results]) for k in ("latency", "latency_ok", "service", "lag")}
    calls = sum(r["calls"] for r in results)
    firsts = [r["first_sched_s"] for r in results if r["first_sched_s"] is not None]
    lasts = [r["last_done_s"] for r in results if r["last_done_s"] is not None]
    elapsed = (max(lasts) - min(firsts)) if firsts else 0.0
    if spec.rate and calls:
        # N open-loop slots span N / rate seconds; without this the last slot's interval
        # would be missing and short tests would report more than the target rate.
        elapsed = max(elapsed, calls / spec.rate)
    throughput = calls / elapsed if elapsed > 0 else 0.0
    per_proc = []
    for r in results:
        h = hist.merge([r["hist"]["latency"]])
        s = hist.summary_ms(h)
        per_proc.append({"proc": r["proc"], "calls": r["calls"], "warmup_calls": r["warmup_calls"],
                         "status_codes": dict(sorted(r["codes"].items())), "p50_ms": s["p50"], "p99_ms": s["p99"]})
    spec_out = spec.model_dump()
    for k in _SECRET:
        if spec_out.get(k):
            spec_out[k] = "(set)"
    return {
        "schema": SCHEMA,
        "target": spec.target,
        "method": spec.method,
        "mode": "open" if spec.open_loop else "closed",
        "spec": spec_out,
        "users": {"source": users.source, "count": users.count, "sent_as": "features" if users.inline else "id"},
        "batch_size": spec.batch,
        "started_at": started_at,
        "elapsed_s": elapsed,
        "calls": calls,
        "ok": codes.get("OK", 0),
        "errors": calls - codes.get("OK", 0),
        "status_codes": dict(sorted(codes.items())),
        "error_messages": {c: dict(m.most_common()) for c, m in sorted(messages.items())},
        "target_rate_per_s": spec.rate,
        "throughput_per_s": throughput,
        "rate_ratio": (throughput / spec.rate) if spec.rate else None,
        "users_per_s": throughput * spec.batch,
        "latency_ms": hist.summary_ms(merged["latency"]),
        "latency_ok_ms": hist.summary_ms(merged["latency_ok"]),
        "service_ms": hist.summary_ms(merged["service"]),
        "send_lag_ms": hist.summary_ms(merged["lag"]),
        "warmup": {"seconds": spec.warmup, "calls": sum(r["warmup_calls"] for r in results)},
        "procs": spec.procs,
        "per_process": per_proc,
        "histogram": {"unit": "us", "lowest": hist.LOWEST_US, "highest": hist.HIGHEST_US,
                      "significant_figures": hist.SIG_FIGS, "encoded": hist.encode(merged["latency"])},
        "files": {},
    }


def write(report: dict[str, Any], out_dir: str | Path) -> dict[str, str | None]:
    """Write ``report.json`` and ``latency.png`` into ``out_dir``; returns their paths (``png`` None
    when matplotlib, the ``loadtest`` extra, is not installed)."""
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    json_path, png_path = d / "report.json", d / "latency.png"
    files: dict[str, str | None] = {"json": str(json_path), "png": str(png_path)}
    report["files"] = files
    try:
        plot(report, png_path)
    except ImportError:  # matplotlib is the optional `loadtest` extra
        files["png"] = None
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    return files


def plot(report: dict[str, Any], path: str | Path) -> None:
    """Latency histogram (log-spaced bins, counts) and the percentile curve, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    h = hist.merge([report["histogram"]["encoded"]])
    values, counts = [], []
    for item in h.get_recorded_iterator():
        values.append(item.value_iterated_to / 1e3)
        counts.append(item.count_at_value_iterated_to)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    title = (f"{report['method']} -> {report['target']}, {report['mode']} loop, {report['calls']} calls, "
             f"{report['throughput_per_s']:.0f}/s")
    fig.suptitle(title)
    if values:
        v = np.asarray(values)
        lo, hi = max(v.min(), 1e-3), max(v.max(), v.min() * 1.01, 1e-3 * 1.01)
        bins = np.geomspace(lo, hi, 60)
        ax1.hist(v, bins=bins, weights=np.asarray(counts, dtype=float), color="#4477aa")
        ax1.set_xscale("log")
        lat = report["latency_ms"]
        for key, style in (("p50", "-"), ("p99", "--"), ("p99_9", ":")):
            if lat.get(key):
                ax1.axvline(lat[key], color="#cc3311", ls=style, label=f"{key.replace('_', '.')} {lat[key]:.3g} ms")
        ax1.legend(fontsize=8)
        ps = np.array([50, 75, 90, 95, 99, 99.5, 99.9, 99.95, 99.99, 100.0])
        lv = [h.get_value_at_percentile(p) / 1e3 for p in ps]
        xs = 1.0 / np.maximum(1.0 - ps / 100.0, 1e-5)
        ax2.plot(xs, lv, marker="o", color="#4477aa")
        ax2.set_xscale("log")
        ax2.set_xticks(xs)
        ax2.set_xticklabels([f"{p:g}" for p in ps], rotation=45, fontsize=7)
    else:
        ax1.text(0.5, 0.5, "no calls answered", ha="center", transform=ax1.transAxes)
    ax1.set_xlabel("latency (ms, from scheduled send)")
    ax1.set_ylabel("calls")
    ax2.set_xlabel("percentile")
    ax2.set_ylabel("latency (ms)")
    ax2.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
