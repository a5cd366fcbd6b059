"""Consistency rate (paper appendix B, eq. 5): do the written rationales agree with the weights?

A judge call reads only the rationale texts of one ad (never the weights) and maps each to a
polarity: +1 (users high in the feature are more drawn to the ad), 0 (no relation), -1 (less
drawn). The weight's sign is +1 above ``neutral_band``, -1 below ``-neutral_band``, 0 in
between (band 0 by default: the paper compares against a threshold of 0). The rate is the share
of (ad, feature) pairs with a rationale whose two signs agree.

Polarity calls go through the generator's :class:`~offline.llm.retrying.RetryingLLM` (same
answer cache, retry budget and quota stop as the weights). A prompt carries the data block
``polarity_request`` (the fake server in tests/fakes answers it by that marker).
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from offline.data.cache import content_hash
from offline.llm.cache import ad_content_hash
from offline.llm.judge import JUDGE_SYSTEM
from offline.llm.parse import ParseError, loads_strict
from offline.llm.prompts import _ad_data, clean_text, data_block
from offline.llm.retrying import CallFailed, new_cost

if TYPE_CHECKING:  # pragma: no cover
    from offline.llm.retrying import RetryingLLM

POLARITY_VERSION = "llmhyper-polarity-v1"

__all__ = ["weight_sign", "consistency_rate", "build_polarity_prompt", "parse_polarity", "measure_consistency"]


def weight_sign(w: float, neutral_band: float = 0.0) -> int:
    """+1, 0 or -1: the sign of a weight with a dead band of half-width ``neutral_band``."""
    if w > neutral_band:
        return 1
    if w < -neutral_band:
        return -1
    return 0


def consistency_rate(weights: Sequence[Mapping[str, float]], polarities: Sequence[Mapping[str, int]],
                     neutral_band: float = 0.0) -> tuple[float, int]:
    """(share of agreeing pairs, number of pairs) over ads i and the features of ``polarities[i]``
    (eq. 5). NaN when there is no pair."""
    agree = total = 0
    for w, pol in zip(weights, polarities):
        for k, s in pol.items():
            if k not in w or not math.isfinite(float(w[k])):
                continue
            total += 1
            agree += int(weight_sign(float(w[k]), neutral_band) == int(s))
    return (agree / total if total else float("nan")), total


def build_polarity_prompt(ad: Any, rationale: Mapping[str, str]) -> tuple[str, str, dict, tuple[str, ...]]:
    """(system, user, schema, keys): map each rationale text to a polarity -1/0/+1."""
    keys = tuple(rationale)
    schema = {"type": "object",
              "properties": {"polarity": {"type": "object",
                                          "properties": {k: {"type": "integer", "enum": [-1, 0, 1]} for k in keys},
                                          "required": list(keys), "additionalProperties": False}},
              "required": ["polarity"], "additionalProperties": False}
    user = "\n\n".join([
        data_block("polarity_request", {"task": "rationale_polarity", "version": POLARITY_VERSION}),
        "## Ad\n", data_block("target_ad", _ad_data(ad, True, True)),
        "## Rationales\nFor each user feature, a sentence about how users high in it relate to the ad:",
        data_block("rationales", [{"name": k, "rationale": clean_text(rationale[k], 400)} for k in keys]),
        "## Task\nFor each rationale say which direction it argues: 1 if it says users high in the feature are "
        "more likely to click the ad, -1 if less likely, 0 if it says there is no real relation. Judge the "
        "text only.",
        "## Output\nReturn exactly one JSON object {\"polarity\": {feature name: -1, 0 or 1}} covering "
        f"exactly these names and nothing else: {json.dumps(list(keys), ensure_ascii=False)}",
    ])
    return JUDGE_SYSTEM, user, schema, keys


def parse_polarity(text: str, keys: Sequence[str]) -> dict[str, int]:
    """Validate a polarity answer: exactly ``keys``, each -1, 0 or 1 (integers). ParseError otherwise."""
    obj = loads_strict(text)
    if not isinstance(obj, dict) or set(obj) != {"polarity"} or not isinstance(obj["polarity"], dict):
        raise ParseError("not_object", 'polarity answer must be exactly {"polarity": {feature: sign}}')
    p = obj["polarity"]
    if set(p) != set(keys):
        raise ParseError("missing_keys" if set(keys) - set(p) else "extra_keys",
                         f"polarity keys {sorted(p)[:10]} differ from {list(keys)[:10]}")
    out = {}
    for k in keys:
        v = p[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v not in (-1, 0, 1):
            raise ParseError("not_number", f"polarity of {k!r} is {str(v)[:20]!r}, not -1, 0 or 1")
        out[k] = int(v)
    return out


def measure_consistency(llm: "RetryingLLM", ads: Sequence[Any], generated: Sequence[Any],
                        features: Sequence[tuple[str, str]], neutral_band: float = 0.0,
                        seed: int = 0) -> dict[str, Any]:
    """Consistency rate of generated results (``Generated`` with ``rationale`` and ``theta``):
    one polarity call per ad that has rationales (``cost`` of those calls in the result).
    Returns {"rate", "pairs", "ads", "failed", "cost"}; rate NaN without any rationale."""
    names = [n for n, _ in features]
    cost = new_cost()
    weights, pols = [], []
    failed = 0
    for ad, g in zip(ads, generated):
        rat = {k: v for k, v in (g.rationale or {}).items() if k in names and v}
        if not rat or not np.all(np.isfinite(g.theta)):
            continue
        system, user, schema, keys = build_polarity_prompt(ad, rat)
        key = content_hash(POLARITY_VERSION, ad_content_hash(ad), llm.backend.fingerprint(), user)
        def parse(t: str, ks: tuple[str, ...] = keys) -> dict[str, int]:
            return parse_polarity(t, ks)

        try:
            pol = llm.ask(system, user, schema, parse, key, seed,
                          {"kind": "polarity", "ad_id": str(getattr(ad, "ad_id", ""))}, cost)
        except CallFailed:
            failed += 1
            continue
        weights.append({n: float(g.theta[i]) for i, n in enumerate(names)})
        pols.append(pol)
    rate, pairs = consistency_rate(weights, pols, neutral_band)
    return {"rate": rate, "pairs": pairs, "ads": len(pols), "failed": failed, "cost": cost}
