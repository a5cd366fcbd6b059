"""The offline build: dataset -> warm training -> embedding -> retrieval -> generation ->
calibration -> a :class:`~offline.data.artifact.WeightArtifact` ready to publish.

Every stage is a plain function over plain arrays so the evaluation harness runs exactly the
production path (``prepare`` once, then ``generate_cold`` / ``calibrate_cold`` per method).
Expensive stages are cached under ``BuildConfig.work_dir`` by content hash (warm weights,
embeddings, LLM responses), so a second run recomputes nothing and a killed run resumes.
Nothing is written to a store here: ``llmhyper build`` publishes the artifact only after
every stage succeeded.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Sequence

import numpy as np
from pydantic import Field, field_validator

from offline.data.artifact import UserTable, WeightArtifact
from offline.data.cache import content_hash, load_npy, save_npy_atomic
from offline.data.dataset import Dataset, Split
from offline.data.reader import load_dataset
from offline.config import StrictConfig
from offline.errors import InputError
from offline.generators import registry
from offline.stages.prepared import Prepared
from offline.types import WeightGenerator



class BuildError(RuntimeError):
    """A stage failed; nothing was published. The message names the stage and the cause."""


class BuildConfig(StrictConfig):
    """Everything a build depends on (JSON-serialisable; stored in the manifest).

    dataset: a dataset directory in the documented layout, ``synthetic[:SEED]``, or
        ``movielens-100k[:PATH]`` (default path: ``$LLMHYPER_MOVIELENS`` or ../shared/data).
    split_quantile / split_cutoff / min_interactions: the warm/cold time split (None: the
        dataset's declared default, else the 0.7 quantile and 5 interactions).
    l2: L2 strength of warm training; None chooses it on held-out users from ``l2_grid``.
    embedder: ``minilm`` (bundled all-MiniLM-L6-v2), ``openclip:MODEL[:PRETRAINED_TAG_OR_PATH]``.
    k: neighbours (reference ads) per cold ad.
    generator: a name from :data:`offline.generators.registry.GENERATORS`: ``knn-content`` (the
        deterministic default; ``knn`` is an alias), ``knn-raw``, ``gemini`` or ``openai``.
    generator_options: passed to the generator/backend constructor (model, base_url, shots, ...).
    normalize / shift: calibration steps (paper eq. 2); None = the generator's measured default.
    user_sample: users sampled (seeded) for calibration's mean-CTR target.
    on_failure: what to do with an ad whose generation failed: ``fallback`` to the kNN weights,
        ``exclude`` it from the version, or ``abort`` the build.
    limit_cold: generate only the first N cold ads (by ad index), e.g. to try an LLM config
        cheaply; None: all of them.
    work_dir: caches (warm weights, embeddings, LLM responses).
    """

    dataset: str = "synthetic"
    split_quantile: Annotated[float, Field(gt=0, lt=1)] | None = None
    split_cutoff: float | None = None
    min_interactions: Annotated[int, Field(ge=1)] | None = None
    l2: Annotated[float, Field(gt=0)] | None = None
    l2_grid: tuple[Annotated[float, Field(gt=0)], ...] = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
    embedder: Annotated[str, Field(pattern=r"^(minilm|openclip:.+)$")] = "minilm"
    use_caption: bool = True
    k: Annotated[int, Field(ge=1)] = 20
    generator: str = "knn-content"
    generator_options: dict[str, Any] = Field(default_factory=dict)
    normalize: bool | None = None
    shift: bool | None = None
    user_sample: Annotated[int, Field(ge=1)] = 2000
    on_failure: Literal["fallback", "exclude", "abort"] = "fallback"
    limit_cold: Annotated[int, Field(ge=1)] | None = None
    work_dir: str = ".llmhyper-work"
    seed: int = 0

    @field_validator("generator")
    @classmethod
    def _known_generator(cls, v: str) -> str:
        return registry.canonical(v)  # an alias becomes the canonical name


# -- stage 0: the data ---------------------------------------------------------------------------
def movielens_path(explicit: str | None = None) -> Path:
    """Where MovieLens 100K is read from: ``explicit``, else $LLMHYPER_MOVIELENS, else ../shared/data."""
    from offline.data.adapters import DEFAULT_MOVIELENS_PATH

    return Path(explicit or os.environ.get("LLMHYPER_MOVIELENS") or DEFAULT_MOVIELENS_PATH)


def load_source(spec: str) -> Dataset:
    """Load a dataset from a spec: a layout directory, ``synthetic[:SEED]`` or ``movielens-100k[:PATH]``."""
    name, _, arg = spec.partition(":")
    if name == "synthetic":
        from offline.data.adapters.synthetic import make_synthetic

        ds, _truth = make_synthetic(seed=int(arg) if arg else 0)
        return ds
    if name in ("movielens-100k", "movielens"):
        from offline.data.adapters.movielens import load_movielens

        return load_movielens(movielens_path(arg or None))
    path = Path(spec)
    if not path.is_dir():
        raise InputError(
            f"dataset {spec!r} is neither a directory in the dataset layout nor one of "
            "'synthetic[:SEED]', 'movielens-100k[:PATH]'")
    return load_dataset(path)


# -- stage 1-3: warm weights, embeddings, neighbours -----------------------------------------------
def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(f"[llmhyper] {msg}", file=sys.stderr, flush=True)


def train_warm(ds: Dataset, split: Split, cfg: BuildConfig, quiet: bool = True,
               stats: dict[str, Any] | None = None) -> tuple[np.ndarray, float]:
    """Per-ad logistic regression for every warm ad over all users; cached by content hash.

    Returns (theta float32 [W, F], l2 used); ``stats["warm_cache"]`` is set to "hit" or "miss".
    """
    stats = {} if stats is None else stats
    from offline.stages import train

    work = Path(cfg.work_dir) / "warm"
    if ds.implicit:
        Y = ds.labels(split.warm)
        data_key = content_hash(ds.X.tobytes(), np.packbits(Y).tobytes(), str(Y.shape))
    else:
        u, c, y = ds.pairs(split.warm)
        data_key = content_hash(ds.X.tobytes(), u.tobytes(), c.tobytes(), y.tobytes(), str(len(split.warm)))
    key = content_hash(data_key, json.dumps([cfg.l2, list(cfg.l2_grid), cfg.seed]))
    cached = load_npy(work / f"{key}.npy")
    meta_path = work / f"{key}.json"
    if cached is not None and meta_path.is_file() and cached.shape == (len(split.warm), ds.X.shape[1]):
        _log(f"warm weights: cache hit ({cached.shape[0]} ads)", quiet)
        stats["warm_cache"] = "hit"
        return cached, float(json.loads(meta_path.read_text())["l2"])
    stats["warm_cache"] = "miss"
    t0 = time.perf_counter()
    if ds.implicit:
        l2 = cfg.l2 if cfg.l2 is not None else train.choose_l2(ds.X, Y, cfg.l2_grid, seed=cfg.seed)
        theta = train.train_logreg(ds.X, Y, l2)
    else:
        l2 = cfg.l2 if cfg.l2 is not None else train.choose_l2_pairs(
            ds.X, u, c, y, len(split.warm), cfg.l2_grid, seed=cfg.seed)
        theta = train.train_logreg_pairs(ds.X, u, c, y, len(split.warm), l2)
    save_npy_atomic(work / f"{key}.npy", theta)
    meta_path.write_text(json.dumps({"l2": l2, "seconds": time.perf_counter() - t0}))
    _log(f"warm weights: trained {theta.shape[0]} ads (l2={l2:g}) in {time.perf_counter() - t0:.1f}s", quiet)
    return theta, float(l2)


def make_embedder(spec: str, work_dir: str | os.PathLike, use_caption: bool = True):
    """An on-disk-cached embedder from a spec (``minilm`` or ``openclip:MODEL[:PRETRAINED]``)."""
    from offline.stages.embed import CachedEmbedder, MiniLMEmbedder, OpenClipEmbedder

    if spec == "minilm":
        inner = MiniLMEmbedder(use_caption=use_caption)
    elif spec.startswith("openclip:"):
        parts = spec.split(":", 2)
        inner = OpenClipEmbedder(parts[1], pretrained=parts[2] if len(parts) > 2 else None,
                                 use_caption=use_caption)
    else:
        raise ValueError(f"unknown embedder {spec!r}")
    return CachedEmbedder(inner, Path(work_dir) / "embeddings")


def neighbours(emb: np.ndarray, split: Split, ad_ids: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
    """k nearest warm ads of every cold ad: (positions into split.warm int64 [C,k], sims float32 [C,k])."""
    from offline.stages.retrieve import NeighbourIndex

    warm_ids = [ad_ids[i] for i in split.warm]
    index = NeighbourIndex(emb[split.warm], warm_ids)
    cold_ids = [ad_ids[i] for i in split.cold]
    idx, sim = index.search(emb[split.cold], min(k, len(warm_ids)), exclude=cold_ids)
    return np.asarray(idx, dtype=np.int64), np.asarray(sim, dtype=np.float32)


def prepare(ds: Dataset, cfg: BuildConfig, quiet: bool = True) -> Prepared:
    """Split, train warm ads, embed all ads and find each cold ad's neighbours."""
    timings: dict[str, float] = {}
    cache: dict[str, Any] = {}
    split = ds.time_split(cfg.split_quantile, cfg.min_interactions, cfg.split_cutoff)
    if len(split.warm) == 0:
        raise BuildError("split: no warm (retired) ads before the cutoff; nothing to learn from")
    if len(split.cold) == 0:
        raise BuildError("split: no cold (active) ads at or after the cutoff; nothing to generate")
    if cfg.limit_cold is not None:
        split = Split(warm=split.warm, cold=split.cold[: cfg.limit_cold], cutoff=split.cutoff)
    _log(f"split: cutoff={split.cutoff:.0f} warm={len(split.warm)} cold={len(split.cold)} "
         f"users={ds.n_users} features={len(ds.features)}", quiet)
    t0 = time.perf_counter()
    warm_theta, l2 = train_warm(ds, split, cfg, quiet, cache)
    timings["train_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    embedder = make_embedder(cfg.embedder, cfg.work_dir, cfg.use_caption)
    emb = np.asarray(embedder.embed_ads(ds.ads), dtype=np.float32)
    cache["embed_hits"], cache["embed_misses"] = embedder.hits, embedder.misses
    timings["embed_s"] = time.perf_counter() - t0
    _log(f"embeddings: {emb.shape[0]} ads x {emb.shape[1]} dims in {timings['embed_s']:.1f}s", quiet)
    t0 = time.perf_counter()
    nbr, sim = neighbours(emb, split, ds.ad_ids, cfg.k)
    timings["retrieve_s"] = time.perf_counter() - t0
    return Prepared(ds, split, warm_theta, ds.mean_ctr(split.warm), l2, emb, nbr, sim, timings, cache)


# -- stage 4: generation ---------------------------------------------------------------------------
def make_generator(cfg: BuildConfig) -> WeightGenerator:
    """The configured weight generator, from the registry."""
    return registry.make_generator(cfg.generator, cfg.generator_options, work_dir=cfg.work_dir,
                                   use_caption=cfg.use_caption, seed=cfg.seed)


def neighbour_lists(prep: Prepared, rows: Sequence[int] | None = None) -> list[list]:
    """The Neighbour objects (ad, trained theta, similarity, observed CTR) of each cold ad."""
    from offline.types import Neighbour

    ds, split = prep.dataset, prep.split
    rows = range(len(split.cold)) if rows is None else rows
    out = []
    for c in rows:
        out.append([Neighbour(ad=ds.ads[split.warm[j]], theta=prep.warm_theta[j],
                              similarity=float(s), mean_ctr=float(prep.warm_ctr[j]))
                    for j, s in zip(prep.nbr[c], prep.sim[c])])
    return out


def generate_cold(prep: Prepared, generator, quiet: bool = True) -> list:
    """Run ``generator`` for every cold ad (resumable for LLM generators); list of Generated."""
    from offline.generators.job import generate_all

    return generate_all(generator, prep.cold_ads, neighbour_lists(prep), prep.dataset.features,
                        progress=not quiet)


# -- stage 5: calibration --------------------------------------------------------------------------
def default_calibration(generator: str) -> tuple[bool, bool]:
    """(normalize, shift) measured best for ``generator``: off for the kNN family, on for LLMs."""
    return registry.spec(generator).calibration


def user_sample(ds: Dataset, n: int, seed: int, users: np.ndarray | None = None) -> np.ndarray:
    """float32 [S, F] seeded sample of user feature rows (from ``users`` indices if given)."""
    pool = np.arange(ds.n_users) if users is None else np.asarray(users)
    rng = np.random.default_rng(seed)
    pick = pool if len(pool) <= n else rng.choice(pool, size=n, replace=False)
    return np.ascontiguousarray(ds.X[np.sort(pick)], dtype=np.float32)


def calibrate_cold(prep: Prepared, thetas: np.ndarray, X_sample: np.ndarray, normalize: bool,
                   shift: bool) -> tuple[np.ndarray, list[dict]]:
    """Calibrate each cold ad's theta (rows of ``thetas`` f32 [C,F]); returns (theta', per-ad info)."""
    from offline.stages.calibrate import calibrate, neighbour_alpha

    out = np.empty_like(thetas, dtype=np.float32)
    info: list[dict] = []
    for c in range(thetas.shape[0]):
        alpha = neighbour_alpha(prep.warm_theta[prep.nbr[c]], X_sample, prep.sim[c]) if shift else None
        res = calibrate(thetas[c], X_sample, alpha if shift else 0.5, normalize=normalize, shift=shift)
        out[c] = res.theta
        info.append({"alpha": float(alpha) if shift else None, "delta": res.delta,
                     "scale": res.scale, "achieved_mean_ctr": res.achieved})
    return out, info


# -- the whole build -------------------------------------------------------------------------------
@dataclass
class BuildResult:
    artifact: WeightArtifact
    users: UserTable
    report: dict[str, Any]


def build(cfg: BuildConfig, quiet: bool = False, dataset: Dataset | None = None,
          prep: Prepared | None = None) -> BuildResult:
    """Run every stage and return the artifact, the user table and a run report.

    ``prep``: an already prepared dataset (split, warm weights, embeddings, neighbours) to
    generate from instead of running :func:`prepare` (its dataset is used; ``dataset`` ignored).

    Raises BuildError (nothing is returned, so nothing can be published) when a stage fails or,
    with ``on_failure='abort'``, when any ad failed.
    """
    t_start = time.perf_counter()
    if prep is None:
        ds = dataset if dataset is not None else load_source(cfg.dataset)
        prep = prepare(ds, cfg, quiet)
    ds = prep.dataset
    gen = make_generator(cfg)
    if hasattr(gen, "fit"):  # generators that learn from the warm ads (e.g. launch-time drift)
        gen.fit(prep)
    _log(f"generate: {len(prep.split.cold)} cold ads with {getattr(gen, 'name', cfg.generator)}", quiet)
    t0 = time.perf_counter()
    generated = generate_cold(prep, gen, quiet)
    prep.timings["generate_s"] = time.perf_counter() - t0

    failed = [(prep.dataset.ads[prep.split.cold[c]].ad_id, g.failed) for c, g in enumerate(generated) if g.failed]
    if failed and cfg.on_failure == "abort":
        raise BuildError(f"generate: {len(failed)} ads failed (on_failure=abort), first: {failed[0]}")
    thetas = np.stack([g.theta for g in generated]).astype(np.float32)
    keep = np.ones(len(generated), dtype=bool)
    if failed:
        fallback = make_generator(BuildConfig(generator=registry.DEFAULT_GENERATOR))
        fallback.fit(prep)
        nl = neighbour_lists(prep)
        for c, g in enumerate(generated):
            if not g.failed:
                continue
            if cfg.on_failure == "exclude":
                keep[c] = False
                thetas[c] = 0.0  # never published; keeps calibration's inputs finite
            else:
                thetas[c] = fallback.generate(prep.cold_ads[c], nl[c], ds.features).theta
    default_norm, default_shift = default_calibration(cfg.generator)
    normalize = default_norm if cfg.normalize is None else cfg.normalize
    shift = default_shift if cfg.shift is None else cfg.shift
    Xs = user_sample(ds, cfg.user_sample, cfg.seed)
    t0 = time.perf_counter()
    cal_thetas, cal_info = calibrate_cold(prep, thetas, Xs, normalize, shift)
    fell_back = [c for c, g in enumerate(generated) if g.failed and cfg.on_failure == "fallback"]
    knn_cal = default_calibration(registry.DEFAULT_GENERATOR)
    if fell_back and cfg.normalize is None and cfg.shift is None and knn_cal != (normalize, shift):
        # fallback rows are kNN weights: calibrate them the way kNN weights are calibrated
        fb_thetas, fb_info = calibrate_cold(prep, thetas, Xs, *knn_cal)
        for c in fell_back:
            cal_thetas[c], cal_info[c] = fb_thetas[c], fb_info[c]
    prep.timings["calibrate_s"] = time.perf_counter() - t0
    if not keep.any():
        raise BuildError(f"generate: every ad failed; nothing to publish (first: {failed[0]})")
    if not np.all(np.isfinite(cal_thetas)):
        raise BuildError("calibrate: produced non-finite weights")

    ad_ids: list[str] = []
    records: dict[str, dict] = {}
    rows = []
    for c, g in enumerate(generated):
        ad = prep.cold_ads[c]
        rec = {
            **g.record(),
            "neighbours": [[prep.dataset.ads[prep.split.warm[j]].ad_id, float(s)]
                           for j, s in zip(prep.nbr[c], prep.sim[c])],
            **cal_info[c],
        }
        if g.failed and cfg.on_failure == "fallback":
            rec["fallback"] = registry.DEFAULT_GENERATOR  # the generator whose weights stand in
        if keep[c]:  # an excluded ad's failure stays in manifest["failed"] and the run report
            records[ad.ad_id] = rec
            ad_ids.append(ad.ad_id)
            rows.append(cal_thetas[c])
    if not ad_ids:
        raise BuildError("generate: every ad failed; nothing to publish")
    from offline.llm.prompts import PROMPT_VERSION

    manifest = {
        "created_at": time.time(),
        "dataset": ds.name,
        "generator": getattr(gen, "name", cfg.generator),
        "generator_config": gen.config() if cfg.generator == "knn-content" else None,
        "model": getattr(getattr(gen, "backend", None), "model", None),
        "prompt_version": (gen.config().get("prompt_version", PROMPT_VERSION)  # type: ignore[attr-defined]
                           if registry.spec(cfg.generator).uses_llm else None),
        "prompt_file": gen.config().get("prompt_file") if registry.spec(cfg.generator).uses_llm else None,  # type: ignore[attr-defined]
        "judge": cfg.generator_options.get("judge", "off") if registry.spec(cfg.generator).uses_llm else None,
        "embedder": cfg.embedder,
        "k": cfg.k,
        "l2": prep.l2,
        "normalize": normalize,
        "shift": shift,
        "split": {"cutoff": prep.split.cutoff, "warm": int(len(prep.split.warm)),
                  "cold": int(len(prep.split.cold))},
        "failed": [[a, r] for a, r in failed],
        "config": cfg.to_dict(),
    }
    artifact = WeightArtifact(ad_ids=ad_ids, theta=np.ascontiguousarray(np.stack(rows), dtype=np.float32),
                              features=list(ds.features), manifest=manifest, ad_records=records)
    artifact.validate()
    users = UserTable(user_ids=list(ds.user_ids), X=np.ascontiguousarray(ds.X, dtype=np.float32),
                      features=list(ds.features))
    prep.timings["total_s"] = time.perf_counter() - t_start
    report = {"timings": prep.timings, "cache": prep.cache, "n_published": len(ad_ids), "n_failed": len(failed),
              "failed": manifest["failed"],
              "flagged": {prep.cold_ads[c].ad_id: g.flags for c, g in enumerate(generated) if g.flags}}
    _log(f"build: {len(ad_ids)} ads ready ({len(failed)} failed) in {prep.timings['total_s']:.1f}s", quiet)
    return BuildResult(artifact, users, report)


