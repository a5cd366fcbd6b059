"""``LLMGenerator``: weights for a cold ad written by an LLM backend (the hypernetwork).

It splits the features into batches (paper appendix A), asks the backend ``n_samples`` times
per batch, validates each answer strictly (offline/llm/parse.py), averages the accepted samples
(paper C.1) and records rationale, spread and cost. Retries use capped exponential backoff with
full jitter; a daily-quota error stops the whole job; every validated answer is cached on disk
before it is used, so a killed job resumes without repeating a call.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from offline.llm.base import LLMBackend
from offline.llm.retrying import CallFailed, RetryingLLM, new_cost
from offline.llm.cache import ad_content_hash, answer_key
from offline.llm.parse import ParsedAnswer, parse_weights
from offline.generators.knn import RawKNNGenerator
from offline.types import Generated, Neighbour, check_features, check_neighbours
from offline.llm.prompts import PROMPT_VERSION, PromptConfig, build_prompt, feature_batches, scan_ad_text

if TYPE_CHECKING:  # pragma: no cover
    from offline.data.dataset import Ad


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
        knn: RawKNNGenerator | None = None,
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
        self.knn = knn or RawKNNGenerator()
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
        feats = check_features(features)
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


