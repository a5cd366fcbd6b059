"""The cold-start evaluation protocol (docs/EVALUATION.md) run through the production path.

One run: ``pipeline.load_source`` -> ``pipeline.prepare`` (time split, warm training over all
users, embeddings, neighbours; cached in the work dir) -> for every method its cold weights
(``pipeline.generate_cold`` with the method's generator, ``pipeline.calibrate_cold`` where the
method calibrates, the calibration user sample drawn from the seed's TRAINING users only) ->
each method's weights published through the injected serving path (``llmhyper evaluate`` passes
``llmhyper.evaluation.StoreServing``: a real LMDB store and a real gRPC server for latency; the
default serves the matrix in memory, see offline/evaluation/serving.py) -> the held-out users
scored from the served matrix with ``scoring.score_matrix`` and ranked with ``scoring.topk_batch`` -> metrics (offline/metrics.py). Per seed the users are split
80/20 at random; LRwarm trains on the 80% for the cold ads; everything is scored on the 20%.

Methods (names used in the report):
  lrwarm        per-ad logistic regression on the training users' cold-ad labels (upper reference)
  lrcold        element-wise median of the retired weights
  popularity    intercept only, from the neighbours' mean CTR
  embedding     EmbT5-style: cosine(user text profile, ad embedding), retired data only
  knn-raw       production ``RawKNNGenerator`` defaults (softmax over similarity), uncalibrated
  knn-raw+cal   the same with unit-norm + intercept shift (paper eq. 2)
  default       the improved deterministic generator (offline.generators.content_knn.ContentKNNGenerator)
  llm[...]      LLM-HYPER variants (``generator='gemini'|'openai'``): shots x caption, each
                with calibration on and off
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, Literal, Sequence

import numpy as np
from pydantic import Field, field_validator

from offline import metrics as M
from offline import pipeline
from offline.config import StrictConfig
from offline.evaluation.serving import InMemoryServing, ServingPath

BASE_METHODS = ("lrwarm", "lrcold", "popularity", "embedding", "knn-raw", "knn-raw+cal", "default")
COLD_BASELINES = ("lrcold", "popularity", "knn-raw")
METRICS = ("auc", "ndcg5", "ndcg10", "per_ad_auc", "ctr_rho", "log_loss", "ece", "hr5", "cov5")


class EvalConfig(StrictConfig):
    """Settings of one evaluation run (JSON-serialisable; written into the report).

    dataset: as in BuildConfig (``movielens-100k``, ``synthetic[:SEED]``, a layout dir).
    seeds: number of random 80/20 user splits (seed s uses numpy default_rng(s)).
    test_frac: held-out user share. k: neighbours retrieved per cold ad.
    methods: which of BASE_METHODS to run. generator / generator_options: add LLM-HYPER
    variants over that backend (``gemini`` or ``openai``) for every shots value in
    ``llm_shots`` and caption setting in ``llm_captions``; each is scored with and without
    calibration. default_options: ContentKNNGenerator options. user_sample: calibration
    sample size. latency_users: held-out users sent as Rank calls per method through a real
    gRPC server (0 = skip). work_dir: caches and the evaluation store. out_dir: reports.
    """

    dataset: str = "movielens-100k"
    seeds: Annotated[int, Field(ge=1)] = 10
    test_frac: Annotated[float, Field(gt=0, lt=1)] = 0.2
    k: Annotated[int, Field(ge=1)] = 20
    methods: tuple[str, ...] = BASE_METHODS
    generator: Literal["gemini", "openai"] | None = None
    generator_options: dict[str, Any] = Field(default_factory=dict)
    llm_shots: tuple[Annotated[int, Field(ge=0)], ...] = (0, 3, 5)
    llm_captions: tuple[bool, ...] = (True, False)
    default_options: dict[str, Any] = Field(default_factory=dict)
    user_sample: Annotated[int, Field(ge=1)] = 2000
    ece_bins: Annotated[int, Field(ge=1)] = 10
    latency_users: Annotated[int, Field(ge=0)] = 200
    work_dir: str = ".llmhyper-work"
    out_dir: str = "eval-report"
    quiet: bool = False

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [m for m in v if m not in BASE_METHODS]
        if bad:
            raise ValueError(f"unknown method(s) {bad}; known: {list(BASE_METHODS)}")
        return v

    @field_validator("default_options")
    @classmethod
    def _default_options_build(cls, v: dict[str, Any]) -> dict[str, Any]:
        if v:
            from offline.generators.content_knn import ContentKNNGenerator

            ContentKNNGenerator(**v)  # names the unknown or bad option
        return v


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(f"[evaluate] {msg}", file=sys.stderr, flush=True)


def user_split(n_users: int, test_frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train user indices, test user indices), sorted, from a seeded permutation."""
    perm = np.random.default_rng(seed).permutation(n_users)
    n_test = max(1, int(round(n_users * test_frac)))
    if n_test >= n_users:
        raise ValueError(f"need at least 2 users for a {test_frac} test split")
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


# ------------------------------------------------------------------------- derived labels
def _slug(s: str) -> str:
    return "".join(ch.lower() if ch.isalnum() else "_" for ch in s).strip("_").replace("__", "_")


def derived_key_features(ad: Any, features: Sequence[tuple[str, str]]) -> tuple[int | None, list[int]]:
    """DERIVED explainability labels of one ad (no human annotation exists on public data).

    The ad's label terms are its category plus any genres listed as ``Genres: a, b`` in its
    description (the MovieLens adapter's format). A feature is a key feature of the ad when its
    name ends with ``_<slug(term)>`` (MovieLens: ``genre_share_<genre>``). Returns (target
    feature index for HitRate@5 = the category's feature or None, all key feature indices).
    """
    terms: list[str] = []
    if getattr(ad, "category", ""):
        terms.append(ad.category)
    desc = getattr(ad, "description", "") or ""
    if "Genres:" in desc:
        tail = desc.split("Genres:", 1)[1].split(".")[0]
        terms += [t.strip() for t in tail.split(",") if t.strip()]
    names = [n for n, _ in features]
    keys: list[int] = []
    target = None
    for ti, term in enumerate(terms):
        suf = "_" + _slug(term)
        hits = [j for j, n in enumerate(names) if j > 0 and n.endswith(suf)]
        if ti == 0 and hits:
            target = hits[0]
        keys += [j for j in hits if j not in keys]
    return target, keys


# ----------------------------------------------------------------------------- method weights
@dataclass
class MethodWeights:
    """Cold weights of one method for one seed: theta f32[C, F] (None for score-only methods),
    or scores f32[N_test, C] (embedding baseline); info: generator/calibration details."""

    theta: np.ndarray | None
    scores: np.ndarray | None = None
    info: dict = field(default_factory=dict)


def _thetas(generated: Sequence[Any], fallback: Callable[[int], np.ndarray]) -> tuple[np.ndarray, int]:
    """Stack generated thetas; a failed ad (non-finite theta) gets ``fallback(c)``. Returns (theta, n_failed)."""
    rows, n_failed = [], 0
    for c, g in enumerate(generated):
        th = np.asarray(g.theta, dtype=np.float32)
        if g.failed or not np.all(np.isfinite(th)):
            n_failed += 1
            th = fallback(c)
        rows.append(th)
    return np.ascontiguousarray(np.stack(rows), dtype=np.float32), n_failed


class Evaluator:
    """Runs the protocol for an :class:`EvalConfig`; ``run()`` returns the result dict."""

    def __init__(self, cfg: EvalConfig, dataset: Any | None = None, serving: ServingPath | None = None) -> None:
        self.cfg = cfg
        self.build_cfg = pipeline.BuildConfig(dataset=cfg.dataset, k=cfg.k, work_dir=cfg.work_dir,
                                              user_sample=cfg.user_sample)
        self.dataset = dataset
        self.serving: ServingPath = serving if serving is not None else InMemoryServing()
        self.versions: dict[str, dict[int, Any]] = {}

    # -- stages --------------------------------------------------------------------------
    def prepare(self) -> None:
        t0 = time.perf_counter()
        ds = self.dataset if self.dataset is not None else pipeline.load_source(self.cfg.dataset)
        self.prep = pipeline.prepare(ds, self.build_cfg, quiet=self.cfg.quiet)
        self.ds = ds
        sp = self.prep.split
        self.Yc = ds.labels(sp.cold) if ds.implicit else None
        if self.Yc is None:
            raise ValueError(f"dataset {ds.name!r} logs impressions (implicit_negatives=false); the "
                             "dense-label protocol needs implicit negatives")
        self.neighbours = pipeline.neighbour_lists(self.prep)
        self.timings = {"prepare_s": time.perf_counter() - t0, **self.prep.timings}

    def _generate(self, gen: Any) -> list:
        return pipeline.generate_cold(self.prep, gen, quiet=True)

    def _deterministic(self) -> dict[str, np.ndarray]:
        """Seed-independent uncalibrated weights: lrcold, popularity, knn-raw."""
        from offline.generators.baselines import LRColdGenerator, PopularityGenerator
        from offline.generators.knn import RawKNNGenerator

        out = {}
        ms = self.cfg.methods
        if "lrcold" in ms:
            out["lrcold"] = _thetas(self._generate(LRColdGenerator().fit(self.prep)), lambda c: None)[0]
        if "popularity" in ms:
            out["popularity"] = _thetas(self._generate(PopularityGenerator()), lambda c: None)[0]
        if "knn-raw" in ms or "knn-raw+cal" in ms:
            gen = RawKNNGenerator(k=10)
            out["knn-raw"] = _thetas(self._generate(gen), lambda c: None)[0]
        return out

    def _llm_variants(self) -> dict[str, np.ndarray]:
        """Uncalibrated LLM weights per (shots, caption) variant; failed ads fall back to knn-raw."""
        from offline.generators.knn import RawKNNGenerator

        out: dict[str, np.ndarray] = {}
        self.llm_info: dict[str, dict] = {}
        knn = RawKNNGenerator(k=10)
        feats = self.ds.features
        for shots in self.cfg.llm_shots:
            for cap in self.cfg.llm_captions:
                opts = dict(self.cfg.generator_options)
                opts["shots"] = shots
                opts["use_caption"] = cap
                bcfg = pipeline.BuildConfig(dataset=self.cfg.dataset, k=self.cfg.k, work_dir=self.cfg.work_dir,
                                            generator=self.cfg.generator, generator_options=opts,
                                            use_caption=cap)
                gen = pipeline.make_generator(bcfg)
                name = f"llm[{self.cfg.generator},{shots}-shot,{'caption' if cap else 'no-caption'}]"
                _log(f"generating {name} for {len(self.prep.split.cold)} ads", self.cfg.quiet)
                t0 = time.perf_counter()
                generated = self._generate(gen)
                theta, n_failed = _thetas(generated, lambda c: knn.generate(
                    self.prep.cold_ads[c], self.neighbours[c], feats).theta)
                cost: dict[str, float] = {}
                for g in generated:
                    for key in ("calls", "retries", "invalid", "input_tokens", "output_tokens"):
                        cost[key] = cost.get(key, 0) + (g.cost or {}).get(key, 0)
                self.llm_info[name] = {"n_failed": n_failed, "fallback": knn.name, "seconds": time.perf_counter() - t0, "cost": cost,
                                       "model": getattr(getattr(gen, "backend", None), "model", None)}
                from offline.evaluation.consistency import llm_row_consistency  # paper eq. 5

                self.llm_info[name].update(llm_row_consistency(gen, self.prep.cold_ads, generated, feats))
                out[name] = theta
        return out

    def _seed_weights(self, seed: int, tr: np.ndarray, te: np.ndarray, fixed: dict[str, np.ndarray]) -> dict[str, MethodWeights]:
        from offline.stages import train
        from offline.generators.baselines import embedding_scores
        from offline.generators.content_knn import ContentKNNGenerator

        ds, prep, ms = self.ds, self.prep, self.cfg.methods
        out: dict[str, MethodWeights] = {}
        Xs = pipeline.user_sample(ds, self.cfg.user_sample, seed, users=tr)
        if "lrwarm" in ms:
            th = train.train_logreg(np.ascontiguousarray(ds.X[tr]), self.Yc[tr], prep.l2)
            out["lrwarm"] = MethodWeights(np.ascontiguousarray(th, dtype=np.float32), info={"l2": prep.l2})
        for name in ("lrcold", "knn-raw"):
            if name in ms:
                out[name] = MethodWeights(fixed[name])
        if "popularity" in ms:
            # intercept-only weights; the shift to the neighbours' mean CTR is the same calibration
            # step as eq. 2 (a no-op up to rounding when every user weight is zero)
            out["popularity"] = MethodWeights(fixed["popularity"])
        if "knn-raw+cal" in ms:
            th, _ = pipeline.calibrate_cold(prep, fixed["knn-raw"], Xs, normalize=True, shift=True)
            out["knn-raw+cal"] = MethodWeights(th)
        if "embedding" in ms:
            out["embedding"] = MethodWeights(None, scores=embedding_scores(prep, te))
        if "default" in ms:
            gen = ContentKNNGenerator(**self.cfg.default_options).fit(prep, users=tr)
            th = _thetas(self._generate(gen), lambda c: None)[0]
            out["default"] = MethodWeights(th, info=gen.config())
        for name, th in fixed.items():
            if name.startswith("llm["):
                out[name + "+cal"] = MethodWeights(pipeline.calibrate_cold(prep, th, Xs, True, True)[0])
                out[name] = MethodWeights(th)
        return out

    def _publish(self, method: str, seed: int, theta: np.ndarray) -> np.ndarray:
        """Publish ``theta`` through the serving path and return the matrix it serves."""
        cold_ids = [self.ds.ads[i].ad_id for i in self.prep.split.cold]
        v, view = self.serving.publish(method, seed, cold_ids, theta)
        self.versions.setdefault(method, {})[seed] = v
        return view

    def _score(self, theta_view: np.ndarray, X_te: np.ndarray,
               Y_te: np.ndarray) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
        """(metrics, logits f32[B, C], probabilities f32[B, C]) of one published version."""
        import scoring

        S = scoring.score_matrix(theta_view, X_te)  # [B, C] logits
        idx, _, _ = scoring.topk_batch(theta_view, X_te, 10)
        P = scoring.sigmoid(np.ascontiguousarray(S.ravel())).reshape(S.shape)
        return {
            "auc": M.auc(Y_te, S),
            "ndcg5": _nanmean(M.ndcg_from_ranking(Y_te, idx, 5)),
            "ndcg10": _nanmean(M.ndcg_from_ranking(Y_te, idx, 10)),
            "per_ad_auc": M.mean_per_ad_auc(Y_te, S),
            "ctr_rho": M.ad_rank_corr(Y_te, P.mean(axis=0)),
            "log_loss": M.log_loss_from_logits(Y_te, S),
            "ece": M.ece(Y_te, P, self.cfg.ece_bins),
        }, S, P

    def _explain(self, theta: np.ndarray) -> dict[str, float]:
        targets, sets = zip(*self._labels)
        return {"hr5": M.hit_rate_at_k(theta, targets, 5), "cov5": M.coverage_at_k(theta, sets, 5)}

    # -- the run -------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        t_start = time.perf_counter()
        self.prepare()
        sp = self.prep.split
        _log(f"{self.ds.name}: {len(sp.warm)} retired / {len(sp.cold)} active ads, {self.ds.n_users} users, "
             f"{cfg.seeds} seeds", cfg.quiet)
        self._labels = [derived_key_features(self.ds.ads[i], self.ds.features) for i in sp.cold]
        t0 = time.perf_counter()
        fixed = self._deterministic()
        if cfg.generator:
            fixed.update(self._llm_variants())
        self.timings["generate_s"] = time.perf_counter() - t0
        self.serving.open(list(self.ds.user_ids), np.ascontiguousarray(self.ds.X, dtype=np.float32),
                          list(self.ds.features))
        per_seed: dict[str, list[dict[str, float]]] = {}
        per_ad: dict[str, list[float]] = {}
        reliab: dict[str, dict[str, np.ndarray]] = {}
        X = np.ascontiguousarray(self.ds.X, dtype=np.float32)
        t0 = time.perf_counter()
        try:
            for seed in range(cfg.seeds):
                tr, te = user_split(self.ds.n_users, cfg.test_frac, seed)
                X_te, Y_te = np.ascontiguousarray(X[te]), self.Yc[te]
                weights = self._seed_weights(seed, tr, te, fixed)
                for name, mw in weights.items():
                    if mw.theta is not None:
                        view = self._publish(name, seed, mw.theta)
                        m, S, P = self._score(view, X_te, Y_te)
                        m.update(self._explain(np.asarray(view)) if name != "popularity" else
                                 {"hr5": float("nan"), "cov5": float("nan")})
                    else:
                        S = mw.scores
                        ranked = np.argsort(-S, axis=1, kind="stable")[:, :10]
                        m = {"auc": M.auc(Y_te, S), "ndcg5": _nanmean(M.ndcg_from_ranking(Y_te, ranked, 5)),
                             "ndcg10": _nanmean(M.ndcg_from_ranking(Y_te, ranked, 10)),
                             "per_ad_auc": M.mean_per_ad_auc(Y_te, S),
                             "ctr_rho": M.ad_rank_corr(Y_te, S.mean(axis=0)), "log_loss": float("nan"),
                             "ece": float("nan"), "hr5": float("nan"), "cov5": float("nan")}
                        P = None
                    per_seed.setdefault(name, []).append(m)
                    if seed == 0:
                        per_ad[name] = [float(v) for v in M.per_ad_auc(Y_te, S) if np.isfinite(v)]
                        if P is not None:
                            reliab[name] = M.reliability(Y_te, P, cfg.ece_bins)
                _log(f"seed {seed + 1}/{cfg.seeds}: " + ", ".join(
                    f"{n} {per_seed[n][-1]['auc']:.3f}" for n in ("lrwarm", "lrcold", "knn-raw", "default")
                    if n in per_seed), cfg.quiet)
            self.timings["score_s"] = time.perf_counter() - t0
            latency = self._latency() if cfg.latency_users > 0 else {}
        finally:
            self.serving.close()
        self.timings["total_s"] = time.perf_counter() - t_start
        summary = {name: summarise(rows) for name, rows in per_seed.items()}
        for name, lat in latency.items():
            summary[name]["latency_ms"] = lat
        return {
            "config": cfg.to_dict(),
            "dataset": {"name": self.ds.name, "n_users": self.ds.n_users, "n_retired": int(len(sp.warm)),
                        "n_active": int(len(sp.cold)), "cutoff": sp.cutoff, "l2": self.prep.l2,
                        "n_features": len(self.ds.features)},
            "derived_labels": ("HitRate@5 / Coverage@5 use DERIVED key features: the genre-share features "
                               "of each movie's genres (target = its first genre); no human labels."),
            "summary": summary,
            "per_seed": per_seed,
            "per_ad_auc_seed0": per_ad,
            "reliability_seed0": {n: {k: np.asarray(v).tolist() for k, v in t.items()} for n, t in reliab.items()},
            "gap_closed": gap_closed(summary),
            "llm": getattr(self, "llm_info", {}),
            "timings": self.timings,
            "store": self.serving.location,
        }

    def _latency(self) -> dict[str, dict[str, float]]:
        """Per-user Rank latency (ms) of each linear method's seed-0 version, measured by the
        serving path (by user id, top 10, held-out users of seed 0); {} in memory."""
        _, te = user_split(self.ds.n_users, self.cfg.test_frac, 0)
        uids = [self.ds.user_ids[i] for i in te][: self.cfg.latency_users]
        seed0 = {name: by_seed[0] for name, by_seed in self.versions.items() if 0 in by_seed}
        return self.serving.latency(seed0, uids)


def _nanmean(v: np.ndarray) -> float:
    v = np.asarray(v, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


def summarise(rows: Sequence[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per metric over seeds: mean, std (population, ddof=0), min, max, n (finite values only)."""
    out: dict[str, dict[str, float]] = {}
    for key in rows[0]:
        v = np.array([r[key] for r in rows], dtype=np.float64)
        v = v[np.isfinite(v)]
        if v.size == 0:
            out[key] = {"mean": float("nan"), "std": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
        else:
            out[key] = {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()),
                        "max": float(v.max()), "n": int(v.size)}
    return out


def gap_closed(summary: dict[str, dict]) -> dict[str, float]:
    """Share of the LRcold -> LRwarm mean-AUC gap each method closes (NaN without both ends)."""
    if "lrwarm" not in summary or "lrcold" not in summary:
        return {}
    lo, hi = summary["lrcold"]["auc"]["mean"], summary["lrwarm"]["auc"]["mean"]
    if not hi > lo:
        return {}
    return {n: (s["auc"]["mean"] - lo) / (hi - lo) for n, s in summary.items()}


def evaluate(cfg: EvalConfig, dataset: Any | None = None, write: bool = True,
             serving: ServingPath | None = None) -> dict[str, Any]:
    """Run the evaluation; with ``write`` also write the Markdown, JSON and PNG reports to
    ``cfg.out_dir`` (see offline/evaluation/report.py). ``serving``: where weights are published
    and latency measured (default in memory, no latency). Returns the result dict."""
    result = Evaluator(cfg, dataset, serving).run()
    if write:
        from offline.evaluation.report import write_reports

        result["files"] = write_reports(result, cfg.out_dir)
    return result
