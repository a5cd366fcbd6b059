"""Warm-up policies: what a cold ad's weights become once its first logs arrive.

- ``none``: the generated weights, frozen (the cold-start baseline).
- ``switch``: the paper's hard switch. An ad with at least ``min_clicks`` clicks gets a plain
  L2 logistic regression on its own logs (prior forgotten); the others keep their generated
  weights.
- ``prior`` (default): MAP logistic regression with a Gaussian prior centred on the generated
  weights (offline.warm.posterior), so the first clicks move the weights only as far as the
  evidence warrants and the generated knowledge is carried forward.

Every policy returns the weights, a posterior std per ad and feature, and a per-ad provenance
record. An ad with no logged data (no trials) keeps its generated weights bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from offline.warm.posterior import fit_map, l2_lambda

POLICIES = ("prior", "switch", "none")
SPREAD_FLOOR = 0.05  # logit units: a sample spread below this is not trusted as a precision


@dataclass
class Prior:
    """mu: float32 [M, F] generated weights; lam: float64 [M, F] prior precision (1/std^2);
    source: per ad "spread" (std from the generator's per-feature sample spread) or "global"."""

    mu: np.ndarray
    lam: np.ndarray
    source: list[str]


def prior_from_records(mu: np.ndarray, records: Sequence[Mapping[str, Any] | None], scale: float,
                       intercept_scale: float | None = None) -> Prior:
    """The prior of each ad: its generated weights ``mu`` [M, F] with std ``scale * base_j`` on
    each user weight and ``intercept_scale * base_0`` on the intercept (default ``scale``).

    base = the record's per-feature sample ``spread`` (floored at SPREAD_FLOOR) when the
    generator drew >= 2 samples and recorded a finite spread for every feature (source
    "spread"; knn-content records its neighbours' spread, LLM generators their answers'), else
    1, so ``scale`` is then the std itself in logits (source "global")."""
    intercept_scale = scale if intercept_scale is None else intercept_scale
    for what, v in (("prior scale", scale), ("intercept scale", intercept_scale)):
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"{what} must be a finite number > 0, got {v}")
    mu = np.ascontiguousarray(mu, dtype=np.float32)
    M, F = mu.shape
    base = np.ones((M, F))
    source = ["global"] * M
    for i, rec in enumerate(records):
        sp = (rec or {}).get("spread")
        if (rec or {}).get("n_samples", 1) >= 2 and isinstance(sp, list) and len(sp) == F \
                and all(isinstance(v, (int, float)) and math.isfinite(v) for v in sp):
            base[i] = np.maximum(np.asarray(sp, dtype=np.float64), SPREAD_FLOOR)
            source[i] = "spread"
    mult = np.full(F, float(scale))
    mult[0] = float(intercept_scale)
    return Prior(mu, 1.0 / (base * mult[None, :]) ** 2, source)


@dataclass
class Refreshed:
    """theta: float32 [M, F]; sigma: float32 [M, F] posterior std (the prior's where not updated);
    records: one provenance dict per ad; n_iter: Newton iterations of the fit (0 without one)."""

    theta: np.ndarray
    sigma: np.ndarray
    records: list[dict]
    n_iter: int = 0


def refresh_weights(policy: str, prior: Prior, X: np.ndarray, trials: np.ndarray, clicks: np.ndarray, *,
                    min_clicks: int | None = None, l2: float = 1.0, laplace: str = "diag",
                    theta0: np.ndarray | None = None) -> Refreshed:
    """Apply ``policy`` to every served ad.

    X: [N, F] features of the logged users; trials, clicks: [N, M] counts (offline.warm.logs);
    min_clicks: the switch threshold (``switch`` only, required there); l2: penalty of the
    switched ads' plain regression; laplace: "diag" or "full"; theta0: warm start [M, F] for
    the prior fit (e.g. the previous refresh).
    """
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    if policy == "switch" and (min_clicks is None or min_clicks < 1):
        raise ValueError(f"policy 'switch' needs min_clicks >= 1, got {min_clicks}")
    mu, lam = prior.mu, prior.lam
    M, F = mu.shape
    theta = mu.copy()
    sigma = (1.0 / np.sqrt(lam)).astype(np.float32)
    share = np.ones((M, F))
    updated = np.zeros(M, dtype=bool)
    n_iter = 0
    n_clicks = clicks.sum(axis=0)
    if policy == "prior":
        fit = fit_map(X, trials, clicks, mu, lam, theta0=theta0, laplace=laplace)
        theta, sigma, share, updated, n_iter = fit.theta, fit.sigma, fit.prior_share, fit.has_data, fit.n_iter
    elif policy == "switch":
        sel = np.flatnonzero(n_clicks >= min_clicks)
        if sel.size:
            fit = fit_map(X, trials[:, sel], clicks[:, sel], np.zeros(F), l2_lambda(F, l2), laplace=laplace)
            theta[sel], sigma[sel] = fit.theta, fit.sigma
            share[sel] = 0.0  # the prior is dropped, not weighed
            updated[sel] = True
            n_iter = fit.n_iter
    records = []
    n_trials = trials.sum(axis=0)
    users = (trials > 0).sum(axis=0)
    for i in range(M):
        pw = float(share[i].mean())
        records.append({
            "policy": policy, "updated": bool(updated[i]), "clicks": int(n_clicks[i]),
            "impressions": int(n_trials[i]), "users": int(users[i]),
            "prior_source": prior.source[i],
            "prior_weight": round(pw, 6), "data_weight": round(1.0 - pw, 6),
            "prior_share": [round(float(v), 5) for v in share[i]],
            "prior_sigma_mean": round(float(np.mean(1.0 / np.sqrt(lam[i]))), 6),
            "sigma_mean": round(float(sigma[i].mean()), 6),
            "moved": round(float(np.abs(theta[i].astype(np.float64) - mu[i]).max()), 6),
        })
    return Refreshed(np.ascontiguousarray(theta, dtype=np.float32), np.ascontiguousarray(sigma, dtype=np.float32),
                     records, n_iter)
