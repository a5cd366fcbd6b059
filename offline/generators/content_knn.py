"""Cold-start weight models that are not the LLM: the improved deterministic default and the
baselines of the evaluation (paper section 3.2).

Everything here uses only what a cold ad has at launch: its content embedding, its launch
time (catalog metadata), its retrieved neighbours with their trained weights and observed
CTRs, and the feature definitions. Fitting steps read retired (warm) ads only.

``ContentKNNGenerator`` (the improved default, name ``knn-content``):

* user part (every weight but the intercept): softmax(similarity / temperature) mix of the
  top-``k`` neighbours' trained weights, plus a *drift* correction: the per-feature linear
  trend of retired weights over launch time (fitted on all retired ads, recency-weighted),
  applied from the neighbours' mean launch time to the cutoff.
* intercept (default ``stacked``): solved (eq. 2 shift over a user sample) so the ad's mean
  predicted CTR equals a predicted CTR. Two base predictors of the log-odds CTR: the
  neighbours' mean CTR moved by the launch-time trend, and a ridge content model from
  [embedding, category one-hot, stated year -> age at launch] (:class:`ContentEncoder`),
  recency-weighted toward recently launched retired ads and scored at the cutoff. They are
  combined by least squares fitted on an internal pseudo-cold split of the retired ads (latest
  ``stack_frac`` by launch, base models from the rest), and the combined prediction is
  quantile-mapped onto those held-out retired ads' log-odds distribution (regression shrinks
  the spread; the mapping restores it, so no hand-set gain). Options ``neighbour_ctr``
  (previous default, with ``ctr_gain``), ``content`` and ``neighbours`` stay available;
  ``shrink`` pulls the user part toward the mean retired user part (hurt on validation).

Hyper-parameters are chosen on RETIRED ads only, by :func:`select_config` (covariate-shift-aware
validation): rolling-origin pseudo-cold folds of retired ads (:func:`validation_folds`: ads
launched in the 60-80% and 80-100% launch-time quantiles, each against the earlier ads as its
pool, with user features and pool weights recomputed without the held ads' ratings), every
held ad weighted by w(x) = p(cold|x) / p(retired|x) from a logistic classifier on CONTENT
only (category, stated-year age at launch, embedding PCs; :func:`shift_weights`), objective =
weighted AUC + weighted NDCG@10 + weighted per-ad AUC averaged over folds. The cold ads'
content enters the weights; no active-ad label is used anywhere. (The older unweighted
:func:`pseudo_cold_validation` stays for comparison.) ``user_ratio`` (rescale the user part
to a fixed share of the intercept spread) and retraining the retired weights with a larger
l2 for transfer lost on that objective and are off by default.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from scipy.special import expit, logit

from offline.stages.calibrate import solve_shift
from offline.generators.knn import RawKNNGenerator
from offline.types import Generated, Neighbour, check_neighbours

if TYPE_CHECKING:  # pragma: no cover
    from offline.data.dataset import Ad
    from offline.stages.prepared import Prepared

DAY = 86400.0
CTR_FLOOR = 1e-4


def _logit_ctr(ctr: np.ndarray) -> np.ndarray:
    return logit(np.clip(np.asarray(ctr, dtype=np.float64), CTR_FLOOR, 1.0 - CTR_FLOOR))


def _generated(theta: np.ndarray, samples: np.ndarray | None = None) -> Generated:
    theta = np.asarray(theta, dtype=np.float32)
    S = theta[None, :] if samples is None else np.asarray(samples, dtype=np.float32)
    return Generated(theta=theta, rationale={}, samples=S, spread=S.std(axis=0).astype(np.float32),
                     cost={}, failed=None)


# ------------------------------------------------------------------------------- baselines
def lr_cold_theta(warm_theta: np.ndarray) -> np.ndarray:
    """LRcold (paper 3.2): element-wise median of the retired weights, f32[F]."""
    W = np.asarray(warm_theta, dtype=np.float64)
    if W.ndim != 2 or W.shape[0] == 0:
        raise ValueError(f"warm_theta must be [W>=1, F], got {W.shape}")
    return np.median(W, axis=0).astype(np.float32)


class LRColdGenerator:
    """Every cold ad gets the element-wise median of all retired weights (needs ``fit``)."""

    name = "lr-cold"

    def __init__(self) -> None:
        self.theta: np.ndarray | None = None

    def fit(self, prep: "Prepared", users: np.ndarray | None = None) -> "LRColdGenerator":
        self.theta = lr_cold_theta(prep.warm_theta)
        return self

    def generate(self, ad: "Ad", neighbours: list[Neighbour], features: list[tuple[str, str]]) -> Generated:
        if self.theta is None:
            raise ValueError("LRColdGenerator.fit(prepared) must run before generate")
        if self.theta.shape[0] != len(features):
            raise ValueError(f"fitted on {self.theta.shape[0]} features, got {len(features)}")
        return _generated(self.theta.copy())


class PopularityGenerator:
    """Popularity-only cold start: zero user weights, intercept = logit(mean CTR of neighbours).

    Ranks every user's ads the same way (by the neighbours' popularity), so its per-ad AUC is
    0.5 by construction: the reference for how much of a metric popularity alone explains.
    """

    name = "popularity"

    def generate(self, ad: "Ad", neighbours: list[Neighbour], features: list[tuple[str, str]]) -> Generated:
        F = len(features)
        check_neighbours(ad, neighbours, F)
        ctr = np.array([nb.mean_ctr for nb in neighbours], dtype=np.float64)
        ctr = ctr[np.isfinite(ctr)]
        if ctr.size == 0:
            raise ValueError(f"ad {ad.ad_id}: no neighbour has a known mean CTR")
        theta = np.zeros(F, dtype=np.float32)
        theta[0] = float(_logit_ctr(np.array([ctr.mean()]))[0])
        return _generated(theta)


def user_profiles(emb_warm: np.ndarray, Y_warm: np.ndarray) -> np.ndarray:
    """EmbT5-style user text profiles: L2-normalised mean embedding of the retired ads each
    user clicked. emb_warm f32[W, d] (unit rows); Y_warm 0/1 [N, W] -> f32[N, d] (zero rows for
    users without history)."""
    P = np.asarray(Y_warm, dtype=np.float32) @ np.asarray(emb_warm, dtype=np.float32)
    n = np.linalg.norm(P, axis=1, keepdims=True)
    return np.divide(P, n, out=np.zeros_like(P), where=n > 0).astype(np.float32)


def embedding_scores(prep: "Prepared", users: np.ndarray) -> np.ndarray:
    """EmbT5-style baseline scores float32 [len(users), C]: cosine between each user's profile
    (from retired clicks only, :func:`user_profiles`) and each cold ad's content embedding.
    The scores are similarities, not CTRs (no log-loss / calibration for this baseline)."""
    ds, sp = prep.dataset, prep.split
    Yw = ds.labels(sp.warm)[np.asarray(users)]
    P = user_profiles(prep.emb[sp.warm], Yw)
    return np.ascontiguousarray(P @ prep.emb[sp.cold].T, dtype=np.float32)


# ----------------------------------------------------------------------- the improved default
YEAR_RE = re.compile(r"(?<!\d)(1[89]\d\d|20\d\d)(?!\d)")
YEAR_S = 365.25 * DAY


def content_year(ad: Any) -> float:
    """A year (1800-2099) stated in the ad's content: the last one in the title (e.g. a film's
    release year, ``Titanic (1997)``), else the first in the description; NaN when none."""
    m = YEAR_RE.findall(getattr(ad, "title", "") or "")
    if m:
        return float(m[-1])
    m = YEAR_RE.findall(getattr(ad, "description", "") or "")
    return float(m[0]) if m else float("nan")


class ContentEncoder:
    """Content features of an ad for the intercept model, f64 rows:
    [embedding (d), one-hot category (categories with >= ``min_count`` retired ads),
    has_year, log1p(age), age < 1, age < 2] where age = years from the stated year
    (:func:`content_year`) to the ad's launch (catalog metadata), clipped to [0, 100]; the
    year block is 0 for an ad without a stated year. Works for any dataset: an ad without
    category or year simply gets zeros there."""

    def __init__(self, min_count: int = 3) -> None:
        self.min_count = min_count
        self.categories: list[str] = []

    def fit(self, ads: Sequence[Any]) -> "ContentEncoder":
        counts: dict[str, int] = {}
        for a in ads:
            c = getattr(a, "category", "") or ""
            if c:
                counts[c] = counts.get(c, 0) + 1
        self.categories = sorted(c for c, n in counts.items() if n >= self.min_count)
        return self

    def transform(self, ads: Sequence[Any], emb: np.ndarray) -> np.ndarray:
        """ads (n) with their embeddings f[n, d] -> f64[n, d + n_categories + 4]."""
        emb = np.asarray(emb, dtype=np.float64).reshape(len(ads), -1)
        cat = np.zeros((len(ads), len(self.categories)))
        pos = {c: j for j, c in enumerate(self.categories)}
        yr = np.zeros((len(ads), 4))
        for i, a in enumerate(ads):
            j = pos.get(getattr(a, "category", "") or "")
            if j is not None:
                cat[i, j] = 1.0
            y = content_year(a)
            if math.isfinite(y):
                age = float(np.clip(1970.0 + float(a.launched_at) / YEAR_S - y, 0.0, 100.0))
                yr[i] = (1.0, math.log1p(age), float(age < 1.0), float(age < 2.0))
        return np.concatenate([emb, cat, yr], axis=1)


def _ridge_fit(A: np.ndarray, y: np.ndarray, lam: float, w: np.ndarray | None) -> tuple[np.ndarray, float, np.ndarray]:
    """Weighted ridge (intercept unpenalised): returns (mu [p], y_mean, beta [p])."""
    w = np.ones(A.shape[0]) if w is None else np.asarray(w, dtype=np.float64)
    sw = w.sum()
    mu = (w[:, None] * A).sum(axis=0) / sw
    ym = float((w * y).sum() / sw)
    A0 = A - mu
    G = A0.T @ (w[:, None] * A0)
    G[np.diag_indices_from(G)] += lam
    beta = np.linalg.solve(G, A0.T @ (w * (y - ym)))
    return mu, ym, beta


class _BaseIntercepts:
    """The base log-odds CTR predictors of a cold ad, fitted on a pool of retired ads:
    ``nbr`` = logit of the plain mean CTR of the ``ctr_k`` most similar neighbours, moved by the
    pool's launch-time trend of log-odds CTR to the cutoff; ``content`` = weighted ridge from
    standardised content features (:class:`ContentEncoder`) plus recency to log-odds CTR,
    scored at recency 0 (launched at the cutoff)."""

    def __init__(self, cfg: "ContentKNNConfig") -> None:
        self.cfg = cfg

    def fit(self, ctr: np.ndarray, rec: np.ndarray, A: np.ndarray, sw: np.ndarray | None,
            n_meta: int = 0) -> "_BaseIntercepts":
        """ctr [W]; rec [W] days (<= 0); A f64[W, d + n_meta] = [embedding | metadata columns]
        (:class:`ContentEncoder`); sw: sample weights or None."""
        self.n_meta = n_meta
        y = _logit_ctr(ctr)
        w = np.ones(y.size) if sw is None else sw
        D = np.stack([np.ones_like(rec), rec], axis=1)
        G = D.T @ (w[:, None] * D)
        self.ctr_center = float((w * y).sum() / w.sum())
        self.ctr_slope = float(np.linalg.solve(G, D.T @ (w * y))[1])  # log-odds per day
        self.a_mu = A.mean(axis=0)
        sd = A.std(axis=0)
        self.a_sd = np.where(sd > 1e-12, sd, 1.0)
        self.ridge = _ridge_fit(self._design(A, rec), y, self.cfg.ridge_l2, sw)
        return self

    def _design(self, A: np.ndarray, rec: np.ndarray) -> np.ndarray:
        Z = (A - self.a_mu) / self.a_sd
        if not self.cfg.content_embedding and self.n_meta:
            Z = Z[:, Z.shape[1] - self.n_meta:]
        r = (np.asarray(rec) / 10.0)[:, None]
        # recency x metadata: e.g. a stated year's effect differs between catalog and new ads
        inter = r * Z[:, Z.shape[1] - self.n_meta:] if self.cfg.recency_interactions else Z[:, :0]
        return np.concatenate([Z, r, inter], axis=1)

    def content(self, A: np.ndarray) -> np.ndarray:
        mu, ym, beta = self.ridge
        return ym + (self._design(A, np.zeros(A.shape[0])) - mu) @ beta

    def nbr(self, ctrs: np.ndarray, recs: np.ndarray) -> float:
        """ctrs / recs: the ``ctr_k`` most similar neighbours' CTRs and recencies (days)."""
        ok = np.isfinite(ctrs)
        lo = float(_logit_ctr(np.array([ctrs[ok].mean() if ok.any() else 0.05]))[0])
        if self.cfg.ctr_drift:
            lo += (0.0 - float(np.mean(recs))) * self.ctr_slope
        return lo


@dataclass
class ContentKNNConfig:
    """Settings of :class:`ContentKNNGenerator` (defaults chosen on pseudo-cold retired ads).

    User part: k neighbours mixed by softmax(similarity / temperature); drift: apply the
    launch-time trend to it; shrink: pull toward the (recency-weighted, drift-corrected) mean
    retired user part, 0 = none, 1 = every cold ad shares one user part.
    Intercept: ``stacked`` (both base predictors combined by least squares on an internal
    pseudo-cold split of the retired ads, the latest ``stack_frac`` by launch; stack_content:
    include the content model's prediction; stack_meta: also regress directly on the metadata
    columns, True = all, "year" = the stated-year block only; stack_l2: ridge penalty of that
    regression, 0 = plain least squares. stack_meta lost on validation and is off),
    ``neighbour_ctr`` (the neighbours' mean CTR), ``content`` (the ridge content model) or
    ``neighbours`` (the mix's own intercept, no shift); ctr_k: neighbours in the CTR mean;
    content_embedding: the content model uses the embedding (else metadata only);
    recency_interactions: add recency x metadata columns to the content model;
    ctr_gain: scale of the predicted log-odds around its centre; quantile_map (stacked only):
    map predictions onto the internal held-out ads' log-odds distribution (restores the spread
    regression shrinks). ridge_l2: ridge penalty (standardised columns);
    user_ratio: rescale each ad's user part so its spread over the user sample (std of the
    user-part logit) is ``user_ratio`` x the spread of the retired ads' log-odds CTR (None =
    keep the mixed scale; per-ad AUC is unchanged by it, pooled AUC and NDCG are not);
    recency_scale_days: sample weight exp(recency / scale) of retired ads (None = uniform);
    user_sample: users in the intercept shift.
    auto_drift: at :meth:`ContentKNNGenerator.fit`, keep the launch-time drift corrections
    (``drift``, ``ctr_drift``) only if the dataset's own retired ads say they help
    (:func:`select_config` on :func:`validation_folds`, production features): a trend fitted
    where weights do not drift is noise, and extrapolating it to the cutoff damages the user
    part (synthetic world: per-ad AUC 0.727 without drift, 0.637 with it).
    """

    k: int = 20
    temperature: float = 0.1
    drift: bool = True
    intercept: str = "stacked"
    ridge_l2: float = 10.0
    recency_scale_days: float | None = 7.0
    shrink: float = 0.0
    ctr_k: int = 20
    ctr_drift: bool = True
    ctr_gain: float = 1.0
    quantile_map: bool = True
    stack_frac: float = 0.2
    stack_content: bool = True
    stack_meta: bool | str = False
    stack_l2: float = 0.0
    content_embedding: bool = True
    recency_interactions: bool = False
    user_ratio: float | None = None
    user_sample: int = 2000
    seed: int = 0
    auto_drift: bool = True

    def validate(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.ctr_k < 1:
            raise ValueError(f"ctr_k must be >= 1, got {self.ctr_k}")
        if self.intercept not in INTERCEPTS:
            raise ValueError(f"intercept must be one of {INTERCEPTS}, got {self.intercept!r}")
        if not self.ridge_l2 > 0:
            raise ValueError(f"ridge_l2 must be > 0, got {self.ridge_l2}")
        if self.recency_scale_days is not None and not self.recency_scale_days > 0:
            raise ValueError(f"recency_scale_days must be > 0 or None, got {self.recency_scale_days}")
        if not 0.0 <= self.shrink <= 1.0:
            raise ValueError(f"shrink must be in [0, 1], got {self.shrink}")
        if not (self.ctr_gain >= 0 and math.isfinite(self.ctr_gain)):
            raise ValueError(f"ctr_gain must be a finite number >= 0, got {self.ctr_gain}")
        if not 0.0 < self.stack_frac < 1.0:
            raise ValueError(f"stack_frac must be in (0, 1), got {self.stack_frac}")
        if self.stack_meta not in (False, True, "year"):
            raise ValueError(f"stack_meta must be false, true or 'year', got {self.stack_meta!r}")
        if not (self.stack_l2 >= 0 and math.isfinite(self.stack_l2)):
            raise ValueError(f"stack_l2 must be a finite number >= 0, got {self.stack_l2}")
        if self.user_ratio is not None and not (self.user_ratio >= 0 and math.isfinite(self.user_ratio)):
            raise ValueError(f"user_ratio must be a finite number >= 0 or None, got {self.user_ratio}")


INTERCEPTS = ("stacked", "neighbour_ctr", "content", "neighbours")


_NUMERIC_OR_NONE = ("recency_scale_days", "user_ratio")


def _check_option_type(key: str, value: Any, default: Any) -> None:
    """Raise ValueError naming ``key`` when ``value`` has the wrong type for the option (a
    string where a number is due, a number where a switch is due, ...)."""
    if key == "stack_meta":
        ok = isinstance(value, (bool, str))
    elif key in _NUMERIC_OR_NONE:
        ok = value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))
    elif isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, (int, float)):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and isinstance(default, int) and not isinstance(default, bool):
            ok = float(value).is_integer()
    elif isinstance(default, str):
        ok = isinstance(value, str)
    else:
        ok = True
    if not ok:
        raise ValueError(f"ContentKNNGenerator option {key!r} must be like {default!r} "
                         f"({type(default).__name__}), got {value!r}")


class ContentKNNGenerator:
    """The improved deterministic cold-start generator (see the module docstring).

    Construct, then ``fit(prepared, users=None)`` once (reads retired ads' weights, CTRs,
    launch times, content and every ad's embedding; ``users`` restricts the user sample of the
    intercept shift, e.g. to training users), then ``generate(ad, neighbours, features)`` per
    cold ad.
    """

    name = "knn-content"

    def __init__(self, config: ContentKNNConfig | None = None, **kwargs: Any) -> None:
        cfg = config or ContentKNNConfig()
        defaults = ContentKNNConfig()
        for key, v in kwargs.items():
            if not hasattr(cfg, key):
                raise ValueError(f"unknown ContentKNNGenerator option {key!r}")
            default = getattr(defaults, key)
            _check_option_type(key, v, default)
            if isinstance(default, int) and not isinstance(default, bool):
                v = int(v)  # 5.0 from JSON is the count 5
            setattr(cfg, key, v)
        cfg.validate()
        self.cfg = cfg
        self._fitted = False

    def config(self) -> dict:
        """The settings (and, once fitted, the stacked intercept coefficients), for the manifest."""
        d = dict(self.cfg.__dict__)
        if getattr(self, "selection", None):
            d["selection"] = self.selection
        if self._fitted and self.stack is not None:
            d["stack_coef"] = [float(v) for v in self.stack]
        return d

    # -- fitting -------------------------------------------------------------------------
    def _recency(self, launched_at: np.ndarray, cutoff: float | None = None) -> np.ndarray:
        """Days relative to the cutoff, clipped at 0 (a cold ad counts as launched at the cutoff)."""
        cut = self.cutoff if cutoff is None else cutoff
        return np.minimum((np.asarray(launched_at, dtype=np.float64) - cut) / DAY, 0.0)

    def _weights(self, rec: np.ndarray) -> np.ndarray | None:
        s = self.cfg.recency_scale_days
        return None if s is None else np.exp(rec / s)

    def _stack_row(self, p_nbr: float | np.ndarray, p_con: float | np.ndarray, meta: np.ndarray) -> np.ndarray:
        """Columns of the stack regression (no constant): [nbr, content?, metadata?], f64[n, p]."""
        c = self.cfg
        cols = [np.atleast_1d(np.asarray(p_nbr, dtype=np.float64))]
        if c.stack_content:
            cols.append(np.atleast_1d(np.asarray(p_con, dtype=np.float64)))
        M = np.atleast_2d(np.asarray(meta, dtype=np.float64))
        out = np.stack(cols, axis=1)
        if c.stack_meta == "year":
            M = M[:, -4:]  # the stated-year block of ContentEncoder
        return np.concatenate([out, M], axis=1) if c.stack_meta and M.shape[1] else out

    def _fit_stack(self, ctr: np.ndarray, launched: np.ndarray, A: np.ndarray, emb: np.ndarray) -> None:
        """Ridge weights of [nbr, content, metadata] -> log-odds CTR on the latest
        ``stack_frac`` retired ads, base predictors fitted on the earlier ones."""
        c = self.cfg
        cut = float(np.quantile(launched, 1.0 - c.stack_frac))
        pool, held = np.flatnonzero(launched < cut), np.flatnonzero(launched >= cut)
        if pool.size < 2 or held.size < 3:
            raise ValueError(f"stacked intercept needs more retired ads (got {launched.size})")
        rec = self._recency(launched[pool], cut)
        base = _BaseIntercepts(c).fit(ctr[pool], rec, A[pool], self._weights(rec), self.n_meta)
        sims = emb[held] @ emb[pool].T
        top = np.argsort(-sims, axis=1, kind="stable")[:, : min(c.ctr_k, pool.size)]
        p_nbr = np.array([base.nbr(ctr[pool][t], rec[t]) for t in top])
        P = self._stack_row(p_nbr, base.content(A[held]), A[held][:, A.shape[1] - self.n_meta:])
        y = _logit_ctr(ctr[held])
        if c.stack_l2 > 0:
            mu, ym, beta = _ridge_fit(P, y, c.stack_l2, None)
            self.stack = np.concatenate([[ym - float(mu @ beta)], beta])
        else:
            self.stack = np.linalg.lstsq(np.concatenate([np.ones((held.size, 1)), P], axis=1), y, rcond=None)[0]
        fitted = self.stack[0] + P @ self.stack[1:]
        self.stack_center = float(fitted.mean())
        self.qmap = (np.sort(fitted), np.sort(y))

    def fit_arrays(self, warm_theta: np.ndarray, warm_ctr: np.ndarray, warm_launched: np.ndarray,
                   warm_emb: np.ndarray, cutoff: float, X_users: np.ndarray,
                   emb_by_id: dict[str, np.ndarray], warm_ads: Sequence[Any] | None = None) -> "ContentKNNGenerator":
        """Fit from plain arrays: retired weights f[W,F], CTRs [W], launch times (unix s) [W],
        embeddings [W,d]; cutoff (unix s); user feature rows f[S,F] for the intercept shift;
        content embedding of every ad that may be generated, by ad id; the retired ``Ad``
        records (category, title/description years for the content model; None = embedding only)."""
        c = self.cfg
        W = np.asarray(warm_theta, dtype=np.float64)
        ctr = np.asarray(warm_ctr, dtype=np.float64)
        launched = np.asarray(warm_launched, dtype=np.float64)
        emb = np.asarray(warm_emb, dtype=np.float64)
        self.cutoff = float(cutoff)
        rec = self._recency(launched)
        sw = self._weights(rec)
        # drift: weighted linear trend of every weight over launch time
        w = np.ones(W.shape[0]) if sw is None else sw
        D = np.stack([np.ones_like(rec), rec], axis=1)
        G = D.T @ (w[:, None] * D)
        self.slope = np.linalg.solve(G, D.T @ (w[:, None] * W))[1]  # [F] per day
        # shrink target: the recency-weighted mean weights, moved by the trend to the cutoff
        self.mean_theta = (w[:, None] * W).sum(axis=0) / w.sum() - float((w * rec).sum() / w.sum()) * self.slope
        self.encoder = ContentEncoder().fit(warm_ads) if warm_ads is not None else None
        A = self._content_rows(warm_ads, emb)
        self.n_meta = A.shape[1] - emb.shape[1]
        self.base = _BaseIntercepts(c).fit(ctr, rec, A, sw, self.n_meta)
        self.ctr_center, self.ctr_slope = self.base.ctr_center, self.base.ctr_slope
        self.lo_sd = float(np.std(_logit_ctr(ctr)))
        self.stack = None
        if c.intercept == "stacked":
            self._fit_stack(ctr, launched, A, emb)
        X = np.asarray(X_users, dtype=np.float64)
        if X.shape[0] > c.user_sample:
            X = X[np.sort(np.random.default_rng(c.seed).choice(X.shape[0], c.user_sample, replace=False))]
        self.X_sample = X
        self.emb_by_id = emb_by_id
        self._fitted = True
        return self

    def _content_rows(self, ads: Sequence[Any] | None, emb: np.ndarray) -> np.ndarray:
        if self.encoder is None or ads is None:
            return np.asarray(emb, dtype=np.float64).reshape(emb.shape[0] if np.ndim(emb) == 2 else 1, -1)
        return self.encoder.transform(ads, emb)

    def fit(self, prep: "Prepared", users: np.ndarray | None = None) -> "ContentKNNGenerator":
        """Fit on a prepared build (retired ads only); ``users``: user indices for the shift sample.

        With ``auto_drift`` (and drift on), first choose between the configured drift settings
        and drift off on pseudo-cold folds of the retired ads (see :class:`ContentKNNConfig`);
        the scores are kept in ``self.selection`` and the manifest (:attr:`config`)."""
        ds, sp = prep.dataset, prep.split
        if self.cfg.auto_drift and (self.cfg.drift or self.cfg.ctr_drift):
            self._choose_drift(prep)
        X = ds.X if users is None else ds.X[np.asarray(users)]
        ids = ds.ad_ids
        emb_by_id = {ids[i]: prep.emb[i] for i in range(len(ids))}
        return self.fit_arrays(prep.warm_theta, prep.warm_ctr, ds.launched_at[sp.warm], prep.emb[sp.warm],
                               sp.cutoff, X, emb_by_id, warm_ads=[ds.ads[i] for i in sp.warm])

    def _choose_drift(self, prep: "Prepared") -> None:
        base = {k: v for k, v in self.cfg.__dict__.items() if k != "auto_drift"}
        candidates = {"drift as configured": {**base, "auto_drift": False},
                      "drift off": {**base, "drift": False, "ctr_drift": False, "auto_drift": False}}
        try:
            folds = validation_folds(prep)
        except ValueError as e:  # too few retired ads to hold some out: keep the configuration
            self.selection = {"skipped": str(e)}
            return
        best, table = select_config(prep, candidates, folds, k_retrieve=self.cfg.k)
        self.selection = {"chosen": best, "objective": {n: round(m["objective"], 4) for n, m in table.items()}}
        if best == "drift off":
            self.cfg.drift = self.cfg.ctr_drift = False

    def register_embedding(self, ad_id: str, emb: np.ndarray) -> None:
        """Make the content embedding f[d] of an ad the generator was not fitted with known (e.g.
        a rewritten ad in the counterfactual study), so its intercept uses its own content."""
        if not self._fitted:
            raise ValueError("ContentKNNGenerator.fit(prepared) must run before register_embedding")
        e = np.asarray(emb, dtype=np.float64).ravel()
        if not np.all(np.isfinite(e)):
            raise ValueError(f"embedding of {ad_id!r} is not finite")
        self.emb_by_id = {**self.emb_by_id, ad_id: e}

    def predict_logit_ctr(self, emb: np.ndarray, launched_at: float, ad: Any | None = None) -> float:
        """The content model's log-odds CTR for one ad (embedding f[d], launch time unix s; ``ad``
        supplies category and stated year when the generator was fitted with retired ads)."""
        if ad is None:
            ad = SimpleAd(launched_at)
        return float(self.base.content(self._content_rows([ad], np.asarray(emb)[None, :]))[0])

    # -- generation ----------------------------------------------------------------------
    def intercept_logit(self, ad: "Ad", neighbours: Sequence[Neighbour]) -> float:
        """The predicted log-odds CTR of a cold ad (before ``ctr_gain``'s centring is undone:
        the value the intercept shift targets), per ``intercept``."""
        c = self.cfg
        by_sim = sorted(range(len(neighbours)), key=lambda i: (-float(neighbours[i].similarity), i))[: c.ctr_k]
        ctrs = np.array([neighbours[i].mean_ctr for i in by_sim], dtype=np.float64)
        recs = self._recency(np.array([neighbours[i].ad.launched_at for i in by_sim]))
        p_nbr = self.base.nbr(ctrs, recs)
        emb = self.emb_by_id.get(ad.ad_id)
        if c.intercept == "neighbour_ctr" or emb is None:  # (also the fallback without an embedding)
            return self.ctr_center + c.ctr_gain * (p_nbr - self.ctr_center)
        p_con = self.predict_logit_ctr(emb, ad.launched_at, ad)
        if c.intercept == "content":
            return self.ctr_center + c.ctr_gain * (p_con - self.ctr_center)
        meta = self._content_rows([ad], np.asarray(emb)[None, :])[:, -self.n_meta:] if self.n_meta else np.zeros((1, 0))
        lo = float(self.stack[0] + self._stack_row(p_nbr, p_con, meta)[0] @ self.stack[1:])
        if c.quantile_map:
            lo = float(np.interp(lo, *self.qmap))
        return self.stack_center + c.ctr_gain * (lo - self.stack_center)

    def generate(self, ad: "Ad", neighbours: list[Neighbour], features: list[tuple[str, str]]) -> Generated:
        """Weights f32[F] for one cold ad (index 0 = intercept); samples = the mixed neighbours."""
        if not self._fitted:
            raise ValueError("ContentKNNGenerator.fit(prepared) must run before generate")
        c = self.cfg
        F = len(features)
        if F != self.slope.shape[0]:
            raise ValueError(f"fitted on {self.slope.shape[0]} features, got {F}")
        if features[0][0] != "bias":
            raise ValueError(f"features[0] must be the intercept 'bias', got {features[0][0]!r}")
        check_neighbours(ad, neighbours, F)
        order = sorted(range(len(neighbours)), key=lambda i: (-float(neighbours[i].similarity), i))[: c.k]
        T = np.stack([np.asarray(neighbours[i].theta, dtype=np.float64) for i in order])
        w = RawKNNGenerator(temperature=c.temperature).mix_weights(
            np.array([float(neighbours[i].similarity) for i in order]))
        theta = w @ T
        if c.drift:
            nb_rec = self._recency(np.array([neighbours[i].ad.launched_at for i in order]))
            theta = theta + (0.0 - float(w @ nb_rec)) * self.slope
        if c.shrink > 0:
            theta[1:] = (1 - c.shrink) * theta[1:] + c.shrink * self.mean_theta[1:]
        if c.user_ratio is not None:
            sd = float(np.std(self.X_sample[:, 1:] @ theta[1:]))
            if sd > 1e-12:
                theta[1:] *= c.user_ratio * self.lo_sd / sd
        if c.intercept != "neighbours":
            target = float(expit(self.intercept_logit(ad, neighbours)))
            theta[0] += solve_shift(self.X_sample @ theta, target)
        return _generated(theta, T)


@dataclass
class SimpleAd:
    """A content-less stand-in ad (only a launch time) for :meth:`predict_logit_ctr`."""

    launched_at: float
    title: str = ""
    description: str = ""
    category: str = ""


# ------------------------------------------------------------------------ tuning on retired ads
def pseudo_cold_validation(prep: "Prepared", configs: dict[str, dict], frac: float = 0.2,
                           k_retrieve: int = 20, X_users: np.ndarray | None = None,
                           pool_theta: np.ndarray | None = None) -> dict[str, dict[str, float]]:
    """Score generator settings on RETIRED ads only: the latest ``frac`` of retired ads by launch
    time play the cold ads; the rest are their retired pool (neighbours by cosine of the content
    embeddings, ``k_retrieve`` of them as in the evaluation, intercept model and drift fitted on
    the pool). Labels of the pseudo-cold ads (retired data) score AUC, per-ad AUC, NDCG@10 and
    the Spearman correlation of the predicted with the observed log-odds CTR, over all users.

    Faithful variant: ``X_users`` f[N, F] = user features computed WITHOUT the pseudo-cold ads'
    interactions (e.g. ``load_movielens(feature_cutoff=...)``) and ``pool_theta`` f[P, F] = the
    pool's weights retrained on them (pool order = retired ads launched before the pseudo cut),
    so the user part is no more informative than it is for truly cold ads.

    configs: name -> ContentKNNGenerator options, or entries with key ``"_raw": True`` (and
    optional k, temperature) for the plain softmax mix. Returns name -> metrics.
    """
    from scipy.stats import spearmanr

    from offline import metrics as M

    ds, sp = prep.dataset, prep.split
    lt = ds.launched_at[sp.warm]
    cut = float(np.quantile(lt, 1.0 - frac))
    pool = np.flatnonzero(lt < cut)
    held = np.flatnonzero(lt >= cut)
    X = ds.X if X_users is None else np.asarray(X_users)
    Wp = prep.warm_theta[pool] if pool_theta is None else np.asarray(pool_theta, dtype=np.float32)
    if Wp.shape != (pool.size, X.shape[1]):
        raise ValueError(f"pool_theta must be [{pool.size}, {X.shape[1]}], got {Wp.shape}")
    emb = prep.emb[sp.warm]
    sims = emb[held] @ emb[pool].T
    kk = min(k_retrieve, pool.size)
    nbr = np.argsort(-sims, axis=1, kind="stable")[:, :kk]
    Y = ds.labels(sp.warm[held])
    y_lo = _logit_ctr(prep.warm_ctr[held])
    ids = ds.ad_ids
    emb_by_id = {ids[sp.warm[j]]: emb[j] for j in held}
    feats = list(ds.features)
    pool_ads = [ds.ads[sp.warm[p]] for p in pool]
    out: dict[str, dict[str, float]] = {}
    for name, opts in configs.items():
        opts = dict(opts)
        raw = opts.pop("_raw", False)
        thetas = np.empty((held.size, len(feats)), dtype=np.float32)
        pred = np.full(held.size, np.nan)
        if not raw:
            gen = ContentKNNGenerator(**opts)
            gen.fit_arrays(Wp, prep.warm_ctr[pool], lt[pool], emb[pool], cut, X, emb_by_id, warm_ads=pool_ads)
        for r, j in enumerate(held):
            nbs = [Neighbour(ad=pool_ads[p], theta=Wp[p], similarity=float(sims[r, p]),
                             mean_ctr=float(prep.warm_ctr[pool[p]])) for p in nbr[r]]
            ad = ds.ads[sp.warm[j]]
            if raw:
                k, t = opts.get("k", 10), opts.get("temperature", 0.05)
                w = RawKNNGenerator(k=k, temperature=t).mix_weights(np.array([nb.similarity for nb in nbs[:k]]))
                thetas[r] = w @ np.stack([nb.theta for nb in nbs[:k]])
            else:
                thetas[r] = gen.generate(ad, nbs, feats).theta
                if gen.cfg.intercept != "neighbours":
                    pred[r] = gen.intercept_logit(ad, nbs)
        S = X.astype(np.float64) @ thetas.T.astype(np.float64)
        out[name] = {"auc": M.auc(Y, S), "ndcg10": M.ndcg_at_k(Y, S, 10), "per_ad_auc": M.mean_per_ad_auc(Y, S),
                     "ctr_spearman": float(spearmanr(pred, y_lo)[0]) if np.isfinite(pred).all() else float("nan")}
    return out


# ------------------------------------------------------ covariate-shift-aware model selection
def _logreg_newton(Z: np.ndarray, y: np.ndarray, l2: float, iters: int = 50) -> np.ndarray:
    """L2 logistic regression (intercept unpenalised) by Newton's method: Z f64[n, p], y 0/1
    [n] -> beta [p + 1] (index 0 = intercept)."""
    D = np.concatenate([np.ones((Z.shape[0], 1)), Z], axis=1)
    b = np.zeros(D.shape[1])
    pen = np.full(D.shape[1], l2)
    pen[0] = 0.0
    for _ in range(iters):
        p = expit(D @ b)
        g = D.T @ (p - y) + pen * b
        H = (D * (p * (1 - p))[:, None]).T @ D + np.diag(pen + 1e-9)
        step = np.linalg.solve(H, g)
        b -= step
        if np.max(np.abs(step)) < 1e-8:
            break
    return b


def shift_weights(A_src: np.ndarray, A_tgt: np.ndarray, l2: float = 1.0, cap: float = 10.0) -> np.ndarray:
    """Importance weights that make source rows resemble target rows (covariate shift).

    A_src f[n_s, p] (e.g. content features of retired pseudo-cold ads), A_tgt f[n_t, p] (the
    cold ads' content, known at launch; no label is read). An L2 logistic classifier
    (standardised columns, penalty ``l2``) separates target from source;
    w(x) = p(tgt|x) / p(src|x), normalised to mean 1 over the source, capped at ``cap`` and
    renormalised. Returns f64[n_s] > 0."""
    A_src = np.asarray(A_src, dtype=np.float64)
    A_tgt = np.asarray(A_tgt, dtype=np.float64)
    if A_src.ndim != 2 or A_tgt.ndim != 2 or A_src.shape[1] != A_tgt.shape[1]:
        raise ValueError(f"A_src / A_tgt must be [n, p] with equal p, got {A_src.shape} / {A_tgt.shape}")
    if A_src.shape[0] == 0 or A_tgt.shape[0] == 0:
        raise ValueError("shift_weights needs at least one source and one target row")
    if not cap >= 1.0:
        raise ValueError(f"cap must be >= 1, got {cap}")
    A = np.concatenate([A_src, A_tgt])
    mu, sd = A.mean(axis=0), A.std(axis=0)
    keep = sd > 1e-12
    Z = (A[:, keep] - mu[keep]) / sd[keep]
    y = np.r_[np.zeros(A_src.shape[0]), np.ones(A_tgt.shape[0])]
    b = _logreg_newton(Z, y, l2)
    w = np.exp(b[0] + Z[: A_src.shape[0]] @ b[1:])  # odds p(tgt|x) / p(src|x)
    for _ in range(200):  # renormalise and cap until the cap holds at mean 1
        w = w / w.mean()
        if w.max() <= cap * (1 + 1e-9):
            break
        w = np.minimum(w, cap)
    return w


def effective_size(w: np.ndarray) -> float:
    """Kish effective sample size (sum w)^2 / sum w^2 of importance weights."""
    w = np.asarray(w, dtype=np.float64)
    return float(w.sum() ** 2 / (w ** 2).sum())


def weighted_auc(Y: np.ndarray, S: np.ndarray, w_ad: np.ndarray) -> float:
    """AUC over all (user, ad) pairs, each pair weighted by its ad's weight (ties count half).
    Y 0/1 [N, A], S [N, A], w_ad [A] >= 0. Equals :func:`offline.metrics.auc` for equal weights."""
    Y = np.asarray(Y, dtype=np.float64)
    S = np.asarray(S, dtype=np.float64)
    w = np.broadcast_to(np.asarray(w_ad, dtype=np.float64)[None, :], Y.shape).ravel()
    y = Y.ravel()
    _, inv = np.unique(S.ravel(), return_inverse=True)
    wp = np.bincount(inv, weights=w * y)
    wn = np.bincount(inv, weights=w * (1.0 - y))
    den = wp.sum() * wn.sum()
    if den <= 0:
        return float("nan")
    below = np.cumsum(wn) - wn
    return float((wp * (below + 0.5 * wn)).sum() / den)


def weighted_metrics(Y: np.ndarray, S: np.ndarray, w_ad: np.ndarray, n_draws: int = 20,
                     seed: int = 0) -> dict[str, float]:
    """Importance-weighted validation metrics of scores S [N, A] against labels Y [N, A]:
    ``auc`` (:func:`weighted_auc`), ``per_ad_auc`` (w-weighted mean of the per-ad AUCs) and
    ``ndcg10`` (mean NDCG@10 over ``n_draws`` subsets of A // 2 ads drawn without replacement
    with probability ~ w: ranking needs a set of ads, so the set is resampled; the same draws for
    every call with the same seed, so configurations are compared on common random numbers)."""
    from offline import metrics as M

    w = np.asarray(w_ad, dtype=np.float64)
    pa = M.per_ad_auc(Y, S)
    ok = np.isfinite(pa)
    rng = np.random.default_rng(seed)
    m = max(10, Y.shape[1] // 2)
    nd = []
    for _ in range(n_draws):
        keys = np.log(np.maximum(w, 1e-300)) + rng.gumbel(size=w.size)
        sub = np.sort(np.argsort(-keys)[:m])
        nd.append(M.ndcg_at_k(Y[:, sub], S[:, sub], 10))
    return {"auc": weighted_auc(Y, S, w), "per_ad_auc": float((w[ok] * pa[ok]).sum() / w[ok].sum()),
            "ndcg10": float(np.mean(nd))}


@dataclass
class ValidationFold:
    """One pseudo-cold fold of retired ads. held / pool: positions in ``prep.split.warm``
    (held ads launched in [cut, end), pool ads before ``cut``, unix s); X f[N, F]: user features
    (faithful: computed without the held ads' ratings); pool_theta f[P, F]: the pool's weights
    on those features; weights f64[H]: importance weights of the held ads toward the cold ads."""

    held: np.ndarray
    pool: np.ndarray
    cut: float
    X: np.ndarray
    pool_theta: np.ndarray
    weights: np.ndarray


def shift_features(prep: "Prepared", idx: np.ndarray, n_pcs: int = 5) -> np.ndarray:
    """Content features of ads ``idx`` (dataset indices) for the cold-vs-retired classifier:
    the metadata block of :class:`ContentEncoder` (category one-hot, stated-year age at launch;
    encoder fitted on retired ads) plus the top ``n_pcs`` principal components of the
    embeddings (fitted on retired and cold ads). No launch recency: it separates the sets by
    construction. Returns f64[len(idx), p]."""
    ds, sp = prep.dataset, prep.split
    enc = ContentEncoder().fit([ds.ads[i] for i in sp.warm])
    d = prep.emb.shape[1]
    meta = enc.transform([ds.ads[i] for i in idx], prep.emb[idx])[:, d:]
    if n_pcs <= 0:
        return meta
    E = np.asarray(prep.emb[np.concatenate([sp.warm, sp.cold])], dtype=np.float64)
    mu = E.mean(axis=0)
    _, _, Vt = np.linalg.svd(E - mu, full_matrices=False)
    return np.concatenate([meta, (np.asarray(prep.emb[idx], dtype=np.float64) - mu) @ Vt[:n_pcs].T], axis=1)


def validation_folds(prep: "Prepared", edges: Sequence[float] = (0.6, 0.8, 1.0),
                     features_at: Any = None, n_pcs: int = 5, cap: float = 10.0,
                     l2_shift: float = 1.0) -> list[ValidationFold]:
    """Rolling-origin pseudo-cold folds over the RETIRED ads, weighted toward the cold ads.

    ``edges`` are quantiles of the retired ads' launch times: fold i holds out the ads launched
    in [q(edges[i]), q(edges[i+1])) (the last fold includes the end) and uses the ads launched
    before q(edges[i]) as its pool (neighbours, weights, intercept model). ``features_at``:
    callable cutoff (unix s) -> user features f[N, F] computed without ratings of retired ads
    launched at or after the cutoff (MovieLens: ``load_movielens(path, feature_cutoff=cut).X``);
    the pool is then retrained on them with the build's l2 (faithful: the held ads' labels shape
    neither features nor weights). None = production features and weights (optimistic for the
    user part). Importance weights: :func:`shift_weights` of each fold's held ads toward the cold
    ads on :func:`shift_features` (content only; no cold label is read)."""
    from offline.stages import train

    ds, sp = prep.dataset, prep.split
    lt = ds.launched_at[sp.warm]
    e = list(edges)
    if len(e) < 2 or any(not 0.0 < a < b <= 1.0 for a, b in zip(e, e[1:])):
        raise ValueError(f"edges must be increasing quantiles in (0, 1], got {edges}")
    A_cold = shift_features(prep, sp.cold, n_pcs)
    folds = []
    for a, b in zip(e, e[1:]):
        cut, hi = float(np.quantile(lt, a)), float(np.quantile(lt, b))
        pool = np.flatnonzero(lt < cut)
        held = np.flatnonzero((lt >= cut) & ((lt < hi) if b < 1.0 else True))
        if pool.size < 10 or held.size < 10:
            raise ValueError(f"fold [{a}, {b}) has {pool.size} pool / {held.size} held ads; widen the edges")
        if features_at is None:
            X, Wp = np.asarray(ds.X), np.asarray(prep.warm_theta[pool])
        else:
            X = np.asarray(features_at(cut))
            Wp = train.train_logreg(np.ascontiguousarray(X), ds.labels(sp.warm[pool]), prep.l2)
        w = shift_weights(shift_features(prep, sp.warm[held], n_pcs), A_cold, l2_shift, cap)
        folds.append(ValidationFold(held=held, pool=pool, cut=cut, X=X, pool_theta=Wp, weights=w))
    return folds


def score_fold(prep: "Prepared", fold: ValidationFold, opts: dict, k_retrieve: int = 20,
               n_draws: int = 20) -> dict[str, float]:
    """Weighted validation metrics (:func:`weighted_metrics`, plus unweighted ``auc_u``,
    ``ndcg10_u``, ``per_ad_auc_u``) of one configuration on one fold. ``opts``:
    ContentKNNGenerator options, or ``{"_raw": True, k, temperature}`` (plain softmax mix of
    neighbour weights), or ``{"_popularity": True}`` (intercept = logit of the neighbours' mean
    CTR, no user part)."""
    from offline import metrics as M

    ds, sp = prep.dataset, prep.split
    lt = ds.launched_at[sp.warm]
    pool, held = fold.pool, fold.held
    emb = prep.emb[sp.warm]
    sims = emb[held] @ emb[pool].T
    nbr = np.argsort(-sims, axis=1, kind="stable")[:, : min(k_retrieve, pool.size)]
    ctr = prep.warm_ctr
    feats = list(ds.features)
    pool_ads = [ds.ads[sp.warm[p]] for p in pool]
    emb_by_id = {ds.ad_ids[sp.warm[j]]: emb[j] for j in held}
    opts = dict(opts)
    raw, pop = opts.pop("_raw", False), opts.pop("_popularity", False)
    gen = None
    if not (raw or pop):
        gen = ContentKNNGenerator(**opts).fit_arrays(fold.pool_theta, ctr[pool], lt[pool], emb[pool], fold.cut,
                                                     fold.X, emb_by_id, warm_ads=pool_ads)
    thetas = np.zeros((held.size, len(feats)))
    for r, j in enumerate(held):
        nbs = [Neighbour(ad=pool_ads[p], theta=fold.pool_theta[p], similarity=float(sims[r, p]),
                         mean_ctr=float(ctr[pool[p]])) for p in nbr[r]]
        if pop:
            thetas[r, 0] = float(_logit_ctr(np.array([np.mean([nb.mean_ctr for nb in nbs])]))[0])
        elif raw:
            k, t = opts.get("k", 10), opts.get("temperature", 0.05)
            wt = RawKNNGenerator(k=k, temperature=t).mix_weights(np.array([nb.similarity for nb in nbs[:k]]))
            thetas[r] = wt @ np.stack([nb.theta for nb in nbs[:k]])
        else:
            thetas[r] = gen.generate(ds.ads[sp.warm[j]], nbs, feats).theta
    Y = ds.labels(sp.warm[held])
    S = np.asarray(fold.X, dtype=np.float64) @ thetas.T
    out = weighted_metrics(Y, S, fold.weights, n_draws=n_draws)
    out.update(auc_u=M.auc(Y, S), ndcg10_u=M.ndcg_at_k(Y, S, 10), per_ad_auc_u=M.mean_per_ad_auc(Y, S))
    return out


SELECTION_OBJECTIVE = ("auc", "ndcg10", "per_ad_auc")


def select_config(prep: "Prepared", candidates: dict[str, dict], folds: Sequence[ValidationFold],
                  objective: Sequence[str] = SELECTION_OBJECTIVE, k_retrieve: int = 20,
                  n_draws: int = 20) -> tuple[str, dict[str, dict[str, float]]]:
    """Score every candidate configuration on every fold and pick the best by the objective:
    the sum of the importance-weighted metrics named in ``objective`` (default: AUC + NDCG@10 +
    per-ad AUC, the issue's three bars), averaged over folds. Only retired ads' labels are read.
    Returns (best name, name -> mean metrics over folds plus ``objective``)."""
    if not candidates:
        raise ValueError("select_config needs at least one candidate")
    if not folds:
        raise ValueError("select_config needs at least one validation fold")
    table: dict[str, dict[str, float]] = {}
    for name, opts in candidates.items():
        rows = [score_fold(prep, f, opts, k_retrieve, n_draws) for f in folds]
        m = {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}
        m["objective"] = float(sum(m[key] for key in objective))
        table[name] = m
    best = max(table, key=lambda n: table[n]["objective"])
    return best, table
