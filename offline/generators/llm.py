"""Weight generation for cold ads: the deterministic KNN baseline and the LLM hypernetwork.

``KNNGenerator``: similarity-weighted average of the neighbours' trained weights (softmax with a
temperature, a power of the similarity, or uniform) -- deterministic, no LLM, the offline default.

``LLMGenerator``: splits the features into batches (paper appendix A), asks the backend
``n_samples`` times per batch, validates each answer strictly (offline/parse.py), averages the
accepted samples (paper C.1) and records rationale, spread and cost. Retries use capped
exponential backoff with full jitter; a daily-quota error stops the whole job; every validated
answer is cached on disk before it is used, so a killed job resumes without repeating a call.
"""

from __future__ import annotations

import math
import re
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol, Sequence

import numpy as np

from offline.llm.base import LLMBackend
from offline.llm.retrying import CallFailed, RetryingLLM, new_cost
from offline.llm.cache import ad_content_hash, answer_key
from offline.llm.parse import ParsedAnswer, parse_weights
from offline.llm.prompts import PROMPT_VERSION, PromptConfig, build_prompt, feature_batches, scan_ad_text

if TYPE_CHECKING:  # pragma: no cover
    from offline.data.dataset import Ad


@dataclass
class Neighbour:
    """A retrieved warm ad: its record, trained weights f32[F], similarity to the target
    (cosine, higher = closer) and its mean predicted CTR on the user sample (NaN if unknown)."""

    ad: "Ad"
    theta: np.ndarray
    similarity: float
    mean_ctr: float = float("nan")


@dataclass
class Generated:
    """Generated weights of one ad.

    theta: f32[F] (NaN-filled when the ad failed and ``on_failure="exclude"``).
    rationale: {feature: text} (reasoning mode; first accepted sample). samples: f32[n, F]
    per-sample weights (NaN where a sample was rejected). spread: f32[F] std across samples.
    cost: counters -- calls, retries, invalid, cache_hits, input_tokens, output_tokens,
    llm_seconds, backoff_seconds, errors {reason: count}. failed: reason or None.
    flags: prompt-injection flags of the ad text. fallback: "knn" if theta is the KNN fallback.
    analysis: the model's short ad analysis (reasoning mode).
    """

    theta: np.ndarray
    rationale: dict[str, str]
    samples: np.ndarray
    spread: np.ndarray
    cost: dict
    failed: str | None = None
    flags: list[str] = field(default_factory=list)
    fallback: str | None = None
    analysis: str = ""

    @property
    def usable(self) -> bool:
        """True if theta is finite and may be published (ok, or failed with a fallback)."""
        return bool(np.all(np.isfinite(self.theta)))

    def record(self) -> dict:
        """JSON-serialisable per-ad record for the artifact (rationale, spread, cost, flags...)."""
        spread = [None if not math.isfinite(float(v)) else float(v) for v in self.spread]
        return {
            "rationale": dict(self.rationale),
            "analysis": self.analysis,
            "n_samples": int(self.samples.shape[0]),
            "spread": spread,
            "cost": self.cost,
            "failed": self.failed,
            "fallback": self.fallback,
            "flags": list(self.flags),
        }


class WeightGenerator(Protocol):
    """Anything that turns (ad, neighbours, features) into weights."""

    name: str

    def generate(self, ad: "Ad", neighbours: list[Neighbour], features: list[tuple[str, str]]) -> Generated:
        """Weights f32[F] for ``ad``, aligned with ``features`` (index 0 = ``bias``)."""
        ...


_FEATURE_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")


def _check_features(features: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    feats = [(str(n), str(d)) for n, d in features]
    if not feats:
        raise ValueError("features is empty")
    seen: set[str] = set()
    for n, _ in feats:
        if not n or len(n) > 128:
            raise ValueError(f"feature name {n[:40]!r} must be 1..128 characters")
        # names appear outside the data blocks (the Output section lists them), so they must be
        # plain identifiers, as features.csv requires: no words, spaces or markup can ride along
        if not _FEATURE_NAME_RE.fullmatch(n):
            raise ValueError(f"feature name {n[:40]!r} must be an identifier (letters, digits, _ . -): "
                             "no spaces, control, invisible or markup characters")
        if n in seen:
            raise ValueError(f"duplicate feature name {n!r}")
        seen.add(n)
    return feats


def check_neighbours(ad: "Ad", neighbours: Sequence[Neighbour], F: int, allow_empty: bool = False) -> None:
    """Raise ValueError unless there is at least one neighbour (unless ``allow_empty``) and each
    has a finite theta f[F] and a finite similarity (shared by every generator that reads them)."""
    if not neighbours and not allow_empty:
        raise ValueError(f"ad {getattr(ad, 'ad_id', '?')}: needs at least one neighbour")
    for nb in neighbours:
        th = np.asarray(nb.theta)
        if th.shape != (F,):
            raise ValueError(f"neighbour {getattr(nb.ad, 'ad_id', '?')} theta has shape {th.shape}, expected ({F},)")
        if not np.all(np.isfinite(th)):
            raise ValueError(f"neighbour {getattr(nb.ad, 'ad_id', '?')} theta has non-finite values")
        if not math.isfinite(float(nb.similarity)):
            raise ValueError(f"neighbour {getattr(nb.ad, 'ad_id', '?')} similarity is not finite")


# ----------------------------------------------------------------------------------- KNN


class KNNGenerator:
    """Similarity-weighted average of neighbour weights (deterministic, no LLM).

    weighting: "softmax" (w ∝ exp(sim / temperature)), "power" (w ∝ max(sim, 0) ** power) or
    "uniform". k: use only the k most similar neighbours (None = all given).
    """

    name = "knn"

    def __init__(self, weighting: str = "softmax", temperature: float = 0.05, power: float = 1.0, k: int | None = None):
        if weighting not in ("softmax", "power", "uniform"):
            raise ValueError(f"weighting must be 'softmax', 'power' or 'uniform', got {weighting!r}")
        if not (temperature > 0 and math.isfinite(temperature)):
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not (power >= 0 and math.isfinite(power)):
            raise ValueError(f"power must be >= 0, got {power}")
        if k is not None and k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.weighting, self.temperature, self.power, self.k = weighting, float(temperature), float(power), k

    def config(self) -> dict:
        """The settings, for the manifest."""
        return {"weighting": self.weighting, "temperature": self.temperature, "power": self.power, "k": self.k}

    def mix_weights(self, sims: np.ndarray) -> np.ndarray:
        """Mixing weights f64[k] (sum 1) for similarities f[k]."""
        s = np.asarray(sims, dtype=np.float64)
        if self.weighting == "uniform":
            return np.full(s.shape[0], 1.0 / s.shape[0])
        if self.weighting == "softmax":
            e = np.exp((s - s.max()) / self.temperature)
            return e / e.sum()
        p = np.clip(s, 0.0, None) ** self.power
        tot = p.sum()
        return p / tot if tot > 0 else np.full(s.shape[0], 1.0 / s.shape[0])

    def generate(self, ad: "Ad", neighbours: list[Neighbour], features: list[tuple[str, str]]) -> Generated:
        """theta = sum_i w_i theta_i over the (k most similar) neighbours; spread = weighted std."""
        feats = _check_features(features)
        F = len(feats)
        check_neighbours(ad, neighbours, F)
        order = sorted(range(len(neighbours)), key=lambda i: (-float(neighbours[i].similarity), i))
        if self.k is not None:
            order = order[: self.k]
        T = np.stack([np.asarray(neighbours[i].theta, dtype=np.float64) for i in order])
        w = self.mix_weights(np.array([neighbours[i].similarity for i in order]))
        theta = w @ T
        spread = np.sqrt(np.clip(w @ (T - theta) ** 2, 0.0, None))
        return Generated(
            theta=theta.astype(np.float32),
            rationale={},
            samples=T.astype(np.float32),
            spread=spread.astype(np.float32),
            cost={},
            failed=None,
            flags=scan_ad_text(ad),
        )


# ----------------------------------------------------------------------------------- LLM


class LLMGenerator(RetryingLLM):
    """Weights from an LLM backend, one feature batch at a time, ``n_samples`` answers averaged.

    backend: an :class:`~offline.llm.base.LLMBackend`. batch_size: features per request (paper
    5-10). shots: reference ads shown (0/3/5). use_caption / reasoning: prompt options.
    bound: max |weight| accepted (logit scale). cache_dir: answer cache (None = memory only).
    max_retries: retries per sample after the first attempt (transient errors and rejected
    answers share this budget). backoff: sleep ~ U(0, min(backoff_cap, backoff_base * 2**attempt))
    seconds ("full jitter"), at least the server's Retry-After (capped). max_concurrency: bound
    on simultaneous backend calls (and generate_all's worker count). seed: base sampling seed
    (sample s is sent seed + s). bias_mode: "neighbours" (intercept from the KNN mix, not asked)
    or "llm" (batched like any feature). on_failure: "exclude" (theta NaN; the caller drops the
    ad) or "knn" (theta = KNN weights, ``fallback="knn"``); ``failed`` holds the reason either
    way. min_samples: accepted samples needed per batch (default all n_samples). sleep:
    injectable sleep function (tests).
    """

    def __init__(
        self,
        backend: LLMBackend,
        n_samples: int = 3,
        batch_size: int = 8,
        shots: int = 5,
        use_caption: bool = True,
        reasoning: bool = False,
        bound: float = 10.0,
        cache_dir: str | Path | None = None,
        max_retries: int = 5,
        backoff_base: float = 0.5,
        backoff_cap: float = 20.0,
        max_concurrency: int = 4,
        seed: int = 0,
        *,
        bias_mode: str = "neighbours",
        on_failure: str = "exclude",
        min_samples: int | None = None,
        knn: KNNGenerator | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        if bias_mode not in ("neighbours", "llm"):
            raise ValueError(f"bias_mode must be 'neighbours' or 'llm', got {bias_mode!r}")
        if on_failure not in ("exclude", "knn"):
            raise ValueError(f"on_failure must be 'exclude' or 'knn', got {on_failure!r}")
        if min_samples is not None and not (1 <= min_samples <= n_samples):
            raise ValueError(f"min_samples must be in 1..n_samples, got {min_samples}")
        feature_batches(1, batch_size)  # validates batch_size
        prompt_config = PromptConfig(shots=shots, use_caption=use_caption, reasoning=reasoning, bound=bound)
        # last: it creates the cache directory, which a rejected configuration must not leave behind
        super().__init__(backend, cache_dir, max_retries, backoff_base, backoff_cap, max_concurrency, sleep)
        self.n_samples = int(n_samples)
        self.batch_size = int(batch_size)
        self.prompt_config = prompt_config
        self.bound = float(bound)
        self.seed = int(seed)
        self.bias_mode = bias_mode
        self.on_failure = on_failure
        self.min_samples = int(min_samples or n_samples)
        self.knn = knn or KNNGenerator()
        self.name = f"llm:{backend.name}:{backend.model}"

    def config(self) -> dict:
        """Settings that shaped the weights, for the manifest."""
        c = self.prompt_config
        return {
            "backend": self.backend.name, "model": self.backend.model,
            "fingerprint": self.backend.fingerprint(), "prompt_version": PROMPT_VERSION,
            "n_samples": self.n_samples, "batch_size": self.batch_size, "shots": c.shots,
            "use_caption": c.use_caption, "reasoning": c.reasoning, "bound": self.bound,
            "bias_mode": self.bias_mode, "on_failure": self.on_failure, "min_samples": self.min_samples,
            "seed": self.seed, "max_retries": self.max_retries, "knn": self.knn.config(),
        }

    # ------------------------------------------------------------------- one sample
    def _parse(self, text: str, keys: Sequence[str]) -> ParsedAnswer:
        return parse_weights(text, keys, bound=self.bound, reasoning=self.prompt_config.reasoning)

    def _sample(self, prompt, key: str, seed: int, meta: dict, cost: dict) -> ParsedAnswer:
        """One validated answer for a feature batch (cache, else backend with retries)."""
        return self.ask(prompt.system, prompt.user, prompt.schema, lambda text: self._parse(text, prompt.keys),
                        key, seed, meta, cost, record=lambda ans: {"weights": ans.weights})

    # ----------------------------------------------------------------------- one ad

    def generate(self, ad: "Ad", neighbours: list[Neighbour], features: list[tuple[str, str]]) -> Generated:
        """Weights f32[F] for one ad. Raises QuotaExhausted / auth FatalLLMError (job stops);
        any other failure is returned as ``Generated.failed`` with the reason."""
        feats = _check_features(features)
        F = len(feats)
        if self.bias_mode == "neighbours" and feats[0][0] != "bias":
            raise ValueError(f"features[0] must be the intercept 'bias', got {feats[0][0]!r}")
        check_neighbours(ad, neighbours, F, allow_empty=True)  # zero-shot prompts need none
        flags = scan_ad_text(ad)
        cost = new_cost()
        findex = {n: i for i, (n, _) in enumerate(feats)}
        knn = self.knn.generate(ad, neighbours, feats) if neighbours else None
        cols = list(range(1, F)) if self.bias_mode == "neighbours" else list(range(F))
        n = self.n_samples
        samples = np.full((n, F), np.nan, dtype=np.float64)
        if self.bias_mode == "neighbours":
            samples[:, 0] = float(knn.theta[0]) if knn is not None else 0.0
        shown = sorted(neighbours, key=lambda nb: -float(nb.similarity))[: self.prompt_config.shots]
        nb_ids = [str(getattr(nb.ad, "ad_id", "")) for nb in shown]
        ahash = ad_content_hash(ad)
        fp = self.backend.fingerprint()
        rationale: dict[str, str] = {}
        analysis = ""
        failed: str | None = None

        for bi, pos in enumerate(feature_batches(len(cols), self.batch_size)):
            bcols = [cols[p] for p in pos]
            batch = [feats[c] for c in bcols]
            prompt = build_prompt(ad, neighbours, batch, findex, self.prompt_config)
            psha = prompt.sha256()
            accepted = 0
            last_reason = ""
            for s in range(n):
                key = answer_key(ad_hash=ahash, batch_names=prompt.keys, prompt_version=PROMPT_VERSION,
                                 model=fp, sample=s, neighbour_ids=nb_ids, prompt_sha=psha,
                                 seed=self.seed + s)
                meta = {"key": key, "prompt_sha": psha, "prompt_version": PROMPT_VERSION, "model": fp,
                        "sample": s, "seed": self.seed + s, "batch": list(prompt.keys), "ad_hash": ahash,
                        "neighbour_ids": nb_ids}
                try:
                    ans = self._sample(prompt, key, self.seed + s, meta, cost)
                except CallFailed as e:
                    last_reason = e.reason
                    if n - (s + 1) + accepted < self.min_samples:
                        break  # cannot reach min_samples any more
                    continue
                accepted += 1
                for k, c in zip(prompt.keys, bcols):
                    samples[s, c] = ans.weights[k]
                for k, txt in ans.rationale.items():
                    rationale.setdefault(k, txt)
                if ans.analysis and not analysis:
                    analysis = ans.analysis
            if accepted < self.min_samples:
                failed = (f"batch {bi} ({', '.join(prompt.keys[:3])}{', ...' if len(prompt.keys) > 3 else ''}): "
                          f"{accepted}/{n} samples accepted; {last_reason}")
                break

        with warnings.catch_warnings():  # all-NaN columns of a failed ad are expected
            warnings.simplefilter("ignore", RuntimeWarning)
            theta = np.nanmean(samples, axis=0)
            spread = np.nanstd(samples, axis=0)
        fallback = None
        if failed is not None:
            if self.on_failure == "knn" and knn is not None:
                theta, fallback = knn.theta.astype(np.float64), "knn"
            else:
                theta = np.full(F, np.nan)
        return Generated(
            theta=theta.astype(np.float32), rationale=rationale, samples=samples.astype(np.float32),
            spread=spread.astype(np.float32), cost=cost, failed=failed, flags=flags,
            fallback=fallback, analysis=analysis,
        )


# ------------------------------------------------------------------------------ the job


def generate_all(
    generator: WeightGenerator,
    ads: Sequence["Ad"],
    neighbours_per_ad: Sequence[list[Neighbour]],
    features: list[tuple[str, str]],
    progress: bool = True,
    *,
    max_workers: int | None = None,
) -> list[Generated]:
    """Generate weights for every ad (result i <-> ads[i]) with a progress bar on stderr and at
    most ``max_workers`` ads in flight (default: the generator's ``max_concurrency``, else 1).

    Resumable: with an ``LLMGenerator`` cache_dir, re-running after a kill reuses every cached
    answer. QuotaExhausted (or an auth error, or Ctrl-C) stops the job: pending ads are cancelled,
    running ones stop at their next call, everything validated so far is already on disk, and
    the exception is re-raised.
    """
    if len(ads) != len(neighbours_per_ad):
        raise ValueError(f"{len(ads)} ads but {len(neighbours_per_ad)} neighbour lists")
    from tqdm import tqdm

    workers = int(max_workers or getattr(generator, "max_concurrency", 1) or 1)
    results: list[Generated | None] = [None] * len(ads)
    n_failed = 0
    with tqdm(total=len(ads), file=sys.stderr, disable=not progress, desc=f"generate[{generator.name}]",
              unit="ad", dynamic_ncols=True) as bar:
        ex = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gen")
        futs = {ex.submit(generator.generate, ad, list(nbs), features): i
                for i, (ad, nbs) in enumerate(zip(ads, neighbours_per_ad))}
        try:
            for fut in as_completed(futs):
                g = fut.result()
                results[futs[fut]] = g
                n_failed += g.failed is not None
                bar.update(1)
                if n_failed:
                    bar.set_postfix(failed=n_failed)
        except BaseException as e:
            if hasattr(generator, "stop"):
                generator.stop(e if isinstance(e, Exception) else RuntimeError(f"job interrupted: {e!r}"))
            for f in futs:
                f.cancel()
            ex.shutdown(wait=True, cancel_futures=True)
            raise
        ex.shutdown(wait=True)
    return results  # type: ignore[return-value]  # every slot is filled when no exception


def partition_failed(results: Sequence[Generated]) -> tuple[list[int], list[int]]:
    """(indices with usable weights, indices to exclude): an ad is excluded when it failed
    without a fallback (theta not finite)."""
    keep = [i for i, g in enumerate(results) if g.usable]
    drop = [i for i, g in enumerate(results) if not g.usable]
    return keep, drop
