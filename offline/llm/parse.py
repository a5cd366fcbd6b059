"""Strict validation of LLM answers before any number can become a weight.

Accepted text: one JSON object, optionally wrapped in a single fenced block
(```json ... ``` or ``` ... ```) with nothing but whitespace around it. Everything else is
rejected with a :class:`ParseError` whose ``reason`` is a short code:

empty, prose, json_syntax, truncated, duplicate_key, non_finite (NaN/Infinity tokens),
overflow (a number that overflows to inf, e.g. 1e400), not_object, missing_keys, extra_keys,
not_number (strings, bools, null, lists), out_of_bounds (|w| > bound), bad_rationale.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

DEFAULT_BOUND = 10.0  # max |weight| on the logit scale
RATIONALE_CAP = 400  # chars kept per rationale string
ANALYSIS_CAP = 1000  # chars kept of the ad analysis


class ParseError(ValueError):
    """An LLM answer failed validation; ``reason`` is the short code, the message the details."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason


@dataclass
class ParsedAnswer:
    """A validated answer: weights in the expected key order, optional rationale/analysis."""

    weights: dict[str, float]
    rationale: dict[str, str] = field(default_factory=dict)
    analysis: str = ""


_FENCE = re.compile(r"\A\s*```[ \t]*(?:json|JSON)?[ \t]*\r?\n(.*?)\r?\n?[ \t]*```\s*\Z", re.DOTALL)


def _strip_fence(text: str) -> str:
    m = _FENCE.match(text)
    if m:
        return m.group(1)
    if "```" in text:
        raise ParseError("prose", "text around or more than one fenced block")
    return text


def _reject_constant(name: str) -> Any:
    raise ParseError("non_finite", f"non-finite number token {name}")


def _parse_float(s: str) -> float:
    v = float(s)
    if not math.isfinite(v):
        raise ParseError("overflow", f"number {s[:40]} overflows to infinity")
    return v


def _parse_int(s: str) -> int | float:
    try:
        v = int(s)
    except ValueError as e:  # more digits than Python's int-string limit
        raise ParseError("overflow", f"integer with {len(s)} digits") from e
    return v


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ParseError("duplicate_key", f"key {k!r} appears twice")
        out[k] = v
    return out


def loads_strict(text: str) -> Any:
    """Parse one JSON value with the strict rules above (fence allowed, no prose, finite numbers)."""
    if text is None or not text.strip():
        raise ParseError("empty", "empty answer")
    body = _strip_fence(text).strip()
    if not body:
        raise ParseError("empty", "empty fenced block")
    if body[0] not in "{[":
        raise ParseError("prose", f"answer does not start with JSON: {body[:60]!r}")
    try:
        return json.loads(
            body,
            parse_constant=_reject_constant,
            parse_float=_parse_float,
            parse_int=_parse_int,
            object_pairs_hook=_no_duplicates,
        )
    except ParseError:
        raise
    except json.JSONDecodeError as e:
        if e.msg.startswith("Extra data"):
            raise ParseError("prose", f"text after the JSON value at char {e.pos}") from e
        if e.pos >= len(body.rstrip()) - 1 or "Unterminated" in e.msg:
            raise ParseError("truncated", f"JSON ends early ({e.msg} at char {e.pos})") from e
        raise ParseError("json_syntax", f"{e.msg} at char {e.pos}") from e
    except RecursionError as e:
        raise ParseError("json_syntax", "nesting too deep") from e


def check_keys(obj: dict, expected: Sequence[str], missing_msg: str, extra_msg: str) -> list[str]:
    """Require exactly the ``expected`` keys in ``obj``: ParseError ``missing_keys`` ("<missing_msg>
    [names]") or ``extra_keys`` ("<extra_msg> [first 10 names, each capped at 60 chars]").
    Returns ``expected`` as a list, in order."""
    exp = list(expected)
    missing = [k for k in exp if k not in obj]
    if missing:
        raise ParseError("missing_keys", f"{missing_msg} {missing}")
    expset = set(exp)
    extra = [k for k in obj if k not in expset]
    if extra:
        raise ParseError("extra_keys", f"{extra_msg} {[k[:60] for k in extra[:10]]}")
    return exp


def check_weights(obj: Any, expected: Sequence[str], bound: float = DEFAULT_BOUND) -> dict[str, float]:
    """Validate a {feature: number} object: exactly ``expected`` keys, finite, |w| <= bound."""
    if not isinstance(obj, dict):
        raise ParseError("not_object", f"weights must be a JSON object, got {type(obj).__name__}")
    exp = check_keys(obj, expected, "missing feature(s)", "unexpected key(s)")
    out: dict[str, float] = {}
    for k in exp:
        v = obj[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ParseError("not_number", f"{k!r} is {type(v).__name__}, not a number")
        try:
            f = float(v)
        except OverflowError as e:
            raise ParseError("overflow", f"{k!r} does not fit a float") from e
        if not math.isfinite(f):
            raise ParseError("non_finite", f"{k!r} is not finite")
        if abs(f) > bound:
            raise ParseError("out_of_bounds", f"{k!r} = {f:g} exceeds the bound |w| <= {bound:g}")
        out[k] = f
    return out


def _cap(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "\u2026"


def parse_weights(
    text: str,
    expected: Sequence[str],
    *,
    bound: float = DEFAULT_BOUND,
    reasoning: bool = False,
    rationale_cap: int = RATIONALE_CAP,
) -> ParsedAnswer:
    """Validate an LLM answer for one feature batch.

    Plain form: ``{feature: number, ...}`` with exactly ``expected`` keys.
    Reasoning form (``reasoning=True``): ``{"ad_analysis": str, "rationale": {feature: str},
    "weights": {feature: number}}``; rationale keys must be a subset of ``expected``; strings are
    capped at ``rationale_cap`` characters. Raises :class:`ParseError`.
    """
    if not math.isfinite(bound) or bound <= 0:
        raise ValueError(f"bound must be a positive finite number, got {bound}")
    obj = loads_strict(text)
    if not isinstance(obj, dict):
        raise ParseError("not_object", f"answer must be a JSON object, got {type(obj).__name__}")
    if not reasoning:
        return ParsedAnswer(weights=check_weights(obj, expected, bound))
    allowed = {"ad_analysis", "rationale", "weights"}
    missing = [k for k in ("weights", "rationale") if k not in obj]
    if missing:
        raise ParseError("missing_keys", f"missing top-level field(s) {missing}")
    extra = [k for k in obj if k not in allowed]
    if extra:
        raise ParseError("extra_keys", f"unexpected top-level key(s) {[k[:60] for k in extra[:10]]}")
    weights = check_weights(obj["weights"], expected, bound)
    rat = obj["rationale"]
    if not isinstance(rat, dict):
        raise ParseError("bad_rationale", "rationale must be an object {feature: text}")
    expset = set(expected)
    unknown = [k for k in rat if k not in expset]
    if unknown:
        raise ParseError("extra_keys", f"rationale for unknown feature(s) {[k[:60] for k in unknown[:10]]}")
    rationale: dict[str, str] = {}
    for k, v in rat.items():
        if not isinstance(v, str):
            raise ParseError("bad_rationale", f"rationale for {k!r} is not a string")
        rationale[k] = _cap(v.strip(), rationale_cap)
    analysis = obj.get("ad_analysis", "")
    if not isinstance(analysis, str):
        raise ParseError("bad_rationale", "ad_analysis must be a string")
    return ParsedAnswer(weights=weights, rationale=rationale, analysis=_cap(analysis.strip(), ANALYSIS_CAP))
