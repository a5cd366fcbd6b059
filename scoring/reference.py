"""Plain-NumPy twins of the scoring kernels (same names, same outputs, no Numba).

They define the semantics the kernels are tested against and are the baseline the
kernel benchmarks are measured against. Numerics match :mod:`scoring.kernels`:

* logits: float32 inputs are widened to float64 (every product is then exact), the dot
  products are taken in float64 and rounded once to float32. Only the float64 summation
  order differs from the kernels, so the two agree to within 1 float32 ulp of the logit
  (in practice they are almost always bit-identical);
* probabilities: overflow-free sigmoid in float64 of the float32 logit, rounded to float32;
* top-k: stable argsort of the negated float32 logits of the allowed ads, so ties go to
  the lower ad index; k' = min(k, number of allowed ads);
* ``allow``: None, a length-0 array (both = every ad), or uint8/bool [M], nonzero = allowed;
* non-finite ``x``/``X`` or a non-finite logit of a scored (allowed) ad raises ValueError.

No input validation beyond that: these take the same already-valid inputs as the kernels.
"""
from __future__ import annotations

import numpy as np


def _check_finite(name: str, a: np.ndarray) -> None:
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or inf")


def _logits64(theta: np.ndarray, X: np.ndarray) -> np.ndarray:
    """float64 logits theta @ X.T (any leading shape of X), checked finite."""
    z = X.astype(np.float64) @ theta.astype(np.float64).T
    if not np.isfinite(z).all():
        raise ValueError("theta contains NaN or inf")
    return z


def _candidates(M: int, allow: np.ndarray | None) -> np.ndarray | None:
    """Allowed ad indices (int64, ascending), or None when every ad is allowed."""
    if allow is None or len(allow) == 0:
        return None
    return np.flatnonzero(allow)


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Overflow-free logistic of float32 logits f32[n] -> f32[n] (computed in float64)."""
    z64 = np.asarray(z, dtype=np.float64)
    e = np.exp(-np.abs(z64))
    p = np.where(z64 >= 0.0, 1.0 / (1.0 + e), e / (1.0 + e))
    return p.astype(np.float32)


def score_all(theta: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Logits f32[M] of every ad (theta f32[M,F]) for one user (x f32[F])."""
    _check_finite("x", x)
    return _logits64(theta, x).astype(np.float32)


def score_matrix(theta: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Logits f32[B,M] of every ad for every user (X f32[B,F])."""
    _check_finite("X", X)
    return _logits64(theta, X).astype(np.float32)


def topk_one(
    theta: np.ndarray, x: np.ndarray, k: int, allow: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-k allowed ads for one user: (idx int64[k'], logit f32[k'], prob f32[k'])."""
    M = theta.shape[0]
    cand = _candidates(M, allow)
    n_ok = M if cand is None else len(cand)
    kk = max(min(int(k), n_ok), 0)
    if kk == 0:
        return np.empty(0, np.int64), np.empty(0, np.float32), np.empty(0, np.float32)
    _check_finite("x", x)
    rows = theta if cand is None else theta[cand]
    z = _logits64(rows, x).astype(np.float32)
    order = np.argsort(-z, kind="stable")[:kk]
    idx = order.astype(np.int64) if cand is None else cand[order].astype(np.int64)
    lg = z[order]
    return idx, lg, sigmoid(lg)


def topk_batch(
    theta: np.ndarray, X: np.ndarray, k: int, allow: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-k allowed ads for each of B users: (idx int64[B,k'], logit f32[B,k'], prob f32[B,k'])."""
    M = theta.shape[0]
    B = X.shape[0]
    cand = _candidates(M, allow)
    n_ok = M if cand is None else len(cand)
    kk = max(min(int(k), n_ok), 0)
    if kk == 0:
        e = np.empty((B, 0))
        return e.astype(np.int64), e.astype(np.float32), e.astype(np.float32)
    _check_finite("X", X)
    rows = theta if cand is None else theta[cand]
    z = _logits64(rows, X).astype(np.float32)  # [B, n_ok]
    order = np.argsort(-z, axis=1, kind="stable")[:, :kk]
    idx = order.astype(np.int64) if cand is None else cand[order].astype(np.int64)
    lg = np.take_along_axis(z, order, axis=1)
    return idx, lg, sigmoid(lg.ravel()).reshape(lg.shape)


def topk_batch_gemm(
    theta: np.ndarray, X: np.ndarray, k: int, allow: np.ndarray | None = None,
    exclude: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Twin of :func:`scoring.batch.topk_batch`: float32 matmul logits prune, float64 decides.

    Same steps as the kernel (see :mod:`scoring.batch` for the error margin): per user,
    T = k'-th largest float32 matmul logit of the candidates, keep candidates within
    ``2 tol + 2 ulp`` of T, re-score them in float64 and rank (ties -> lower index).
    ``exclude``: None or bool [B, M], True = ad removed for that user (the kernel's -inf
    hook); short rows are padded with idx -1, logit -inf, prob 0. Results equal
    :func:`topk_batch` whenever ``exclude`` is None.
    """
    M, F = theta.shape
    B = X.shape[0]
    ok = np.ones(M, bool) if allow is None or len(allow) == 0 else np.asarray(allow) != 0
    kk = max(min(int(k), int(ok.sum())), 0)
    idx = np.full((B, kk), -1, np.int64)
    lg = np.full((B, kk), -np.inf, np.float32)
    if kk == 0 or B == 0:
        return idx, lg, np.zeros((B, kk), np.float32)
    _check_finite("X", X)
    with np.errstate(all="ignore"):
        Z = np.matmul(X, theta.T, dtype=np.float32)
        c = np.abs(theta.astype(np.float64)).max(axis=0) if M else np.zeros(F)
        tol = (F + 1) * 2.0**-23 * (np.abs(X.astype(np.float64)) @ c)
    for b in range(B):
        v = np.flatnonzero(ok if exclude is None else ok & ~exclude[b])
        if tol[b] < 1e30 and len(v) > kk:
            t = float(np.partition(Z[b, v], len(v) - kk)[len(v) - kk])
            v = v[Z[b, v].astype(np.float64) >= t - (2 * tol[b] + 2.0**-22 * (abs(t) + 2 * tol[b]) + 1e-37)]
        z = _logits64(theta[v], X[b]).astype(np.float32)
        order = np.argsort(-z, kind="stable")[:kk]
        idx[b, : len(order)] = v[order]
        lg[b, : len(order)] = z[order]
    pr = np.where(idx >= 0, sigmoid(lg.ravel()).reshape(lg.shape), np.float32(0.0)).astype(np.float32)
    return idx, lg, pr


def contributions(theta_row: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Per-feature contributions f32[F] = theta_row * x (float32 products)."""
    return np.multiply(theta_row, x, dtype=np.float32)


# ---------------------------------------------------------------- content rules
def rules_excluding(rules, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which ads the content rules exclude for one user.

    rules: a :class:`scoring.rules.ContentRules` over M ads (or None: nothing excluded,
    then M is unknown and both arrays are empty); x: float32 [F]. Returns
    (excluded bool[M], rule int64[M]) where rule[a] is the index (into rules.feature /
    rules.threshold) of the FIRST rule of ad a with x[f] > threshold, or -1.
    """
    if rules is None:
        return np.zeros(0, bool), np.zeros(0, np.int64)
    M = rules.ad_ptr.shape[0] - 1
    fires = x[rules.feature] > rules.threshold  # float32 vs float32, like the kernels
    ad_of = np.repeat(np.arange(M), np.diff(rules.ad_ptr))
    rule = np.full(M, -1, np.int64)
    hit = np.flatnonzero(fires)[::-1]  # reversed so the first rule of each ad is written last
    rule[ad_of[hit]] = hit
    return rule >= 0, rule


def _eligible(M: int, allow: np.ndarray | None, rules, x: np.ndarray) -> np.ndarray:
    """Ascending indices of ads allowed by ``allow`` and not excluded by ``rules`` for x."""
    ok = np.ones(M, bool) if allow is None or len(allow) == 0 else np.asarray(allow) != 0
    if rules is not None:
        ok &= ~rules_excluding(rules, x)[0]
    return np.flatnonzero(ok)


def _pad(rows: list[tuple[np.ndarray, ...]], kk: int, fills: tuple) -> tuple[np.ndarray, ...]:
    out = []
    for j, fill in enumerate(fills):
        dt = rows[0][j].dtype if rows else np.float32
        a = np.full((len(rows), kk), fill, dtype=dt)
        for b, r in enumerate(rows):
            a[b, : len(r[j])] = r[j]
        out.append(a)
    return tuple(out)


def topk_one_rules(theta: np.ndarray, x: np.ndarray, k: int, allow: np.ndarray | None = None,
                   rules=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Twin of ``scoring.topk_one(..., rules=)``: top-k of the eligible ads, k' = min(k, #eligible)."""
    cand = _eligible(theta.shape[0], allow, rules, x)
    mask = np.zeros(theta.shape[0], np.uint8)
    mask[cand] = 1
    if cand.size == 0:
        return np.empty(0, np.int64), np.empty(0, np.float32), np.empty(0, np.float32)
    return topk_one(theta, x, k, mask)


def topk_batch_rules(theta: np.ndarray, X: np.ndarray, k: int, allow: np.ndarray | None = None,
                     rules=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Twin of ``scoring.topk_batch(..., rules=)``: [B, min(k, #allowed)], short rows padded
    with idx -1, logit -inf, prob 0."""
    M = theta.shape[0]
    n_ok = M if allow is None or len(allow) == 0 else int(np.count_nonzero(allow))
    kk = max(min(int(k), n_ok), 0)
    rows = [topk_one_rules(theta, x, kk, allow, rules) if kk else
            (np.empty(0, np.int64), np.empty(0, np.float32), np.empty(0, np.float32)) for x in X]
    idx, lg, pr = _pad(rows, kk, (-1, -np.inf, 0.0))
    return idx.astype(np.int64), lg.astype(np.float32), pr.astype(np.float32)


def score_matrix_rules(theta: np.ndarray, X: np.ndarray, rules=None) -> np.ndarray:
    """Twin of ``scoring.score_matrix(..., rules=)``: excluded (user, ad) entries are -inf."""
    Z = score_matrix(theta, X)
    if rules is not None:
        for b in range(X.shape[0]):
            Z[b, rules_excluding(rules, X[b])[0]] = -np.inf
    return Z


# ---------------------------------------------------------------- Thompson sampling
_MASK64 = (1 << 64) - 1


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """Vectorised splitmix64 output of uint64 states x (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def inv_normal(u: np.ndarray) -> np.ndarray:
    """Twin of the kernels' standard normal quantile: float64 Phi^-1(u) for u in (0, 1) by the
    same rational approximation and branch points as ``scoring.thompson._inv_normal``."""
    from scoring.thompson import _A, _B, _C, _D, _P_LOW

    u = np.asarray(u, dtype=np.float64)
    q = u - 0.5
    r = q * q
    num = (((((_A[0] * r + _A[1]) * r + _A[2]) * r + _A[3]) * r + _A[4]) * r + _A[5]) * q
    den = ((((_B[0] * r + _B[1]) * r + _B[2]) * r + _B[3]) * r + _B[4]) * r + 1.0
    lo, hi = u < _P_LOW, u > 1.0 - _P_LOW
    t = np.sqrt(-2.0 * np.log(np.where(lo, u, np.where(hi, 1.0 - u, 0.5))))
    tail = ((((((_C[0] * t + _C[1]) * t + _C[2]) * t + _C[3]) * t + _C[4]) * t + _C[5])
            / ((((_D[0] * t + _D[1]) * t + _D[2]) * t + _D[3]) * t + 1.0))
    return np.where(lo, tail, np.where(hi, -tail, num / den))


def normal_draws(seed: int, M: int) -> np.ndarray:
    """The standard normal draw z[a] (float64 [M]) every Thompson kernel uses for ad a
    under ``seed`` (counter-based: splitmix64 + inverse normal CDF, see :mod:`scoring.thompson`)."""
    key = _splitmix64(np.array([int(seed) & _MASK64], np.uint64))[0]
    with np.errstate(over="ignore"):
        h = _splitmix64(key + np.arange(M, dtype=np.uint64))
    u = ((h >> np.uint64(12)).astype(np.float64) + 0.5) * 2.0**-52
    return inv_normal(u)


def row_seeds(seed: int, B: int) -> np.ndarray:
    """Twin of ``scoring.thompson.row_seeds``: uint64 [B] = splitmix64(seed + b)."""
    with np.errstate(over="ignore"):
        return _splitmix64(np.uint64(int(seed) & _MASK64) + np.arange(B, dtype=np.uint64))


def thompson_samples(theta: np.ndarray, sigma: np.ndarray, x: np.ndarray, seed: int) -> np.ndarray:
    """Sampled logits f32[M]: float32(theta . x + z * sqrt(sum_f sigma^2 x^2)), in float64."""
    x64 = x.astype(np.float64)
    mean = theta.astype(np.float64) @ x64
    sd = np.sqrt(((sigma.astype(np.float64) * x64) ** 2).sum(axis=1))
    return (mean + normal_draws(seed, theta.shape[0]) * sd).astype(np.float32)


def topk_one_thompson(theta: np.ndarray, sigma: np.ndarray, x: np.ndarray, k: int, seed: int,
                      allow: np.ndarray | None = None, rules=None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Twin of ``scoring.topk_one_thompson``: (idx, mean logit, mean prob, sample), k' = min(k, #eligible)."""
    _check_finite("x", x)
    cand = _eligible(theta.shape[0], allow, rules, x)
    if cand.size == 0:
        e = np.empty(0, np.float32)
        return np.empty(0, np.int64), e, e.copy(), e.copy()
    mean = _logits64(theta[cand], x).astype(np.float32)
    smp = thompson_samples(theta, sigma, x, seed)[cand]
    order = np.argsort(-smp, kind="stable")[: max(min(int(k), cand.size), 0)]
    lg = mean[order]
    return cand[order].astype(np.int64), lg, sigmoid(lg), smp[order]


def topk_batch_thompson(theta: np.ndarray, sigma: np.ndarray, X: np.ndarray, k: int, seeds: np.ndarray,
                        allow: np.ndarray | None = None, rules=None
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Twin of ``scoring.topk_batch_thompson`` with per-row uint64 seeds [B] (padded rows)."""
    M = theta.shape[0]
    n_ok = M if allow is None or len(allow) == 0 else int(np.count_nonzero(allow))
    kk = max(min(int(k), n_ok), 0)
    rows = [topk_one_thompson(theta, sigma, x, kk, int(s), allow, rules) for x, s in zip(X, seeds)]
    idx, lg, pr, smp = _pad(rows, kk, (-1, -np.inf, 0.0, -np.inf))
    return idx.astype(np.int64), lg.astype(np.float32), pr.astype(np.float32), smp.astype(np.float32)
