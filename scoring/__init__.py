"""Validated scoring API: linear CTR logits, fused top-k and contributions (Numba).

Every function here checks its inputs with a few cheap attribute tests and then calls
the compiled kernel in :mod:`scoring.kernels`; bad input raises ``ValueError`` naming
the argument and what is wrong. Shapes: M ads, F features, B users. All float inputs
must be float32 and C-contiguous (read-only arrays are fine, nothing is copied).

Ranking semantics (see :mod:`scoring.kernels` for the numerics): logits are float64
dot products rounded to float32; results are sorted by logit descending with ties going
to the lower ad index; ``k' = min(k, number of allowed ads)``; ``prob`` is the
numerically stable sigmoid of the returned logit.

Unchecked fast path: ``topk_one_unchecked`` / ``topk_batch_unchecked`` skip validation
for callers that already validated the same arrays (e.g. a server that checks a
request's feature vector once). Passing anything else than documented gives a numba
``TypeError`` or undefined results, never a silent copy.

Content rules (``rules=``, a :class:`scoring.rules.ContentRules`): per user, ads whose
rule fires (``x[f] > threshold``) are dropped inside the kernel before selection. They
never change a logit. ``topk_one`` then returns fewer than ``k'`` ads when fewer are
eligible; ``topk_batch`` keeps ``k' = min(k, #allowed)`` columns and pads short rows with
idx -1, logit -inf, prob 0 (``score_matrix`` sets excluded entries to -inf).

Thompson ranking (``topk_one_thompson`` / ``topk_batch_thompson``, :mod:`scoring.thompson`)
orders by one seeded posterior sample per ad and returns the mean logit and CTR.

The plain-NumPy twins live in :mod:`scoring.reference`.
"""
from __future__ import annotations

import weakref

import numpy as np

from . import batch as _b
from . import batch_small as _bs
from . import kernels as _k
from . import packed as _p
from . import thompson as _t
from .rules import ContentRules, check_rules, make_rules, rule_arrays

__all__ = [
    "score_all",
    "score_matrix",
    "topk_one",
    "topk_one_rows",
    "topk_batch",
    "topk_one_unchecked",
    "topk_batch_unchecked",
    "topk_one_thompson",
    "topk_batch_thompson",
    "sigma_row_norms",
    "ContentRules",
    "make_rules",
    "check_rules",
    "contributions",
    "sigmoid",
    "warmup",
    "set_threads",
    "get_threads",
]

_F32 = np.dtype(np.float32)
_U8 = np.dtype(np.uint8)
_BOOL = np.dtype(np.bool_)
_NO_MASK = np.empty(0, np.uint8)  # the kernels' "every ad is allowed"
_NO_MASK.flags.writeable = False
_NO_RULES = rule_arrays(None)
_KMAX = 1 << 62
_threads = 1
# Batched kernels in use: the single-threaded ones unless set_threads(n > 1) swapped in
# the prange variants from scoring.parallel (the batch top-k selection is one body
# compiled twice, see scoring.batch).
_batch_select = _b.select_block
_matrix_kernel = _k.score_matrix


def _bad(name: str, a: object, ndim: int, F: int | None = None, ref: str = "theta") -> ValueError:
    """Build the precise error for an array argument that failed the fast checks."""
    if not isinstance(a, np.ndarray):
        return ValueError(f"{name} must be a numpy.ndarray of float32, got {type(a).__name__}")
    if a.dtype != _F32:
        return ValueError(f"{name} must have dtype float32, got {a.dtype}")
    if a.ndim != ndim:
        want = "1-D [F]" if ndim == 1 else "2-D [rows, F]"
        return ValueError(f"{name} must be {want}, got ndim={a.ndim} with shape {a.shape}")
    if not a.flags.c_contiguous:
        return ValueError(f"{name} must be C-contiguous (use np.ascontiguousarray)")
    if F is not None and a.shape[-1] != F:
        return ValueError(
            f"{name} has {a.shape[-1]} features but {ref} has {F} (shape {a.shape})"
        )
    return ValueError(f"{name} is invalid: shape {a.shape}, dtype {a.dtype}")


def _ok(a: object, ndim: int) -> bool:
    # The few attribute reads that guard the kernels; exact-type test keeps it cheap.
    return (
        type(a) is np.ndarray
        and a.dtype is _F32
        and a.ndim == ndim
        and a.flags.c_contiguous
    )


def _check_pair(tname: str, theta: object, xname: str, x: object, xndim: int) -> None:
    if not _ok(theta, 2):
        # Subclasses and equal-but-not-identical float32 dtypes are accepted on the slow path.
        if not (isinstance(theta, np.ndarray) and theta.dtype == _F32 and theta.ndim == 2
                and theta.flags.c_contiguous):
            raise _bad(tname, theta, 2)
    if not _ok(x, xndim) or x.shape[-1] != theta.shape[1]:
        if not (isinstance(x, np.ndarray) and x.dtype == _F32 and x.ndim == xndim
                and x.flags.c_contiguous and x.shape[-1] == theta.shape[1]):
            raise _bad(xname, x, xndim, theta.shape[1])


def _check_k(k: object) -> int:
    if type(k) is not int:
        if isinstance(k, (bool, np.bool_)) or not hasattr(k, "__index__"):
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        k = int(k.__index__())  # numpy integers
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return min(k, _KMAX)  # any k >= M means "all"; keep it inside int64


def _mask(allow: object, M: int) -> np.ndarray:
    if allow is None:
        return _NO_MASK
    if not isinstance(allow, np.ndarray):
        raise ValueError(f"allow must be a numpy uint8 (or bool) array of length {M} or None, "
                         f"got {type(allow).__name__}")
    if allow.dtype is not _U8 and allow.dtype != _U8:
        if allow.dtype != _BOOL:
            raise ValueError(f"allow must have dtype uint8 or bool, got {allow.dtype}")
        allow = allow.view(np.uint8)
    if allow.ndim != 1 or allow.shape[0] != M:
        raise ValueError(f"allow must be 1-D of length M={M} (one flag per ad), got shape {allow.shape}")
    if not allow.flags.c_contiguous:
        raise ValueError("allow must be C-contiguous")
    if M == 0:
        return _NO_MASK
    return allow


# Rules whose three arrays are read-only cannot change, so each (rules, M, F) is checked
# once: a server passes the same stored rules on every request.
_checked_rules: "weakref.WeakKeyDictionary[ContentRules, tuple[int, int]]" = weakref.WeakKeyDictionary()


def _rules(rules: object, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated kernel arrays of ``rules`` for theta's M ads and F features (None: no rules)."""
    if rules is None:
        return _NO_RULES
    shape = (theta.shape[0], theta.shape[1])
    if type(rules) is ContentRules and _checked_rules.get(rules) == shape:
        return rules.by_feature
    check_rules(rules, *shape)
    cr: ContentRules = rules  # type: ignore[assignment]
    if any(a.flags.writeable for a in (cr.ad_ptr, cr.feature, cr.threshold)):
        # arrays that may still change: derive the kernels' index afresh, cache nothing
        return ContentRules.by_feature.func(cr)  # type: ignore[attr-defined]
    _checked_rules[cr] = shape
    return cr.by_feature


def score_all(theta: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Logits of every ad for one user.

    theta: float32 [M, F] weights; x: float32 [F] features. Returns float32 [M] logits.
    Raises ValueError on wrong dtype/shape/contiguity or NaN/inf in x or theta.
    """
    _check_pair("theta", theta, "x", x, 1)
    return _k.score_all(theta, x)


def score_matrix(theta: np.ndarray, X: np.ndarray, rules: ContentRules | None = None) -> np.ndarray:
    """Logits of every ad for each of B users: theta f32[M, F], X f32[B, F] -> f32[B, M].

    With ``rules``, entries [b, a] where a rule of ad a fires for user b are -inf.
    """
    _check_pair("theta", theta, "X", X, 2)
    r = _rules(rules, theta)
    Z = _matrix_kernel(theta, X)
    if rules is not None:
        _k.mask_excluded(Z, X, *r)
    return Z


def _one_args(theta: object, x: object, k: object) -> int:
    """Check a single-user call's theta [M, F] and x [F] (one cheap test on the common
    path) and return k as a valid int."""
    if not (type(theta) is np.ndarray and theta.dtype is _F32 and theta.ndim == 2
            and theta.flags.c_contiguous and type(x) is np.ndarray and x.dtype is _F32
            and x.ndim == 1 and x.flags.c_contiguous and x.shape[0] == theta.shape[1]):
        _check_pair("theta", theta, "x", x, 1)
    if type(k) is not int or not 0 < k <= _KMAX:
        return _check_k(k)
    return k


def topk_one(
    theta: np.ndarray, x: np.ndarray, k: int, allow: np.ndarray | None = None,
    rules: ContentRules | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-k ads for one user, fused dot + sigmoid + top-k in one pass.

    theta: float32 [M, F]; x: float32 [F]; k >= 1; allow: None (all ads) or uint8/bool
    [M] with nonzero = candidate; rules: None or content rules over the M ads. Returns
    (idx int64[k'], logit float32[k'], prob float32[k']) with k' = min(k, #eligible),
    logit descending, ties -> lower index.
    """
    k = _one_args(theta, x, k)
    r = _NO_RULES if rules is None else _rules(rules, theta)
    return _k.topk_one(theta, x, k, _NO_MASK if allow is None else _mask(allow, theta.shape[0]), *r)


def topk_one_rows(
    theta: np.ndarray, x: np.ndarray, k: int, allow: np.ndarray | None = None,
    rules: ContentRules | None = None,
) -> np.ndarray:
    """:func:`topk_one` as one float64 array [k', 3] of rows (ad index, logit, prob), same
    values exactly; cheaper per call (one array to box, see :mod:`scoring.packed`)."""
    k = _one_args(theta, x, k)
    if allow is None and rules is None:
        return _p.plain(theta, x, k)
    return _p.full(theta, x, k, _mask(allow, theta.shape[0]), *_rules(rules, theta))


def topk_batch(
    theta: np.ndarray, X: np.ndarray, k: int, allow: np.ndarray | None = None,
    rules: ContentRules | None = None, exclude: _b.ExcludeHook | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-k ads for each of B users (one shared allow mask, rules applied per user).

    theta: float32 [M, F]; X: float32 [B, F]; returns (idx int64[B, k'],
    logit float32[B, k'], prob float32[B, k']) with k' = min(k, #allowed), each row as
    :func:`topk_one`; a row with fewer eligible ads (content rules) is padded with idx -1,
    logit -inf, prob 0. Runs at matrix-product speed: BLAS sgemm per block of users, the
    content rules masked into each logits block, then a compiled selection that re-scores
    the few near-top candidates exactly (:mod:`scoring.batch`). ``exclude(Z, row0)``: an
    extra per-user exclusion hook on each float32 logits block (set ``Z[r, i] = -inf`` to
    drop ad i for user row0 + r).
    """
    _check_pair("theta", theta, "X", X, 2)
    if type(k) is not int or not 0 < k <= _KMAX:
        k = _check_k(k)
    return _batch(theta, X, k, _mask(allow, theta.shape[0]), _rules(rules, theta), exclude)


def _batch(theta: np.ndarray, X: np.ndarray, k: int, allow: np.ndarray,
           arrays: tuple[np.ndarray, np.ndarray, np.ndarray],
           exclude: _b.ExcludeHook | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The batch top-k of checked inputs: the small-catalog path (:mod:`scoring.batch_small`)
    where it applies, else the row-major sgemm path with the rules as an exclusion hook."""
    if exclude is None and _batch_select is _b.select_block:
        M = theta.shape[0]
        n_ok = M if allow.shape[0] == 0 else int(np.count_nonzero(allow))
        if _bs.use_small(M, min(k, n_ok)):
            return _bs.topk_batch(theta, X, k, allow, arrays)
    return _b.topk_batch(theta, X, k, allow, _exclusion_hook(X, arrays, exclude), _batch_select)


def _exclusion_hook(X: np.ndarray, arrays: tuple[np.ndarray, np.ndarray, np.ndarray],
                    extra: _b.ExcludeHook | None) -> _b.ExcludeHook | None:
    """The per-block hook of the sgemm batch path: content rules (compiled mask) then ``extra``."""
    fptr, fthr, fad = arrays
    if fptr.shape[0] == 0:
        return extra

    def hook(Z: np.ndarray, row0: int) -> None:
        _k.mask_excluded(Z, X[row0:row0 + Z.shape[0]], fptr, fthr, fad)
        if extra is not None:
            extra(Z, row0)

    return hook


def topk_one_unchecked(
    theta: np.ndarray, x: np.ndarray, k: int, allow: np.ndarray | None = None,
    rules: ContentRules | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`topk_one` without validation, for callers that validated already.

    Contract: theta float32 C-contiguous [M, F], x float32 C-contiguous [F], int k >= 1,
    allow None or C-contiguous uint8 [M], rules None or ContentRules that passed
    :func:`check_rules` for this theta. Breaking it raises a numba TypeError or reads
    out of bounds.
    """
    return _k.topk_one(theta, x, k, _NO_MASK if allow is None else allow, *rule_arrays(rules))


def topk_batch_unchecked(
    theta: np.ndarray, X: np.ndarray, k: int, allow: np.ndarray | None = None,
    rules: ContentRules | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`topk_batch` without validation (same contract as :func:`topk_one_unchecked`)."""
    return _batch(theta, X, k, _NO_MASK if allow is None else allow, rule_arrays(rules), None)


def _check_sigma(sigma: object, theta: np.ndarray) -> None:
    if not (isinstance(sigma, np.ndarray) and sigma.dtype == _F32 and sigma.ndim == 2
            and sigma.flags.c_contiguous and sigma.shape == theta.shape):
        if isinstance(sigma, np.ndarray) and sigma.shape != theta.shape and sigma.ndim == 2:
            raise ValueError(f"sigma has shape {sigma.shape} but theta has {theta.shape}")
        raise _bad("sigma", sigma, 2)


def _seed_u64(seed: object, what: str = "seed") -> np.uint64:
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"{what} must be an integer in [0, 2**64), got {seed!r}")
    if not 0 <= int(seed) < 1 << 64:
        raise ValueError(f"{what} must be in [0, 2**64), got {seed}")
    return np.uint64(int(seed))


_F64 = np.dtype(np.float64)
_TWO64 = 1 << 64
_NO_BOUND = np.zeros(0, np.float64)
_NO_BOUND.flags.writeable = False


def sigma_row_norms(sigma: np.ndarray) -> np.ndarray:
    """float64 [M] per-ad bounds ``||sigma[a]||_2`` (times 1 + 1e-9) that let the Thompson
    kernels skip ads whose sample cannot reach the top k. Compute once per sigma (e.g. per
    served version) and pass as ``sigma_bound``; read-only."""
    if not (isinstance(sigma, np.ndarray) and sigma.dtype == _F32 and sigma.ndim == 2 and sigma.flags.c_contiguous):
        raise _bad("sigma", sigma, 2)
    out = _t.sigma_row_norms(sigma)
    out.flags.writeable = False
    return out


def _check_bound(bound: np.ndarray | None, sigma: np.ndarray, compute: bool) -> np.ndarray:
    if bound is None:
        return sigma_row_norms(sigma) if compute else _NO_BOUND
    if not (isinstance(bound, np.ndarray) and bound.dtype == np.float64 and bound.shape == (sigma.shape[0],)
            and bound.flags.c_contiguous):
        raise ValueError(f"sigma_bound must be scoring.sigma_row_norms(sigma): float64 [{sigma.shape[0]}], "
                         f"got {getattr(bound, 'dtype', type(bound).__name__)} {getattr(bound, 'shape', '')}")
    if bound.flags.writeable:
        bound = bound.view()
        bound.flags.writeable = False
    return bound


def topk_one_thompson(
    theta: np.ndarray, sigma: np.ndarray, x: np.ndarray, k: int, seed: int,
    allow: np.ndarray | None = None, rules: ContentRules | None = None,
    sigma_bound: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Top-k ads for one user ranked by a Thompson sample of each ad's logit.

    theta, sigma: float32 [M, F] posterior mean and per-weight std (>= 0; not checked for
    sign, a negative entry acts like its absolute value); x float32 [F]; seed: integer in
    [0, 2**64), the same seed gives the same ranking. Returns (idx int64[k'], MEAN logit
    float32[k'], MEAN prob float32[k'], sampled logit float32[k']), ordered by the sample
    descending, k' = min(k, #eligible). See :mod:`scoring.thompson` for the draws.
    sigma_bound: :func:`sigma_row_norms` of ``sigma`` (cache it with sigma): lets the kernel skip
    the variance of ads that cannot enter; None = no such pruning (same ranking, slower).
    """
    # fast path first (the few attribute reads of topk_one), precise errors on the slow one
    if not (type(theta) is np.ndarray and theta.dtype is _F32 and theta.ndim == 2 and theta.flags.c_contiguous
            and type(x) is np.ndarray and x.dtype is _F32 and x.ndim == 1 and x.flags.c_contiguous
            and x.shape[0] == theta.shape[1]):
        _check_pair("theta", theta, "x", x, 1)
    if not (type(sigma) is np.ndarray and sigma.dtype is _F32 and sigma.shape == theta.shape
            and sigma.flags.c_contiguous):
        _check_sigma(sigma, theta)
    if type(k) is not int or not 0 < k <= _KMAX:
        k = _check_k(k)
    s64 = seed if type(seed) is int and 0 <= seed < _TWO64 else _seed_u64(seed)  # a Python int converts in the dispatcher
    if not (type(sigma_bound) is np.ndarray and sigma_bound.dtype is _F64 and sigma_bound.ndim == 1
            and sigma_bound.shape[0] == theta.shape[0] and not sigma_bound.flags.writeable
            and sigma_bound.flags.c_contiguous):
        sigma_bound = _check_bound(sigma_bound, sigma, False)
    r = _NO_RULES if rules is None else _rules(rules, theta)
    return _t.topk_one_thompson(theta, sigma, x, k, s64, _NO_MASK if allow is None else _mask(allow, theta.shape[0]),
                                *r, sigma_bound)


def topk_batch_thompson(
    theta: np.ndarray, sigma: np.ndarray, X: np.ndarray, k: int, seed: int | np.ndarray,
    allow: np.ndarray | None = None, rules: ContentRules | None = None,
    sigma_bound: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Thompson top-k for B users: arrays [B, k'] as :func:`topk_one_thompson`.

    sigma_bound: as there; None = computed here once for the batch.

    seed: one integer (row b then uses ``scoring.thompson.row_seeds(seed, B)[b]``) or a
    uint64 array [B] of per-row seeds (row b equals ``topk_one_thompson(.., X[b], k,
    seeds[b])``, whatever the batch). k' = min(k, #allowed); rows with fewer eligible ads
    are padded with idx -1, logit and sample -inf, prob 0.
    """
    _check_pair("theta", theta, "X", X, 2)
    _check_sigma(sigma, theta)
    k = _check_k(k)
    if isinstance(seed, np.ndarray):
        if seed.ndim != 1 or seed.shape[0] != X.shape[0] or seed.dtype.kind not in "iu":
            raise ValueError(f"seed array must be integer [B={X.shape[0]}], got {seed.dtype} {seed.shape}")
        if seed.dtype.kind == "i" and np.any(seed < 0):
            raise ValueError("seed array entries must be >= 0")
        seeds = np.ascontiguousarray(seed, dtype=np.uint64)
    else:
        seeds = _t.row_seeds(_seed_u64(seed), X.shape[0])
    return _t.topk_batch_gemm(theta, sigma, X, k, seeds, _mask(allow, theta.shape[0]),
                              *_rules(rules, theta), _check_bound(sigma_bound, sigma, True))


def contributions(theta_row: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Per-feature contributions of one ad for one user: theta_row f32[F] * x f32[F] -> f32[F]."""
    if not _ok(theta_row, 1):
        if not (isinstance(theta_row, np.ndarray) and theta_row.dtype == _F32
                and theta_row.ndim == 1 and theta_row.flags.c_contiguous):
            raise _bad("theta_row", theta_row, 1)
    if not _ok(x, 1) or x.shape[0] != theta_row.shape[0]:
        if not (isinstance(x, np.ndarray) and x.dtype == _F32 and x.ndim == 1
                and x.flags.c_contiguous and x.shape[0] == theta_row.shape[0]):
            raise _bad("x", x, 1, theta_row.shape[0], "theta_row")
    return _k.contributions(theta_row, x)


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Numerically stable logistic of float32 logits: f32[n] -> f32[n] (exact 0/1 at the extremes)."""
    if not _ok(z, 1):
        if not (isinstance(z, np.ndarray) and z.dtype == _F32 and z.ndim == 1
                and z.flags.c_contiguous):
            raise _bad("z", z, 1)
    return _k.sigmoid(z)


def set_threads(n: int = 1) -> None:
    """Set how many threads the batched kernels (topk_batch, score_matrix) use.

    n = 1 (the default, and what servers use: one thread per process) runs the
    single-threaded kernels and starts no thread pool. n > 1 compiles/loads the opt-in
    prange variants in :mod:`scoring.parallel` and sets Numba's thread count; results are
    identical. Measured on 2 idle cores at B=256: ~2x for 1000x64 and 10000x128, but
    slower than single-threaded when the cores are busy. Single-user kernels
    (topk_one, score_all, contributions) are always single-threaded.
    Raises ValueError unless 1 <= n <= numba.config.NUMBA_NUM_THREADS.
    """
    global _threads, _batch_select, _matrix_kernel
    import numba

    limit = int(numba.config.NUMBA_NUM_THREADS)
    if type(n) is not int or not 1 <= n <= limit:
        raise ValueError(f"set_threads: n must be an int in [1, {limit}], got {n!r}")
    if n == 1:
        _batch_select, _matrix_kernel = _b.select_block, _k.score_matrix
    else:
        from . import parallel

        numba.set_num_threads(n)
        _batch_select, _matrix_kernel = parallel.select_block, parallel.score_matrix
    _threads = n


def get_threads() -> int:
    """Threads the batched kernels use (see :func:`set_threads`)."""
    return _threads


from .warmup import warmup  # noqa: E402  (it calls the functions above)
