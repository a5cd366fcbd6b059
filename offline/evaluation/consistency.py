"""The consistency rate (paper appendix B, eq. 5) of each LLM row of ``llmhyper evaluate``.

The protocol calls :func:`llm_row_consistency` right after it generated a variant's weights;
the polarity calls go through that variant's generator (its backend, answer cache and retry
policy, offline/llm/consistency.py). :func:`consistency_cells` formats the row's HR@5,
Coverage@5 and consistency for the Markdown report.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

__all__ = ["llm_row_consistency", "consistency_cells"]


def llm_row_consistency(gen: Any, ads: Sequence[Any], generated: Sequence[Any],
                        features: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """{"consistency": rate or None, "consistency_pairs": n, "consistency_cost": {...}} for one
    LLM variant; rate None when no ad has a rationale (reasoning off) or the generator cannot
    make calls."""
    from offline.llm.consistency import measure_consistency
    from offline.llm.retrying import RetryingLLM

    if not isinstance(gen, RetryingLLM) or not any(getattr(g, "rationale", None) for g in generated):
        return {"consistency": None, "consistency_pairs": 0}
    m = measure_consistency(gen, ads, generated, features, seed=getattr(gen, "seed", 0))
    rate = m["rate"]
    return {"consistency": rate if math.isfinite(rate) else None, "consistency_pairs": m["pairs"],
            "consistency_failed_ads": m["failed"],
            "consistency_cost": {k: m["cost"][k] for k in ("calls", "cache_hits", "invalid")}}


def _fmt(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{float(v):.3f}"


def consistency_cells(summary_row: Mapping[str, Any], info: Mapping[str, Any]) -> str:
    """``HR@5 | Cov@5 | consistency`` cells of one LLM row (seed means of the uncalibrated row)."""
    hr = (summary_row.get("hr5") or {}).get("mean")
    cov = (summary_row.get("cov5") or {}).get("mean")
    cons = info.get("consistency")
    pairs = info.get("consistency_pairs", 0)
    return f"{_fmt(hr)} | {_fmt(cov)} | {_fmt(cons)}" + (f" ({pairs} pairs)" if cons is not None else "")
