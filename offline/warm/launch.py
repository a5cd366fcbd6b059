"""A simulated launch of the cold ads on the synthetic world: greedy versus Thompson ranking.

The synthetic world (offline.data.adapters.synthetic) knows every ad's TRUE logistic weights,
so a launch can be played out: the cold (active) ads go live together, requests arrive, the
ranker shows each request its top ``top_k`` cold ads and each shown ad is clicked with its
true probability. Two policies start from the same generated weights (the default
generator's build output, ``offline.pipeline.build``) with the same prior spread
(:func:`offline.warm.policies.prior_from_records`):

- ``greedy``: ranks by the posterior mean (``scoring.topk_batch``);
- ``thompson``: ranks by one sample per ad per request from the diagonal Gaussian posterior
  (``scoring.topk_batch_thompson``, the compiled kernel, with a seed per request). Its std is
  the posterior std times ``sample_scale`` (0 makes it greedy, exactly). By default that scale is
  chosen by playing the same launch on retired ads (:func:`choose_sample_scale`), never on the
  cold ads reported.

After every step each policy refits its posterior on every impression it has logged so far
(:func:`offline.warm.policies.refresh_weights` with policy "prior": the MAP + Laplace code of
``llmhyper refresh``), warm-started from its previous fit.

Common random numbers: per seed, the arriving users, one click uniform per (request, ad) and
the Thompson request seeds are drawn once per step and shared by both policies (ad a shown to
request r is clicked iff ``u[r, a] < p_true``), so the two differ only by what they showed.

Per step and policy: realised clicks, expected clicks (sum of the true CTR of what was shown)
and regret = sum over requests of (true-CTR sum of the oracle top-k) - (true-CTR sum of the
shown top-k), in expected clicks; all >= 0, so cumulative regret never decreases.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from offline.warm.policies import Prior, prior_from_records, refresh_weights

POLICIES = ("greedy", "thompson")
SPREADS = ("generator", "calibrated")
PROTOCOL = 1
MIN_ADS = 40  # smaller worlds leave too few retired ads (30: the intercept model has 7 to fit on)


@dataclass
class LaunchConfig:
    """Settings of one launch simulation (JSON-serialisable; written into the report).

    seeds: independent launches (users, clicks, Thompson draws); steps: refresh rounds;
    users_per_step: requests per step (each a user drawn uniformly from the world's users);
    top_k: ads shown per request; world_seed: the synthetic world (``make_synthetic(seed=)``);
    n_ads / n_users: its size; prior_scale / intercept_scale: the prior std multipliers (None:
    chosen on retired ads by ``offline.warm.replay.choose_scale``); laplace: "diag" or "full";
    sample_scale: multiplier on the std Thompson samples with (>= 0; None: chosen by simulating
    launches of retired ads, :func:`choose_sample_scale`); spread: "generator" (the
    prior std is the generator's spread times the prior scales, as ``llmhyper refresh`` makes
    it) or "calibrated" (those scales times the z-score std the same prior shows on retired ads,
    :func:`spread_calibration`; both policies then share that prior).
    """

    seeds: int = 3
    steps: int = 30
    users_per_step: int = 100
    top_k: int = 5
    world_seed: int = 0
    n_ads: int = 200
    n_users: int = 2000
    prior_scale: float | None = None
    intercept_scale: float | None = None
    laplace: str = "diag"
    sample_scale: float | None = None
    spread: str = "generator"
    work_dir: str = ".llmhyper-work"
    quiet: bool = False

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        for name in ("seeds", "steps", "users_per_step", "top_k"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name.replace('_', '-')} must be an integer >= 1, got {v!r}")
        if not isinstance(self.n_ads, int) or self.n_ads < MIN_ADS:
            raise ValueError(f"n-ads must be an integer >= {MIN_ADS} (retired ads enough for the generator's "
                             f"selection and the retired launches), got {self.n_ads!r}")
        if not isinstance(self.n_users, int) or self.n_users < 1:
            raise ValueError(f"n-users must be an integer >= 1, got {self.n_users!r}")
        for name in ("prior_scale", "intercept_scale"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name.replace('_', '-')} must be a finite number > 0, got {v}")
        if self.laplace not in ("diag", "full"):
            raise ValueError(f"laplace must be 'diag' or 'full', got {self.laplace!r}")
        if self.sample_scale is not None and not (math.isfinite(self.sample_scale) and self.sample_scale >= 0):
            raise ValueError(f"sample-scale must be a finite number >= 0, got {self.sample_scale}")
        if self.spread not in SPREADS:
            raise ValueError(f"spread must be one of {', '.join(SPREADS)}, got {self.spread!r}")

    def key(self) -> str:
        """Hash of everything that changes the numbers."""
        d = {k: v for k, v in asdict(self).items() if k not in ("work_dir", "quiet")}
        d["protocol"] = PROTOCOL
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class LaunchWorld:
    """What a launch is played on. X: float32 [N, F] users; truth: float32 [M, F] the cold ads'
    true weights; prior: the generated weights and prior precision of the same M ads;
    ad_ids: their ids; info: JSON-able description (dataset, generator, scales)."""

    X: np.ndarray
    truth: np.ndarray
    prior: Prior
    ad_ids: list[str]
    info: dict


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(f"[launch] {msg}", file=sys.stderr, flush=True)


def make_world(cfg: LaunchConfig, prep: Any | None = None, truth_all: np.ndarray | None = None) -> LaunchWorld:
    """Build the synthetic world, run the default generator on its cold ads (``pipeline.build``)
    and make each ad's prior from the build output and its recorded spread.

    ``prep`` / ``truth_all`` [n_ads, F]: an already prepared synthetic dataset and its true weights
    (tests inject one with cheap embeddings); otherwise both are made from ``cfg``.
    """
    from offline import pipeline

    bcfg = pipeline.BuildConfig(dataset=f"synthetic:{cfg.world_seed}", work_dir=cfg.work_dir)
    if prep is None:
        from offline.data.adapters.synthetic import make_synthetic

        ds, truth_all = make_synthetic(n_ads=cfg.n_ads, n_users=cfg.n_users, seed=cfg.world_seed)
        prep = pipeline.prepare(ds, bcfg, quiet=cfg.quiet)
    if truth_all is None:
        raise ValueError("a prepared world needs its true weights (truth_all)")
    ds = prep.dataset
    built = pipeline.build(bcfg, quiet=True, prep=prep)
    art = built.artifact
    row = {a: i for i, a in enumerate(ds.ad_ids)}
    truth = np.ascontiguousarray(np.asarray(truth_all, dtype=np.float32)[[row[a] for a in art.ad_ids]])
    if cfg.prior_scale is not None:
        scale, iscale = cfg.prior_scale, cfg.intercept_scale or cfg.prior_scale
        how = "given"
    else:
        from offline.warm.replay import choose_scale

        ch = choose_scale(prep)
        scale, iscale = ch.scale, ch.intercept_scale
        how = f"chosen on retired ads only ({ch.note})"
    cal = None
    if cfg.spread == "calibrated":
        cal = spread_calibration(prep, float(scale), float(iscale))
        scale, iscale = scale * cal["z_std"], iscale * cal["z_std"]
        how += f"; times {cal['z_std']:.3f}, the z-score std of that prior on {cal['n_ads']} retired ads"
    if cfg.sample_scale is None:
        sample = choose_sample_scale(cfg, prep, float(scale), float(iscale))
        sample_scale, sample_how = float(sample["sample_scale"]), (
            f"chosen by launching {sample['n_ads']} retired ads ({sample['seeds']} seeds; mean Thompson regret "
            "by scale " + ", ".join(f"{k}: {v:.1f}" for k, v in sample["regret"].items()) + ")")
    else:
        sample, sample_scale, sample_how = None, float(cfg.sample_scale), "given"
    records = [art.ad_records.get(a) for a in art.ad_ids]
    prior = prior_from_records(art.theta, records, float(scale), float(iscale))
    info = {"dataset": ds.name, "n_users": int(ds.n_users), "n_cold_ads": len(art.ad_ids),
            "n_retired_ads": int(len(prep.split.warm)), "n_features": int(art.theta.shape[1]),
            "generator": art.manifest.get("generator"), "prior_scale": float(scale),
            "intercept_scale": float(iscale), "prior_scale_how": how,
            "prior_source": {s: prior.source.count(s) for s in sorted(set(prior.source))},
            "prior_sigma_mean": float(np.mean(1.0 / np.sqrt(prior.lam))), "spread": cfg.spread,
            "retired_calibration": cal, "sample_scale": sample_scale, "sample_scale_how": sample_how,
            "retired_launch": sample}
    # how well the prior's spread describes its real error (uses the truth: a diagnosis only)
    Xd = ds.X.astype(np.float64)
    err = Xd @ prior.mu.astype(np.float64).T - Xd @ truth.astype(np.float64).T
    sd = np.sqrt((Xd * Xd) @ (1.0 / prior.lam).T)
    info["truth_diagnosis"] = {"logit_error_rms": float(np.sqrt((err * err).mean())),
                               "prior_logit_sd_mean": float(sd.mean()), "z_std": float((err / sd).std())}
    return LaunchWorld(np.ascontiguousarray(ds.X, dtype=np.float32), truth, prior, list(art.ad_ids), info)


def _retired_priors(prep: Any, frac: float, max_ads: int, min_ads: int, scale: float,
                    intercept_scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The latest ``frac`` of the retired ads (between ``min_ads`` and ``max_ads``) as cold ads:
    (positions into ``prep.split.warm`` [T], pseudo-cold prior mean float32 [T, F], prior std
    float64 [T, F] = floored generator spread x ``scale``, ``intercept_scale`` on the intercept)."""
    from offline.warm.policies import SPREAD_FLOOR
    from offline.warm.scale import generator_priors

    lw = prep.dataset.launched_at[prep.split.warm]
    order = np.argsort(lw, kind="stable")
    cand = order[-min(max_ads, max(min_ads, int(frac * lw.size))):]
    mu, spread = generator_priors(prep, cand)
    mult = np.full(mu.shape[1], float(scale))
    mult[0] = float(intercept_scale)
    return cand, mu, np.maximum(spread.astype(np.float64), SPREAD_FLOOR) * mult[None, :]


def spread_calibration(prep: Any, scale: float, intercept_scale: float, frac: float = 0.3,
                       max_ads: int = 200) -> dict:
    """How wide the generator's prior is against its real error, measured on retired ads only.

    The latest ``frac`` of the retired ads (at most ``max_ads``) play cold ads: knn-content fitted
    on the retired ads launched before them writes their prior
    (:func:`offline.warm.scale.generator_priors`), with std = floored spread x (``scale`` on the
    user weights, ``intercept_scale`` on the intercept). Against their trained weights, over
    every user x: z = (prior logit - trained logit) / prior logit std. Returns {"z_std": std of
    z (1 = calibrated; < 1 = too wide), "n_ads": ads used}. The trained weights carry estimation
    noise of their own, so z_std errs high (a wider prior), never by using the active ads.
    """
    ds = prep.dataset
    cand, mu, sd = _retired_priors(prep, frac, max_ads, 1, scale, intercept_scale)
    Xd = ds.X.astype(np.float64)
    err = Xd @ (mu.astype(np.float64) - prep.warm_theta[cand].astype(np.float64)).T
    z = err / np.sqrt((Xd * Xd) @ (sd * sd).T)
    return {"z_std": float(np.sqrt((z * z).mean())), "n_ads": int(cand.size)}


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def run_seed(cfg: LaunchConfig, world: LaunchWorld, seed: int) -> dict[str, dict[str, list]]:
    """Play one launch; {policy: {"clicks": [per step], "expected": [...], "regret": [...],
    "impressions": [...]}} (per-step sums, not cumulative)."""
    import scoring

    X = world.X
    N = X.shape[0]
    M = world.truth.shape[0]
    k = min(cfg.top_k, M)
    P = _sigmoid(X.astype(np.float64) @ world.truth.T.astype(np.float64))  # [N, M] true CTR
    oracle = -np.sort(-P, axis=1)[:, :k].sum(axis=1)  # [N] expected clicks of the best k
    rng = np.random.default_rng([seed, 0x1A57])
    state = {p: {"theta": world.prior.mu.copy(), "sigma": (1.0 / np.sqrt(world.prior.lam)).astype(np.float32),
                 "trials": np.zeros((N, M)), "clicks": np.zeros((N, M))} for p in POLICIES}
    out: dict[str, dict[str, list]] = {p: {"clicks": [], "expected": [], "regret": [], "impressions": []}
                                       for p in POLICIES}
    rows = np.arange(cfg.users_per_step)[:, None]
    sample_scale = cfg.sample_scale if cfg.sample_scale is not None else world.info["sample_scale"]
    for _ in range(cfg.steps):
        users = rng.integers(0, N, cfg.users_per_step)
        U = rng.random((cfg.users_per_step, M))
        req_seeds = rng.integers(0, np.iinfo(np.uint64).max, cfg.users_per_step, dtype=np.uint64, endpoint=True)
        Xs = np.ascontiguousarray(X[users])
        for p in POLICIES:
            st = state[p]
            if p == "greedy":
                idx = scoring.topk_batch(st["theta"], Xs, k)[0]
            else:
                sig = np.ascontiguousarray(st["sigma"] * np.float32(sample_scale), dtype=np.float32)
                idx = scoring.topk_batch_thompson(st["theta"], sig, Xs, k, req_seeds)[0]
            pr = P[users[:, None], idx]
            clicked = U[rows, idx] < pr
            np.add.at(st["trials"], (np.repeat(users, k), idx.ravel()), 1.0)
            np.add.at(st["clicks"], (np.repeat(users, k), idx.ravel()), clicked.ravel().astype(np.float64))
            exp = float(pr.sum())
            out[p]["clicks"].append(int(clicked.sum()))
            out[p]["expected"].append(exp)
            out[p]["regret"].append(max(float(oracle[users].sum()) - exp, 0.0))  # >= 0 up to rounding
            out[p]["impressions"].append(int(idx.size))
            res = refresh_weights("prior", world.prior, X, st["trials"], st["clicks"], laplace=cfg.laplace,
                                  theta0=st["theta"])
            st["theta"], st["sigma"] = res.theta, res.sigma
    return out


# -- the sample scale, chosen on retired launches ----------------------------------------
# Choosing Thompson's sample scale by simulating launches of RETIRED ads (never the cold ones).
#
# The latest ``frac`` of the retired ads play a launch once more: their priors are what the
# default generator writes for them when fitted on the retired ads launched before them
# (:func:`offline.warm.scale.generator_priors`, the components the build chose), with the same
# prior scales as the cold launch, and their TRAINED weights stand in for the true click model
# (known for retired ads in any dataset, not only the synthetic one). For every sample scale of
# ``grid`` the launch above (same steps, requests per step and top k) is
# played over ``seeds`` seeds of its own, and the scale with the lowest mean cumulative regret of
# the Thompson policy wins (0 is greedy exactly; a tie goes to the smaller scale). No log, weight
# or truth of a cold ad is read.

SAMPLE_GRID = (0.0, 0.125, 0.25, 0.5, 1.0)
SEED_OFFSET = 10_000  # the retired launches' seeds, apart from the reported launch's 0, 1, ...


def retired_world(prep: Any, scale: float, intercept_scale: float, frac: float = 0.3,
                  max_ads: int = 200) -> LaunchWorld:
    """A :class:`LaunchWorld` of the latest ``frac`` retired ads (at most
    ``max_ads``): prior mean = their pseudo-cold generator output, prior std = floored spread x
    ``scale`` (``intercept_scale`` on the intercept), truth = their trained weights [T, F]."""
    ds = prep.dataset
    cand, mu, sd = _retired_priors(prep, frac, max_ads, 2, scale, intercept_scale)
    lam = 1.0 / sd**2
    prior = Prior(np.ascontiguousarray(mu, dtype=np.float32), lam, ["spread"] * cand.size)
    truth = np.ascontiguousarray(prep.warm_theta[cand], dtype=np.float32)
    ids = [ds.ad_ids[prep.split.warm[j]] for j in cand]
    info = {"dataset": ds.name, "n_cold_ads": int(cand.size), "what": "retired ads played as cold"}
    return LaunchWorld(np.ascontiguousarray(ds.X, dtype=np.float32), truth, prior, ids, info)


def choose_sample_scale(cfg: Any, prep: Any, scale: float, intercept_scale: float,
                        grid: tuple[float, ...] = SAMPLE_GRID, seeds: int = 5) -> dict:
    """The sample scale of ``grid`` with the lowest mean Thompson regret on retired launches.

    cfg: the cold launch's :class:`LaunchConfig` (steps, users_per_step,
    top_k, laplace are reused); scale / intercept_scale: the prior scales the cold launch uses.
    Returns {"sample_scale": the choice, "regret": {scale: mean cumulative regret}, "regret_std":
    {...}, "n_ads": retired ads played, "seeds": seeds played}.
    """
    world = retired_world(prep, scale, intercept_scale)
    reg: dict[float, list[float]] = {float(s): [] for s in grid}
    for s in grid:
        c = replace(cfg, sample_scale=float(s), quiet=True)
        for i in range(seeds):
            reg[float(s)].append(float(sum(run_seed(c, world, SEED_OFFSET + i)["thompson"]["regret"])))
    mean = {s: float(np.mean(v)) for s, v in reg.items()}
    best = min(mean, key=lambda s: (round(mean[s], 9), s))
    return {"sample_scale": best, "regret": {f"{s:g}": mean[s] for s in mean},
            "regret_std": {f"{s:g}": float(np.std(v)) for s, v in reg.items()},
            "n_ads": int(world.truth.shape[0]), "seeds": seeds}


def _stat(v: np.ndarray) -> dict:
    v = np.asarray(v, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()), "max": float(v.max()),
            "per_seed": [float(x) for x in v]}


def aggregate(cfg: LaunchConfig, world: LaunchWorld, per_seed: list[dict]) -> dict:
    """Per-step cumulative means and stds over seeds, the end-of-launch summary and the check."""
    steps: dict[str, dict[str, list]] = {}
    summary: dict[str, dict] = {}
    for p in POLICIES:
        cum = {key: np.cumsum(np.array([s[p][key] for s in per_seed], dtype=np.float64), axis=1)
               for key in ("clicks", "expected", "regret", "impressions")}
        steps[p] = {f"cum_{key}_{st}": [float(x) for x in getattr(cum[key], st)(axis=0)]
                    for key in ("clicks", "regret", "expected") for st in ("mean", "std")}
        steps[p]["regret_per_step_mean"] = [float(x) for x in
                                            np.mean([s[p]["regret"] for s in per_seed], axis=0)]
        imp = cum["impressions"][:, -1]
        summary[p] = {"cum_regret": _stat(cum["regret"][:, -1]), "cum_clicks": _stat(cum["clicks"][:, -1]),
                      "cum_expected_clicks": _stat(cum["expected"][:, -1]),
                      "regret_per_impression": _stat(cum["regret"][:, -1] / imp),
                      "ctr": _stat(cum["clicks"][:, -1] / imp),
                      "cum_regret_first_third": _stat(cum["regret"][:, max(0, cfg.steps // 3 - 1)])}
    g = np.array(summary["greedy"]["cum_regret"]["per_seed"])
    t = np.array(summary["thompson"]["cum_regret"]["per_seed"])
    diff = g - t
    checks = {"thompson_regret_lower_mean": bool(t.mean() < g.mean()),
              "thompson_regret_lower_every_seed": bool(np.all(t < g)),
              "regret_saved_by_thompson": _stat(diff)}
    return {"config": asdict(cfg), "world": world.info, "summary": summary, "steps": steps, "checks": checks}


def run_launch(cfg: LaunchConfig, world: LaunchWorld | None = None, prep: Any | None = None,
               truth_all: np.ndarray | None = None) -> dict:
    """Validate ``cfg``, build the world (unless given) and play every seed; the result dict."""
    cfg.validate()
    if world is None:
        world = make_world(cfg, prep, truth_all)
    _log(f"{world.info['dataset']}: {world.info['n_cold_ads']} cold ads, prior scale "
         f"{world.info['prior_scale']:g} (intercept {world.info['intercept_scale']:g}, "
         f"{world.info['prior_scale_how']})", cfg.quiet)
    per_seed = []
    for s in range(cfg.seeds):
        per_seed.append(run_seed(cfg, world, s))
        _log(f"seed {s}: cumulative regret greedy {sum(per_seed[-1]['greedy']['regret']):.1f}, "
             f"thompson {sum(per_seed[-1]['thompson']['regret']):.1f}", cfg.quiet)
    res = aggregate(cfg, world, per_seed)
    res["per_seed"] = per_seed
    return res
