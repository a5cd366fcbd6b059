"""Optional per-version data beside theta: content rules and posterior spread (sigma).

Both are checked here before any write (raising :class:`InvalidWeights` that names the
ad and the rule), and encoded to the bytes the store keeps in its ``matrices`` database
under ``<version>\\0rules`` and ``<version>\\0sigma``. A version published without them
(every version of an older store) simply has none: ``VersionView.rules`` and
``VersionView.sigma`` are None.

Rules bytes: little-endian int32 ad_ptr [M+1], int32 feature [R], float32 threshold [R]
(the CSR arrays of :class:`scoring.rules.ContentRules`). Sigma bytes: float32 [M, F],
row-major, like theta.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from llmhyper.store.validate import InvalidWeights, check_matrix
from scoring.rules import ContentRules, check_rules, make_rules

__all__ = ["RULES_SUFFIX", "SIGMA_SUFFIX", "check_rules_input", "check_sigma", "decode_rules", "encode_rules"]

RULES_SUFFIX = b"\x00rules"
SIGMA_SUFFIX = b"\x00sigma"
_I32 = np.dtype("<i4")
_F32 = np.dtype("<f4")


def _label(labels: Sequence[str] | None, r: int) -> str:
    return labels[r] if labels is not None else f"rules[{r}]"


def check_rules_input(rules: Any, ad_ids: Sequence[str], feature_names: Sequence[str],
                      labels: Sequence[str] | None = None) -> ContentRules:
    """Validate content rules for a version with these ads and features.

    rules: a :class:`ContentRules` over the M ads, or a sequence of
    ``(ad_id, feature, threshold)`` with ``feature`` a schema name or a column index;
    the rule excludes the ad for users whose feature value is strictly above threshold.
    labels: optional per-rule names for messages (e.g. ``"rules.csv line 4"``).
    Raises InvalidWeights naming the rule, its ad and feature when the ad id is unknown,
    the feature is unknown / out of range, or the threshold is not finite as float32.
    """
    M, F = len(ad_ids), len(feature_names)
    if isinstance(rules, ContentRules):
        try:
            return check_rules(rules, M, F)
        except ValueError as e:
            raise InvalidWeights(f"rules: {e}") from None
    if isinstance(rules, (str, bytes)) or not isinstance(rules, Sequence):
        raise InvalidWeights(f"rules must be a list of (ad_id, feature, threshold), got {type(rules).__name__}")
    ad_index = {a: i for i, a in enumerate(ad_ids)}
    feat_index = {n: j for j, n in enumerate(feature_names)}
    triples = []
    for r, rule in enumerate(rules):
        where = _label(labels, r)
        if isinstance(rule, (str, bytes)) or not isinstance(rule, Sequence) or len(rule) != 3:
            raise InvalidWeights(f"{where}: expected (ad_id, feature, threshold), got {rule!r}")
        ad, feat, thr = rule
        if not isinstance(ad, str) or ad not in ad_index:
            raise InvalidWeights(f"{where}: unknown ad id {ad!r} (the version has {M} ads)")
        if isinstance(feat, str):
            if feat not in feat_index:
                raise InvalidWeights(f"{where} (ad {ad!r}): unknown feature {feat!r}; the schema has "
                                     f"{F} features: {', '.join(list(feature_names)[:8])}"
                                     + (", ..." if F > 8 else ""))
            j = feat_index[feat]
        elif isinstance(feat, (int, np.integer)) and not isinstance(feat, (bool, np.bool_)):
            if not 0 <= int(feat) < F:
                raise InvalidWeights(f"{where} (ad {ad!r}): feature index {int(feat)} is out of range [0, {F})")
            j = int(feat)
        else:
            raise InvalidWeights(f"{where} (ad {ad!r}): feature must be a name or an index, got {feat!r}")
        fname = feature_names[j]
        if isinstance(thr, (bool, np.bool_)) or not isinstance(thr, (int, float, np.integer, np.floating)):
            raise InvalidWeights(f"{where} (ad {ad!r}, feature {fname!r}): threshold must be a number, got {thr!r}")
        with np.errstate(over="ignore"):
            t32 = float(np.float32(thr))
        if not math.isfinite(t32):
            raise InvalidWeights(f"{where} (ad {ad!r}, feature {fname!r}): threshold {thr!r} is not finite"
                                 + ("" if not math.isfinite(float(thr)) else " as float32"))
        triples.append((ad_index[ad], j, t32))
    return make_rules(M, F, triples)


def encode_rules(rules: ContentRules) -> bytes:
    """The stored bytes of validated rules (see the module docstring)."""
    return (rules.ad_ptr.astype(_I32).tobytes() + rules.feature.astype(_I32).tobytes()
            + rules.threshold.astype(_F32).tobytes())


def decode_rules(buf: bytes | memoryview, n_ads: int, n_rules: int) -> ContentRules:
    """Rules of a version with ``n_ads`` ads and ``n_rules`` rules from their stored bytes
    (copied out of the map: they are small, so no page pin is needed)."""
    raw = bytes(buf)
    want = 4 * (n_ads + 1) + 8 * n_rules
    if len(raw) != want:
        raise ValueError(f"stored rules have {len(raw)} bytes, expected {want}")
    ptr = np.frombuffer(raw, _I32, n_ads + 1, 0).astype(np.int32)
    feat = np.frombuffer(raw, _I32, n_rules, 4 * (n_ads + 1)).astype(np.int32)
    thr = np.frombuffer(raw, _F32, n_rules, 4 * (n_ads + 1 + n_rules)).astype(np.float32)
    for a in (ptr, feat, thr):
        a.flags.writeable = False
    return ContentRules(ad_ptr=ptr, feature=feat, threshold=thr)


def check_sigma(sigma: Any, n_ads: int, n_features: int) -> np.ndarray:
    """Posterior spread: float32-castable [M, F], finite, >= 0 (std of each weight, logit units
    per unit of feature). Returns the little-endian float32 C-contiguous array."""
    out = check_matrix(sigma, "sigma", n_ads, n_features)
    if np.any(out < 0):
        r, c = (int(v) for v in np.argwhere(out < 0)[0])
        raise InvalidWeights(f"sigma must be >= 0 (a standard deviation); sigma[{r}, {c}] is {float(out[r, c])}")
    return out
