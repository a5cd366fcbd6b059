"""Print a pytest-benchmark JSON file as a table: timings, extra info (ratios) and budgets.

Usage: python -m benchmarks.report benchmarks/results.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:10.1f}"


def render(data: dict) -> str:
    """The report text for one pytest-benchmark JSON document."""
    lines = []
    m = data.get("machine_info", {})
    lines.append(f"machine: {m.get('node', '?')} {m.get('processor', '')} cpus={m.get('cpu', {}).get('count', '?')} "
                 f"python={m.get('python_version', '?')}  run: {data.get('datetime', '?')}")
    lines.append("")
    lines.append(f"{'benchmark':<58} {'min us':>10} {'median us':>10} {'rounds':>7}  extra")
    for b in data.get("benchmarks", []):
        st = b["stats"]
        extra = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in sorted(b.get("extra_info", {}).items()))
        lines.append(f"{b['name'][:58]:<58} {_us(st['min'])} {_us(st['median'])} {st['rounds']:>7}  {extra}")
    budgets = data.get("budgets") or []
    if budgets:
        lines.append("")
        lines.append("budgets (ratios measured in the same run):")
        for r in budgets:
            budget = "-" if r.get("budget") is None else f"{r['budget']:.2f}"
            lines.append(f"  {r['suite']:<8} {r['case']:<40} ratio={r['ratio']:.3f} budget={budget} "
                         f"{'ok' if r.get('ok') else 'FAIL'}  ({r['measured']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m benchmarks.report RESULTS.json", file=sys.stderr)
        return 2
    path = Path(args[0])
    if not path.is_file():
        print(f"benchmarks.report: no such file: {path}", file=sys.stderr)
        return 2
    print(render(json.loads(path.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
