"""``ContentKNNGenerator`` (config and label ``knn-content``): the deterministic default.

It uses only what a cold ad has at launch: its content embedding, its launch time, its
retrieved neighbours with their trained weights and observed CTRs, and the feature
definitions. Fitting reads retired (warm) ads only.

* User part (every weight but the intercept): softmax(similarity / temperature) mix of the
  top-``k`` neighbours' trained weights, plus a *drift* correction: the per-feature linear trend
  of retired weights over launch time (recency-weighted), applied from the neighbours' mean
  launch time to the cutoff.
* Intercept (default ``stacked``): solved (eq. 2 shift over a user sample) so the ad's mean
  predicted CTR equals a predicted CTR. Two base predictors of the log-odds CTR, the
  neighbours' mean CTR moved by the launch-time trend and a ridge content model
  (:class:`~offline.data.content.ContentEncoder`) scored at the cutoff, are combined by least
  squares fitted on an internal pseudo-cold split of the retired ads (the latest
  ``stack_frac``), then quantile-mapped onto those held-out ads' log-odds distribution.
* ``auto_select``: at ``fit``, each component (the drift corrections, the intercept model) is
  kept only if the dataset's own retired ads say it helps, and only in a combination that beats
  raw kNN on *every* part of the retired-only objective (AUC, NDCG@10, per-ad AUC), not just on
  their sum (:func:`offline.selection.select.guarded_choice`). When no combination does, the
  generator writes raw kNN's weights.

How the defaults were chosen, and the options that lost and were removed, are in the README
("How the default generator was chosen").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, Sequence

import numpy as np
from pydantic import BeforeValidator, Field
from scipy.special import expit

from offline.config import ConfigError, StrictConfig

from offline.data.content import DAY, ContentEncoder
from offline.generators.common import deterministic, logit_ctr
from offline.generators.knn import RawKNNGenerator
from offline.selection.folds import validation_folds
from offline.selection.select import SELECTION_OBJECTIVE, guarded_choice, select_config
from offline.stages.calibrate import solve_shift
from offline.types import Generated, Neighbour, check_neighbours

if TYPE_CHECKING:  # pragma: no cover
    from offline.data.dataset import Ad
    from offline.stages.prepared import Prepared

__all__ = ["ContentKNNConfig", "ContentKNNGenerator", "INTERCEPTS"]


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
        y = logit_ctr(ctr)
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
        lo = float(logit_ctr(np.array([ctrs[ok].mean() if ok.any() else 0.05]))[0])
        if self.cfg.ctr_drift:
            lo += (0.0 - float(np.mean(recs))) * self.ctr_slope
        return lo


def _integral(v: Any) -> Any:
    """5.0 (a JSON number) is the count 5; anything else is left for the strict int check."""
    return int(v) if isinstance(v, float) and v.is_integer() else v


Count = Annotated[int, BeforeValidator(_integral), Field(ge=1)]


class ContentKNNConfig(StrictConfig):
    """Settings of :class:`ContentKNNGenerator` (defaults chosen on pseudo-cold retired ads).

    User part: ``k`` neighbours mixed by softmax(similarity / ``temperature``); ``drift``: apply
    the launch-time trend to it. Intercept: ``stacked`` (both base predictors combined by least
    squares on the latest ``stack_frac`` retired ads by launch; ``stack_content``: include the
    content model; ``stack_l2``: ridge penalty of that regression, 0 = least squares;
    ``quantile_map``: map the prediction onto the held-out ads' log-odds distribution),
    ``neighbour_ctr`` (the neighbours' mean CTR), ``content`` (the ridge content model) or
    ``neighbours`` (the mix's own intercept, no shift). ``ctr_k``: neighbours in the CTR mean;
    ``ctr_drift``: move it by the launch-time trend; ``ctr_gain``: scale of the predicted log-odds
    around its centre; ``content_embedding``: the content model uses the embedding (else metadata
    only); ``recency_interactions``: add recency x metadata columns to it; ``ridge_l2``: its ridge
    penalty (standardised columns); ``recency_scale_days``: sample weight exp(recency / scale) of
    retired ads (None = uniform); ``user_sample``: users in the intercept shift; ``auto_select``
    (formerly ``auto_drift``, still accepted): choose which components to keep on the retired
    ads' validation folds, guarded by raw kNN (module docstring).
    """

    k: Count = 20
    temperature: Annotated[float, Field(gt=0)] = 0.1
    drift: bool = True
    intercept: Literal["stacked", "neighbour_ctr", "content", "neighbours"] = "stacked"
    ridge_l2: Annotated[float, Field(gt=0)] = 10.0
    recency_scale_days: Annotated[float, Field(gt=0)] | None = 7.0
    ctr_k: Count = 20
    ctr_drift: bool = True
    ctr_gain: Annotated[float, Field(ge=0)] = 1.0
    quantile_map: bool = True
    stack_frac: Annotated[float, Field(gt=0, lt=1)] = 0.2
    stack_content: bool = True
    stack_l2: Annotated[float, Field(ge=0)] = 0.0
    content_embedding: bool = True
    recency_interactions: bool = False
    user_sample: Count = 2000
    seed: Annotated[int, BeforeValidator(_integral)] = 0
    auto_select: bool = True


# raw kNN as the evaluation reports it (the row a default must not fall below)
RAW_REFERENCE_K = 10
INTERCEPTS = ("stacked", "neighbour_ctr", "content", "neighbours")


class ContentKNNGenerator:
    """The improved deterministic cold-start generator (see the module docstring).

    Construct, then ``fit(prepared, users=None)`` once (reads retired ads' weights, CTRs,
    launch times, content and every ad's embedding; ``users`` restricts the user sample of the
    intercept shift, e.g. to training users), then ``generate(ad, neighbours, features)`` per
    cold ad.
    """

    name = "knn-content"

    def __init__(self, config: ContentKNNConfig | None = None, **kwargs: Any) -> None:
        if "auto_drift" in kwargs:  # the option's name before it also chose the intercept model
            kwargs["auto_select"] = kwargs.pop("auto_drift")
        unknown = sorted(set(kwargs) - set(ContentKNNConfig.model_fields))
        if unknown:
            raise ConfigError(f"unknown ContentKNNGenerator option {unknown[0]!r}; known: "
                              f"{sorted(ContentKNNConfig.model_fields)}")
        base = config.model_dump() if config is not None else {}
        self.cfg = ContentKNNConfig(**{**base, **kwargs})
        self._fitted = False
        self.raw: RawKNNGenerator | None = None  # set when selection found raw kNN unbeaten

    def config(self) -> dict:
        """The settings (and, once fitted, the stacked intercept coefficients), for the manifest."""
        d = self.cfg.model_dump()
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

    def _stack_row(self, p_nbr: float | np.ndarray, p_con: float | np.ndarray) -> np.ndarray:
        """Columns of the stack regression (no constant): [nbr, content?], f64[n, p]."""
        cols = [np.atleast_1d(np.asarray(p_nbr, dtype=np.float64))]
        if self.cfg.stack_content:
            cols.append(np.atleast_1d(np.asarray(p_con, dtype=np.float64)))
        return np.stack(cols, axis=1)

    def _fit_stack(self, ctr: np.ndarray, launched: np.ndarray, A: np.ndarray, emb: np.ndarray) -> None:
        """Least-squares (or ridge) weights of [nbr, content] -> log-odds CTR on the latest
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
        P = self._stack_row(p_nbr, base.content(A[held]))
        y = logit_ctr(ctr[held])
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
        self.encoder = ContentEncoder().fit(warm_ads) if warm_ads is not None else None
        A = self._content_rows(warm_ads, emb)
        self.n_meta = A.shape[1] - emb.shape[1]
        self.base = _BaseIntercepts(c).fit(ctr, rec, A, sw, self.n_meta)
        self.ctr_center, self.ctr_slope = self.base.ctr_center, self.base.ctr_slope
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

        With ``auto_select``, first choose the components to keep on pseudo-cold folds of the
        retired ads (:meth:`_choose_components`); the scores are kept in ``self.selection`` and
        the manifest (:attr:`config`)."""
        ds, sp = prep.dataset, prep.split
        if self.cfg.auto_select:
            self._choose_components(prep)
        X = ds.X if users is None else ds.X[np.asarray(users)]
        ids = ds.ad_ids
        emb_by_id = {ids[i]: prep.emb[i] for i in range(len(ids))}
        return self.fit_arrays(prep.warm_theta, prep.warm_ctr, ds.launched_at[sp.warm], prep.emb[sp.warm],
                               sp.cutoff, X, emb_by_id, warm_ads=[ds.ads[i] for i in sp.warm])

    def _choose_components(self, prep: "Prepared") -> None:
        """Score every combination of the configured components (drift on/off where drift is on,
        intercept model on/off where it is not ``neighbours``) and raw kNN on the retired ads'
        folds; keep the best combination that beats raw kNN on every part of the objective
        (:func:`guarded_choice`), else write raw kNN's weights (``self.raw``)."""
        c = self.cfg
        base = c.model_dump(exclude={"auto_select"})
        drifts = [True, False] if (c.drift or c.ctr_drift) else [False]
        models = [True, False] if c.intercept != "neighbours" else [False]
        candidates: dict[str, dict] = {}
        for d in drifts:
            for m in models:
                opts = {**base, "auto_select": False}
                if not d:
                    opts.update(drift=False, ctr_drift=False)
                if not m:
                    opts["intercept"] = "neighbours"
                name = ("drift " + ("as configured" if d else "off")) + (
                    ", intercept " + ("model" if m else "from neighbours") if c.intercept != "neighbours" else "")
                candidates[name] = opts
        try:
            folds = validation_folds(prep)
        except ValueError as e:  # too few retired ads to hold some out: keep the configuration
            self.selection = {"skipped": str(e)}
            return
        _, table = select_config(prep, candidates, folds, ContentKNNGenerator, k_retrieve=c.k)
        ref_name, ref = "knn-raw", select_config(prep, {"knn-raw": {"k": RAW_REFERENCE_K}}, folds,
                                                 RawKNNGenerator, k_retrieve=c.k)[1]["knn-raw"]
        best = guarded_choice(table, ref)
        parts = {n: {k: round(m[k], 4) for k in (*SELECTION_OBJECTIVE, "objective")}
                 for n, m in {**table, ref_name: ref}.items()}
        self.selection = {"chosen": best or ref_name, "rule": "best objective among candidates that beat "
                          "knn-raw on every part of it", "metrics": parts}
        if best is None:
            self.raw = RawKNNGenerator(k=RAW_REFERENCE_K)
            return
        for key in ("drift", "ctr_drift", "intercept"):
            setattr(self.cfg, key, candidates[best][key])

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
        lo = float(self.stack[0] + self._stack_row(p_nbr, p_con)[0] @ self.stack[1:])
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
        if self.raw is not None:  # selection found no combination that beats raw kNN
            return self.raw.generate(ad, neighbours, features)
        order = sorted(range(len(neighbours)), key=lambda i: (-float(neighbours[i].similarity), i))[: c.k]
        T = np.stack([np.asarray(neighbours[i].theta, dtype=np.float64) for i in order])
        w = RawKNNGenerator(temperature=c.temperature).mix_weights(
            np.array([float(neighbours[i].similarity) for i in order]))
        theta = w @ T
        if c.drift:
            nb_rec = self._recency(np.array([neighbours[i].ad.launched_at for i in order]))
            theta = theta + (0.0 - float(w @ nb_rec)) * self.slope
        if c.intercept != "neighbours":
            target = float(expit(self.intercept_logit(ad, neighbours)))
            theta[0] += solve_shift(self.X_sample @ theta, target)
        return deterministic(theta, T)


@dataclass
class SimpleAd:
    """A content-less stand-in ad (only a launch time) for :meth:`predict_logit_ctr`."""

    launched_at: float
    title: str = ""
    description: str = ""
    category: str = ""
