"""Replay evaluation of the warm-up policies over a dataset's active period.

Per seed the users are split 80/20 at random (as in the evaluation protocol). The default
generator (knn-content, fitted with the training users) writes each active ad's weights; they
are published into a real store per policy. The active period (cutoff -> last log) is walked
in steps of ``step_days``. At step k (t_k = cutoff + k * step):

1. every policy's store is refreshed with the TRAINING users' logs of the active ads before
   t_k, through the same code as ``llmhyper refresh`` (injected as ``ops``, since offline code
   never imports the store);
2. the next step [t_k, t_k+1) of the HELD-OUT users is scored from the store's zero-copy view
   with ``scoring.score_matrix``. Logged impressions are scored as logged. Under implicit
   negatives every held-out user active in the step (any logged interaction with an active
   ad) is paired with every active ad launched before t_k+1 that the user had not clicked
   before t_k: label 1 when the user clicked it in the step. All such non-clicks are kept
   (a sampling rate of 1; the sets are small enough).

Policies: ``frozen`` (generated weights), ``switch@N`` (hard switch at N clicks), ``prior``
(prior-updated MAP), ``ceiling`` (LRwarm trained on the training users' labels of the whole
active period: sees the future, an upper reference). Per step: AUC, NDCG@10 and log-loss,
plus the rolling AUC pooled over the last ``rolling`` steps. The cold-start period of a
policy is the first step from which its rolling AUC stays within ``band`` of the ceiling's
rolling AUC to the end (None: never). Each finished seed is saved in the work dir, so a
killed replay resumes at the next seed with identical output.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from offline import metrics as M
from offline.warm.logs import Logs, counts_between, delay_cdf, delay_quantiles, from_arrays

DAY = 86400.0
FROZEN_GAP = 0.01  # "never worse than frozen by more than this AUC" (issue 11)
PROTOCOL = 14  # bump when the protocol's numbers change, so finished seeds are not resumed across it


@dataclass
class ReplayConfig:
    """Settings of one replay (JSON-serialisable, written into the report).

    dataset: layout dir, ``movielens-100k[:PATH]`` or ``synthetic[:SEED]``; seeds: user splits;
    step_days: step length (days); min_clicks: the switch threshold; prior_scale: global prior
    std of the user weights (None: it and intercept_scale are chosen on retired ads,
    offline.warm.scale); intercept_scale: the intercept's (None: prior_scale); laplace:
    "diag"/"full"; rolling: steps pooled in the rolling AUC; band: AUC distance to the ceiling
    that ends the cold start;
    first_days: horizon of the "first days" summary; max_steps: cap on steps (None: all);
    delay_weighting: "auto" (chosen with the scales on retired ads; "on" when the scales are
    given), "on" or "off": weigh implicit non-clicks by the retired ads' click-delay distribution;
    min_pos: a rolling window with fewer clicks among its scored pairs is not scored (NaN), so a
    sparse stretch of the log does not decide a cold-start period by noise (per-step metrics
    need one click and one non-click; their n_pos is reported with them); resamples: bootstrap
    draws of the paired intervals (offline.warm.paired).
    """

    dataset: str = "movielens-100k"
    seeds: int = 3
    step_days: float = 1.0
    min_clicks: int = 10
    prior_scale: float | None = None
    intercept_scale: float | None = None
    laplace: str = "diag"
    rolling: int = 7
    band: float = 0.02
    first_days: float = 30.0
    test_frac: float = 0.2
    k: int = 20
    max_steps: int | None = None
    delay_weighting: str = "auto"
    min_pos: int = 20
    resamples: int = 1000
    work_dir: str = ".llmhyper-work"
    out_dir: str = "replay-report"
    quiet: bool = False

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        if not (math.isfinite(self.step_days) and self.step_days > 0):
            raise ValueError(f"step_days must be > 0, got {self.step_days}")
        if self.min_clicks < 1:
            raise ValueError(f"min_clicks must be >= 1, got {self.min_clicks}")
        if self.prior_scale is not None and not (math.isfinite(self.prior_scale) and self.prior_scale > 0):
            raise ValueError(f"prior_scale must be > 0, got {self.prior_scale}")
        if self.intercept_scale is not None and not (math.isfinite(self.intercept_scale) and self.intercept_scale > 0):
            raise ValueError(f"intercept_scale must be > 0, got {self.intercept_scale}")
        if self.laplace not in ("diag", "full"):
            raise ValueError(f"laplace must be 'diag' or 'full', got {self.laplace!r}")
        if self.rolling < 1:
            raise ValueError(f"rolling must be >= 1, got {self.rolling}")
        if not 0.0 < self.test_frac < 1.0:
            raise ValueError(f"test_frac must be in (0, 1), got {self.test_frac}")
        if self.delay_weighting not in ("auto", "on", "off"):
            raise ValueError(f"delay_weighting must be auto, on or off, got {self.delay_weighting!r}")
        if self.resamples < 1:
            raise ValueError(f"resamples must be >= 1, got {self.resamples}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")

    def key(self) -> str:
        """Hash of everything that changes the output (not out_dir / quiet)."""
        d = {k: v for k, v in asdict(self).items() if k not in ("out_dir", "quiet", "work_dir")}
        d["protocol"] = PROTOCOL
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


class StoreOps(Protocol):
    """What the replay needs from the weight store (provided by ``llmhyper replay``)."""

    def start(self, key: str, ad_ids: list[str], theta: np.ndarray, features: list, records: dict,
              manifest: dict, users: tuple[list[str], np.ndarray]) -> np.ndarray:
        """Publish generated weights into a fresh store named ``key``; return the theta view."""

    def refresh(self, key: str, policy: str, min_clicks: int | None, logs: Logs, X: np.ndarray,
                until: float) -> np.ndarray:
        """Refresh store ``key`` with ``logs`` before ``until`` (llmhyper refresh); theta view."""


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(f"[replay] {msg}", file=sys.stderr, flush=True)


def step_metrics(theta_view: np.ndarray, X: np.ndarray, keep: np.ndarray, Y: np.ndarray,
                 min_pos: int = 1) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """Score one step. keep: bool [B, C] scored pairs; Y: 0/1 [B, C]; metrics are NaN with fewer
    than ``min_pos`` positives. Returns (metrics, labels, logits, user row of each pair), the
    pairs in row-major order of ``keep``."""
    import scoring

    users = np.flatnonzero(keep.any(axis=1))
    if users.size == 0:
        nan = float("nan")
        return {"auc": nan, "ndcg10": nan, "log_loss": nan, "n_pairs": 0, "n_pos": 0, "n_users": 0}, \
            np.zeros(0, np.uint8), np.zeros(0), np.zeros(0, np.int64)
    S = scoring.score_matrix(theta_view, np.ascontiguousarray(X[users], dtype=np.float32)).astype(np.float64)
    k, y = keep[users], Y[users].astype(np.uint8)
    labels, logits = y[k], S[k]
    pair_user = np.broadcast_to(users[:, None], k.shape)[k]
    masked = np.where(k, S, -np.inf)
    ranked = np.argsort(-masked, axis=1, kind="stable")[:, : min(10, S.shape[1])]
    nd = M.ndcg_from_ranking(np.where(k, y, 0), ranked, 10)
    nd = nd[np.isfinite(nd)]
    ok = max(1, min_pos) <= labels.sum() < labels.size
    nan = float("nan")
    return {"auc": M.auc(labels, logits) if ok else nan,
            "ndcg10": float(nd.mean()) if nd.size and ok else nan,
            "log_loss": M.log_loss_from_logits(labels, logits) if ok else nan,
            "n_pairs": int(labels.size), "n_pos": int(labels.sum()), "n_users": int(users.size)}, \
        labels, logits, pair_user


def cold_start_period(rolling: list[float], ceiling: list[float], band: float) -> int | None:
    """First step index from which ``rolling`` >= ``ceiling`` - band at every later finite step
    (None when the last finite step is outside the band, or there is none)."""
    rolling, ceiling = [_num(v) for v in rolling], [_num(v) for v in ceiling]
    ok = [None if not (math.isfinite(a) and math.isfinite(c)) else a >= c - band for a, c in zip(rolling, ceiling)]
    finite = [i for i, v in enumerate(ok) if v is not None]
    if not finite or not ok[finite[-1]]:
        return None
    first = finite[-1]
    for i in reversed(finite):
        if not ok[i]:
            break
        first = i
    return first


def _num(v: Any) -> float:
    return float("nan") if v is None else float(v)


def _policies(cfg: ReplayConfig) -> dict[str, tuple[str, int | None]]:
    return {"frozen": ("none", None), f"switch@{cfg.min_clicks}": ("switch", cfg.min_clicks), "prior": ("prior", None)}


def retired_delay_quantiles(prep: Any) -> list[float]:
    """Click delays after launch (seconds) of the retired ads, up to the active period's length
    (log end - cutoff), as :func:`offline.warm.logs.delay_quantiles`. No active-ad log is read."""
    ds, sp = prep.dataset, prep.split
    is_warm = np.zeros(ds.n_ads, dtype=bool)
    is_warm[sp.warm] = True
    r = np.flatnonzero(is_warm[ds.inter_ad] & (ds.inter_clicked == 1))
    horizon = float(ds.inter_ts.max()) - sp.cutoff
    d = ds.inter_ts[r] - ds.launched_at[ds.inter_ad[r]]
    return delay_quantiles(d[d <= horizon])


def run_seed(cfg: ReplayConfig, prep: Any, seed: int, prior_scale: float, intercept_scale: float, ops: StoreOps,
             progress: Callable | None = None, delay_weighting: bool = True) -> dict:
    """Replay one user split; returns {policy: {"steps": [metrics...], "rolling_auc": [...]}, ...}."""
    from offline import pipeline
    from offline.evaluation.protocol import user_split
    from offline.generators.content_knn import ContentKNNGenerator
    from offline.stages import train

    ds, sp = prep.dataset, prep.split
    tr, te = user_split(ds.n_users, cfg.test_frac, seed)
    gen = ContentKNNGenerator().fit(prep, users=tr)
    generated = pipeline.generate_cold(prep, gen, quiet=True)
    theta_gen = np.ascontiguousarray(np.stack([g.theta for g in generated]), dtype=np.float32)
    cold_ids = [ds.ads[i].ad_id for i in sp.cold]
    launched = ds.launched_at[sp.cold]
    records = {a: {**g.record(), "launched_at": float(launched[c])} for c, (a, g) in enumerate(zip(cold_ids, generated))}
    manifest = {"dataset": ds.name, "generator": gen.name, "implicit_negatives": bool(ds.implicit),
                "prior_scale": float(prior_scale), "prior_scale_intercept": float(intercept_scale),
                "l2": float(prep.l2), "replay": True, "seed": seed}
    if ds.implicit and delay_weighting:
        manifest["click_delay_quantiles"] = retired_delay_quantiles(prep)
    X = np.ascontiguousarray(ds.X, dtype=np.float32)
    if ds.implicit:
        ceiling = train.train_logreg(X[tr], ds.labels(sp.cold)[tr], prep.l2)
    else:
        u, c, y = ds.pairs(sp.cold)
        pos = np.full(ds.n_users, -1)
        pos[tr] = np.arange(tr.size)
        k = pos[u] >= 0
        ceiling = train.train_logreg_pairs(X[tr], pos[u[k]], c[k], y[k], len(sp.cold), prep.l2)

    col_of = np.full(ds.n_ads, -1, dtype=np.int64)
    col_of[sp.cold] = np.arange(sp.cold.size)
    rows = np.flatnonzero(col_of[ds.inter_ad] >= 0)

    def logs_of(users: np.ndarray) -> Logs:
        pos = np.full(ds.n_users, -1)
        pos[users] = np.arange(users.size)
        r = rows[pos[ds.inter_user[rows]] >= 0]
        return from_arrays([ds.user_ids[i] for i in users], pos[ds.inter_user[r]], col_of[ds.inter_ad[r]],
                           ds.inter_clicked[r], ds.inter_ts[r])

    logs_tr, logs_te = logs_of(tr), logs_of(te)
    X_tr, X_te = np.ascontiguousarray(X[tr]), np.ascontiguousarray(X[te])
    users = ([ds.user_ids[i] for i in tr], X_tr)
    pols = _policies(cfg)
    views = {name: ops.start(f"{name}-s{seed}", cold_ids, theta_gen, list(ds.features), records, manifest, users)
             for name in pols}
    views["ceiling"] = ops.start(f"ceiling-s{seed}", cold_ids, ceiling, list(ds.features), {},
                                 {**manifest, "generator": "lrwarm-ceiling"}, users)
    t_end = float(ds.inter_ts[rows].max()) + 1.0
    n_steps = int(math.ceil((t_end - sp.cutoff) / (cfg.step_days * DAY)))
    if cfg.max_steps is not None:
        n_steps = min(n_steps, cfg.max_steps)
    out: dict[str, dict] = {n: {"steps": [], "rolling_auc": []} for n in [*pols, "ceiling"]}
    pooled: dict[str, list] = {n: [] for n in out}
    Cn = sp.cold.size
    for k in range(n_steps):
        t0 = sp.cutoff + k * cfg.step_days * DAY
        t1 = t0 + cfg.step_days * DAY
        for name, (policy, mc) in pols.items():
            views[name] = ops.refresh(f"{name}-s{seed}", policy, mc, logs_tr, X_tr, t0)
        et, ec = counts_between(logs_te, te.size, np.full(Cn, t0), np.full(Cn, t1), ds.implicit, other=False)
        avail = (launched < t1)[None, :]
        if ds.implicit:
            _, before = counts_between(logs_te, te.size, launched, np.full(Cn, t0), True, other=False)
            keep = (et > 0) & (before == 0) & avail
        else:
            keep = (et > 0) & avail
        Y = ec > 0
        for name in out:
            m, lab, lg, pu = step_metrics(views[name], X_te, keep, Y)
            m["t"] = t0
            pooled[name].append((lab, lg, pu))
            win = pooled[name][-cfg.rolling:]
            yl = np.concatenate([w[0] for w in win])
            sl = np.concatenate([w[1] for w in win])
            out[name]["steps"].append(m)
            out[name]["rolling_auc"].append(M.auc(yl, sl) if max(1, cfg.min_pos) <= yl.sum() < yl.size
                                            else float("nan"))
        if progress is not None:
            progress(1)
    first = [i for i, m in enumerate(out["ceiling"]["steps"]) if m["t"] < sp.cutoff + cfg.first_days * DAY]
    for name in out:
        yl = np.concatenate([pooled[name][i][0] for i in first] or [np.zeros(0, np.uint8)])
        sl = np.concatenate([pooled[name][i][1] for i in first] or [np.zeros(0)])
        out[name]["auc_first_pooled"] = M.auc(yl, sl) if 0 < yl.sum() < yl.size else float("nan")
    _paired(out, pooled, first, seed, cfg.resamples, cfg.rolling, max(1, cfg.min_pos))
    return out


def _paired(out: dict, pooled: dict[str, list], first: list[int], seed: int, resamples: int, rolling: int,
            min_pos: int) -> None:
    """Add each warm-up policy's paired differences (offline.warm.paired) to ``out``, in place:
    ``paired_first`` {other: AUC(policy) - AUC(other) over the pooled first days, with its 95%
    interval} against frozen and the other warm-up policies; ``paired_steps_vs_frozen`` and
    ``paired_rolling_vs_frozen``: [[diff, lo, hi] per step] against frozen, on the step's pairs
    and on the last ``rolling`` steps' pairs pooled (a user is one cluster across them; NaN
    where the window has fewer than ``min_pos`` clicks, as the rolling AUC). Policies score the
    same pairs in the same order."""
    from offline.warm.paired import paired_auc_diff

    def window(name: str, idx: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        parts = [pooled[name][i] for i in idx]
        if not parts:
            return np.zeros(0, np.uint8), np.zeros(0), np.zeros(0, np.int64)
        return tuple(np.concatenate([p[j] for p in parts]) for j in range(3))  # type: ignore[return-value]

    warm = [n for n in out if n not in ("frozen", "ceiling")]
    ref = {n: window(n, first) for n in ["frozen", *warm]}
    for n_i, name in enumerate(warm):
        y, s, u = ref[name]
        out[name]["paired_first"] = {
            other: paired_auc_diff(y, s, ref[other][1], u, resamples, seed=[seed, n_i, o_i])
            for o_i, other in enumerate(["frozen", *warm]) if other != name}
        steps, roll = [], []
        for i, (lab, lg, pu) in enumerate(pooled[name]):
            r = paired_auc_diff(lab, lg, pooled["frozen"][i][1], pu, resamples, seed=[seed, n_i, 1000 + i])
            steps.append([r["diff"], r["lo"], r["hi"]])
            last = list(range(max(0, i - rolling + 1), i + 1))
            (yw, sw, uw), fw = window(name, last), window("frozen", last)[1]
            if yw.sum() < min_pos:
                roll.append([float("nan")] * 3)
                continue
            r = paired_auc_diff(yw, sw, fw, uw, resamples, seed=[seed, n_i, 100_000 + i])
            roll.append([r["diff"], r["lo"], r["hi"]])
        out[name]["paired_steps_vs_frozen"] = steps
        out[name]["paired_rolling_vs_frozen"] = roll


def summarise_seed(cfg: ReplayConfig, seed_out: dict, cutoff: float) -> dict:
    """Per policy: cold-start period (steps), mean AUC / NDCG@10 / log-loss over all steps and over
    the first ``first_days``, pooled-free worst step gap to frozen (prior policies), and for the
    warm-up policies the paired counts ``{steps,rolling}_below_frozen_by_gap`` (point estimate
    below -FROZEN_GAP), ``..._surely_below_frozen_by_gap`` (whole interval below) and
    ``..._judged_vs_frozen`` (steps with an interval)."""
    ceil = seed_out["ceiling"]["rolling_auc"]
    first = [i for i, m in enumerate(seed_out["ceiling"]["steps"]) if m["t"] < cutoff + cfg.first_days * DAY]
    res = {}
    frozen_auc = np.array([_num(m["auc"]) for m in seed_out["frozen"]["steps"]], dtype=np.float64)
    for name, d in seed_out.items():
        auc = np.array([_num(m["auc"]) for m in d["steps"]], dtype=np.float64)
        nd = np.array([_num(m["ndcg10"]) for m in d["steps"]], dtype=np.float64)
        ll = np.array([_num(m["log_loss"]) for m in d["steps"]], dtype=np.float64)
        diff = frozen_auc - auc
        rdiff = (np.array([_num(v) for v in seed_out["frozen"]["rolling_auc"]])
                 - np.array([_num(v) for v in d["rolling_auc"]]))
        res[name] = {
            "cold_start_steps": cold_start_period(d["rolling_auc"], ceil, cfg.band),
            "auc": float(np.nanmean(auc)), "ndcg10": float(np.nanmean(nd)), "log_loss": float(np.nanmean(ll)),
            "auc_first": float(np.nanmean(auc[first])) if first else float("nan"),
            "ndcg10_first": float(np.nanmean(nd[first])) if first else float("nan"),
            "auc_first_pooled": _num(d.get("auc_first_pooled")),
            "worst_vs_frozen": float(np.nanmax(diff)) if np.isfinite(diff).any() else float("nan"),
            "worst_vs_frozen_rolling": float(np.nanmax(rdiff)) if np.isfinite(rdiff).any() else float("nan"),
        }
        for key, tag in (("paired_steps_vs_frozen", "steps"), ("paired_rolling_vs_frozen", "rolling")):
            if key in d:
                st = np.array([[_num(v) for v in r] for r in d[key]], dtype=np.float64).reshape(-1, 3)
                res[name][f"{tag}_below_frozen_by_gap"] = int(np.sum(st[:, 0] < -FROZEN_GAP))
                res[name][f"{tag}_surely_below_frozen_by_gap"] = int(np.sum(st[:, 2] < -FROZEN_GAP))
                res[name][f"{tag}_judged_vs_frozen"] = int(np.sum(np.isfinite(st[:, 2])))
    return res


def paired_first(per_seed: list[dict], name: str, other: str) -> list[dict]:
    """Per seed, AUC(name) - AUC(other) over the pooled first days with its 95% interval
    (offline.warm.paired.paired_auc_diff's dict; NaN, stored as null, read back as NaN)."""
    out = []
    for s in per_seed:
        r = s.get(name, {}).get("paired_first", {}).get(other)
        if r is not None:
            out.append({k: (_num(v) if k in ("diff", "lo", "hi") else v) for k, v in r.items()})
    return out


def verdict(rows: list[dict]) -> str:
    """'better' when every seed's interval lies above 0, 'worse' when every one lies below,
    else 'not resolved' (some interval holds 0, or none was measured)."""
    if rows and all(r["lo"] > 0 for r in rows):
        return "better"
    if rows and all(r["hi"] < 0 for r in rows):
        return "worse"
    return "not resolved"


def cohort_logs(ds: Any, ads: np.ndarray) -> Logs:
    """The logs of the dataset ads ``ads`` (int [T], dataset ad indices) only, with ``ad`` = the
    position in ``ads``: the retired cohort that replays cold ads.

    Only the cohort's own rows, because in the active period (and in production) a refresh sees
    the served cold ads' logs only, so an implicit trial is activity on another ad of the cohort.
    Counting activity on every retired ad made every user of the platform a trial of every
    replayed ad, and picked an intercept scale (4 on MovieLens) that over-trusts early data
    (README "Where it stops short")."""
    col = np.full(ds.n_ads, -1, dtype=np.int64)
    col[ads] = np.arange(len(ads))
    r = np.flatnonzero(col[ds.inter_ad] >= 0)
    return from_arrays(ds.user_ids, ds.inter_user[r], col[ds.inter_ad[r]], ds.inter_clicked[r], ds.inter_ts[r])


def choose_scale(prep: Any, n_ads: int = 200, delay_weighting: str = "auto", frac: float = 0.3) -> Any:
    """The global prior scales chosen on retired ads only (offline.warm.scale): the latest
    ``frac`` of the retired ads (at most ``n_ads``) with >= 5 earlier ones replay their early days."""
    from offline.warm.scale import choose_prior_scale, generator_priors, knn_priors

    ds, sp = prep.dataset, prep.split
    lw = ds.launched_at[sp.warm]
    order = np.sort(lw)
    n_earlier = np.searchsorted(order, lw, side="left")
    cand = np.flatnonzero(n_earlier >= 5)
    cand = cand[np.argsort(lw[cand], kind="stable")][-min(n_ads, max(1, int(frac * lw.size))):]
    if cand.size == 0:
        raise ValueError("no retired ad has 5 earlier retired ads; pass a prior scale")
    from offline.warm.policies import SPREAD_FLOOR

    try:
        prior, spread = generator_priors(prep, cand)
        base, how = np.maximum(spread, SPREAD_FLOOR), ("knn-content fitted on the earlier retired ads; "
                                                       "scales multiply its neighbour spread")
    except ValueError:
        prior, base = knn_priors(prep.emb[sp.warm], lw, prep.warm_theta, cand), None
        how = "softmax(sim/0.1) mix of the 20 most similar earlier retired ads; scales are stds"
    cdf = delay_cdf(retired_delay_quantiles(prep)) if ds.implicit and delay_weighting != "off" else None
    logs = cohort_logs(ds, sp.warm[cand])
    ch = choose_prior_scale(ds.X, logs, lw[cand], prior, ds.implicit, base=base, cdf=cdf)
    ch.delay_weighting = cdf is not None
    if cdf is not None and delay_weighting == "auto":  # the same replay decides the delay weighting
        off = choose_prior_scale(ds.X, logs, lw[cand], prior, ds.implicit, base=base, cdf=None)
        best = lambda c: max(r["mean"] for r in c.table.values() if np.isfinite(r["mean"]))  # noqa: E731
        ch.delay_objective = {"on": best(ch), "off": best(off)}
        if best(off) > best(ch):
            ch, off.delay_objective = off, ch.delay_objective
            ch.delay_weighting = False
    ch.note = f"priors of {cand.size} retired ads: {how}"
    return ch


def _save(obj: Any, path: Path) -> None:
    from offline.evaluation.report import save_json

    tmp = path.with_suffix(".tmp")
    save_json(obj, tmp)
    tmp.replace(path)


def run_replay(cfg: ReplayConfig, ops: StoreOps, dataset: Any | None = None, prep: Any | None = None) -> dict:
    """Run every seed (resuming finished ones from the work dir) and return the result dict.

    ``prep``: an already prepared dataset (offline.pipeline.Prepared) instead of preparing one.
    """
    from offline import pipeline

    cfg.validate()
    if prep is None:
        ds = dataset if dataset is not None else pipeline.load_source(cfg.dataset)
        bcfg = pipeline.BuildConfig(dataset=cfg.dataset, k=cfg.k, work_dir=cfg.work_dir)
        prep = pipeline.prepare(ds, bcfg, quiet=cfg.quiet)
    ds = prep.dataset
    work = Path(cfg.work_dir) / "replay" / f"{ds.name}-{cfg.key()}"
    work.mkdir(parents=True, exist_ok=True)
    scale_file = work / "prior_scale.json"
    if cfg.prior_scale is not None:
        scale_info = {"scale": cfg.prior_scale, "intercept_scale": cfg.intercept_scale or cfg.prior_scale,
                      "chosen": False, "delay_weighting": cfg.delay_weighting != "off"}
    elif scale_file.is_file():
        scale_info = json.loads(scale_file.read_text())
    else:
        ch = choose_scale(prep, delay_weighting=cfg.delay_weighting)
        scale_info = {"scale": ch.scale, "intercept_scale": ch.intercept_scale, "chosen": True, "n_ads": ch.n_ads,
                      "delay_weighting": bool(ch.delay_weighting),
                      "delay_objective": getattr(ch, "delay_objective", None), "note": ch.note, "table": {k: {str(h): v for h, v in row.items()} for k, row in ch.table.items()}}
        _save(scale_info, scale_file)
    _log(f"{ds.name}: {len(prep.split.cold)} active ads, prior scale {scale_info['scale']:g} "
         f"(intercept {scale_info['intercept_scale']:g}) "
         f"({'chosen on retired ads' if scale_info['chosen'] else 'given'})", cfg.quiet)
    per_seed: list[dict] = []
    from tqdm import tqdm

    for seed in range(cfg.seeds):
        f = work / f"seed{seed}.json"
        if f.is_file():
            per_seed.append(json.loads(f.read_text()))
            _log(f"seed {seed}: resumed from {f}", cfg.quiet)
            continue
        with tqdm(desc=f"replay seed {seed}", unit="step", disable=cfg.quiet, file=sys.stderr) as bar:
            out = run_seed(cfg, prep, seed, float(scale_info["scale"]), float(scale_info["intercept_scale"]), ops,
                           progress=bar.update, delay_weighting=bool(scale_info["delay_weighting"]))
        _save(out, f)
        per_seed.append(json.loads(f.read_text()))  # the same floats a resumed run reads
    return aggregate(cfg, ds, prep, scale_info, per_seed)


def _stat(v: list[float]) -> dict:
    a = np.array([np.nan if x is None else x for x in v], dtype=np.float64)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    return {"mean": float(a.mean()), "std": float(a.std()), "n": int(a.size)}


def aggregate(cfg: ReplayConfig, ds: Any, prep: Any, scale_info: dict, per_seed: list[dict]) -> dict:
    """Summaries over seeds (mean ± std), per-step means for the plot, and the Done-means checks."""
    cutoff = prep.split.cutoff
    sums = [summarise_seed(cfg, s, cutoff) for s in per_seed]
    names = list(per_seed[0])
    summary = {}
    for n in names:
        summary[n] = {key: _stat([s[n][key] for s in sums]) for key in sums[0][n]}
        summary[n]["cold_start_steps"]["per_seed"] = [s[n]["cold_start_steps"] for s in sums]
    steps = {}
    for n in names:
        T = len(per_seed[0][n]["steps"])
        steps[n] = {key: [_stat([s[n]["steps"][i][key] for s in per_seed])["mean"] for i in range(T)]
                    for key in ("auc", "ndcg10", "log_loss", "n_pairs", "n_pos", "n_users")}
        steps[n]["rolling_auc"] = [_stat([s[n]["rolling_auc"][i] for s in per_seed])["mean"] for i in range(T)]
    steps["t"] = [m["t"] for m in per_seed[0]["ceiling"]["steps"]]
    sw = f"switch@{cfg.min_clicks}"
    checks = {}
    if "prior" in summary and sw in summary:
        p, s = summary["prior"], summary[sw]
        cs = [(a, b) for a, b in zip(p["cold_start_steps"]["per_seed"], s["cold_start_steps"]["per_seed"])]
        checks = {
            "prior_beats_switch_first_days": p["auc_first"]["mean"] > s["auc_first"]["mean"],
            "prior_beats_switch_first_days_pooled": p["auc_first_pooled"]["mean"] > s["auc_first_pooled"]["mean"],
            "prior_reaches_band_no_later_than_switch": all(
                a is not None and (b is None or a <= b) for a, b in cs),
            "prior_never_below_frozen_by_0.01": p["worst_vs_frozen"]["n"] > 0 and
            max(x["worst_vs_frozen"] for x in [ss["prior"] for ss in sums]) <= 0.01,
            "prior_never_below_frozen_by_0.01_rolling": max(
                ss["prior"]["worst_vs_frozen_rolling"] for ss in sums) <= 0.01,
        }
        vs_switch = paired_first(per_seed, "prior", sw)
        if vs_switch:
            checks["prior_vs_switch_first_days_paired"] = verdict(vs_switch)
            checks["prior_vs_frozen_first_days_paired"] = verdict(paired_first(per_seed, "prior", "frozen"))
            for tag in ("steps", "rolling"):
                checks[f"prior_{tag}_surely_below_frozen_by_0.01"] = [
                    ss["prior"].get(f"{tag}_surely_below_frozen_by_gap") for ss in sums]
    return {"config": asdict(cfg), "dataset": {"name": ds.name, "n_users": ds.n_users,
                                               "n_active": int(len(prep.split.cold)),
                                               "n_retired": int(len(prep.split.warm)), "cutoff": cutoff,
                                               "implicit_negatives": bool(ds.implicit), "l2": prep.l2},
            "prior_scale": scale_info, "summary": summary, "steps": steps, "checks": checks,
            "per_seed_summary": sums,
            "per_seed_paired": [{n: {"paired_first": d["paired_first"]} for n, d in s.items() if "paired_first" in d}
                                for s in per_seed]}
