"""``scoring.warmup``: compile (or load from the on-disk cache) every kernel before serving."""
from __future__ import annotations

import numpy as np

from .rules import make_rules

__all__ = ["warmup"]


def warmup() -> None:
    """Compile (or load from cache) and run every kernel once on tiny inputs.

    Call before reporting a server as SERVING so no request pays for compilation.
    Raises RuntimeError if a kernel returns something other than its twin would.
    """
    import scoring as S

    theta = np.array([[0.5, 1.0], [0.5, -1.0], [0.0, 2.0]], dtype=np.float32)
    x = np.array([1.0, 0.25], dtype=np.float32)
    X = np.ascontiguousarray(np.stack([x, x]))
    allow = np.array([1, 1, 0], dtype=np.uint8)
    z = S.score_all(theta, x)
    zm = S.score_matrix(theta, X)
    i1, l1, p1 = S.topk_one(theta, x, 2)
    r1 = S.topk_one_rows(theta, x, 2)
    rr = S.topk_one_rows(theta, x, 3, allow, make_rules(3, 2, [(0, 1, 0.1)]))
    i2, _, _ = S.topk_one(theta, x, 99, allow)
    ib, _, _ = S.topk_batch(theta, X, 1)
    ib2, _, _ = S.topk_batch(theta, X, 99, allow)
    wide = np.ascontiguousarray(np.tile(theta, (3, 1)))  # 9 ads, k 2: the small-catalog batch path
    ibs, lbs, _ = S.topk_batch(wide, X, 2)
    ibsr, _, _ = S.topk_batch(wide, X, 2, None, make_rules(9, 2, [(0, 1, 0.1)]))
    rules = make_rules(3, 2, [(0, 1, 0.1)])  # excludes ad 0 for x (0.25 > 0.1)
    ir, _, _ = S.topk_one(theta, x, 3, None, rules)
    ibr, lbr, _ = S.topk_batch(theta, X, 99, allow, rules)
    zr = S.score_matrix(theta, X, rules)
    sigma = np.zeros_like(theta)
    it, _, _, _ = S.topk_one_thompson(theta, sigma, x, 2, 7, sigma_bound=S.sigma_row_norms(sigma))
    ibt, _, _, _ = S.topk_batch_thompson(theta, sigma, X, 2, 7, allow, rules)
    c = S.contributions(theta[0], x)
    s = S.sigmoid(np.array([-1e4, 0.0, 1e4], dtype=np.float32))
    ok = (
        z.tolist() == [0.75, 0.25, 0.5]
        and zm.shape == (2, 3)
        and i1.tolist() == [0, 2]
        and r1.tolist() == [[float(i), float(v), float(p)] for i, v, p in zip(i1, l1, p1)]
        and rr[:, 0].tolist() == [1.0]
        and i2.tolist() == [0, 1]
        and ib.tolist() == [[0], [0]]
        and ib2.shape == (2, 2)
        and ibs.tolist() == [[0, 3], [0, 3]] and lbs.tolist() == [[0.75, 0.75]] * 2
        and ibsr.tolist() == [[3, 6], [3, 6]]
        and ir.tolist() == [2, 1]
        and ibr.tolist() == [[1, -1], [1, -1]] and float(lbr[0, 1]) == -np.inf
        and zr[0, 0] == -np.inf and zr[0, 2] == 0.5
        and it.tolist() == [0, 2]
        and ibt.tolist() == [[1, -1], [1, -1]]
        and c.tolist() == [0.5, 0.25]
        and s.tolist() == [0.0, 0.5, 1.0]
        and 0.5 < float(p1[0]) < 1.0
    )
    if not ok:
        raise RuntimeError("scoring.warmup: kernels returned unexpected results")
