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
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from offline.llm.base import LLMBackend
from offline.llm.retrying import CallFailed, RetryingLLM, new_cost
from offline.llm.cache import ad_content_hash, answer_key
from offline.llm.parse import ParsedAnswer, parse_weights
from offline.generators.knn import RawKNNGenerator
from offline.types import Generated, Neighbour, check_features, check_neighbours
from offline.data.cache import content_hash
from offline.llm.images import MAX_BYTES, MAX_SIDE, ImageError, load_image
from offline.llm.judge import JUDGE_MODES, feedback_block
from offline.llm.prompts import Prompt, PromptConfig, build_prompt, feature_batches, scan_ad_text

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
    ad) or "knn" (theta = the raw kNN weights, ``fallback="knn-raw"``, the name of the generator that stood in); ``failed`` holds the reason either
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
        judge: str = "off",
        judge_rounds: int = 1,
        images: bool = True,
        image_max_bytes: int = MAX_BYTES,
        image_max_side: int = MAX_SIDE,
        prompt_file: Any = None,
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
        if judge not in JUDGE_MODES:
            raise ValueError(f"judge must be one of {JUDGE_MODES}, got {judge!r}")
        if isinstance(judge_rounds, bool) or not isinstance(judge_rounds, int) or not 0 <= judge_rounds <= 5:
            raise ValueError(f"judge_rounds must be an integer in 0..5, got {judge_rounds!r}")
        if image_max_bytes < 1024 or image_max_side < 16:
            raise ValueError("image_max_bytes must be >= 1024 and image_max_side >= 16")
        feature_batches(1, batch_size)  # validates batch_size
        pf = None
        if prompt_file is not None:  # a versioned prompt file (llmhyper optimize-prompt) sets shots too
            from offline.llm.prompt_file import PromptFile, load_prompt_file

            pf = prompt_file if isinstance(prompt_file, PromptFile) else load_prompt_file(prompt_file)
            shots = pf.shots
        prompt_config = PromptConfig(shots=shots, use_caption=use_caption, reasoning=reasoning, bound=bound,
                                     **({"instruction": pf.instruction, "version": pf.version} if pf else {}))
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
        self.judge, self.judge_rounds = judge, int(judge_rounds)
        self.images = bool(images)
        self.image_max_bytes, self.image_max_side = int(image_max_bytes), int(image_max_side)
        self.prompt_file = pf
        self.name = f"llm:{backend.name}:{backend.model}"

    def config(self) -> dict:
        """Settings that shaped the weights, for the manifest."""
        c = self.prompt_config
        return {
            "backend": self.backend.name, "model": self.backend.model,
            "fingerprint": self.backend.fingerprint(), "prompt_version": c.version,
            "prompt_file": self.prompt_file.manifest_entry() if self.prompt_file else None,
            "judge": self.judge, "judge_rounds": self.judge_rounds, "images": self.images,
            "n_samples": self.n_samples, "batch_size": self.batch_size, "shots": c.shots,
            "use_caption": c.use_caption, "reasoning": c.reasoning, "bound": self.bound,
            "bias_mode": self.bias_mode, "on_failure": self.on_failure, "min_samples": self.min_samples,
            "seed": self.seed, "max_retries": self.max_retries, "knn": self.knn.config(),
        }

    # ------------------------------------------------------------------- one sample
    def _parse(self, text: str, keys: Sequence[str]) -> ParsedAnswer:
        return parse_weights(text, keys, bound=self.bound, reasoning=self.prompt_config.reasoning)

    # ------------------------------------------------------------------ one batch
    def _batch(self, ad: "Ad", neighbours: list[Neighbour], feats: list[tuple[str, str]], findex: dict,
               bcols: list[int], ctx: dict, cost: dict, round_: int = 0,
               notes: Sequence[dict] = ()) -> tuple[np.ndarray, dict[str, str], str, int, str]:
        """``n_samples`` answers for one feature batch: (samples f64[n, len(bcols)] NaN where
        rejected, rationale, analysis, accepted count, last failure reason). Round > 0 is a
        regeneration after the judge rejected features (``notes`` shown to the model)."""
        batch = [feats[c] for c in bcols]
        prompt = build_prompt(ad, neighbours, batch, findex, self.prompt_config)
        if notes:
            prompt = Prompt(prompt.system, prompt.user.replace("\n\n## Output", "\n\n" + feedback_block(notes)
                                                               + "\n\n## Output", 1),
                            prompt.schema, prompt.keys, prompt.reasoning)
        psha = prompt.sha256()
        version = self.prompt_config.version + (f"|regen{round_}" if round_ else "")
        n = self.n_samples
        out = np.full((n, len(bcols)), np.nan)
        rationale: dict[str, str] = {}
        analysis, accepted, last_reason = "", 0, ""
        for s in range(n):
            key = answer_key(ad_hash=ctx["ahash"], batch_names=prompt.keys, prompt_version=version,
                             model=ctx["fp"], sample=s, neighbour_ids=ctx["nb_ids"], prompt_sha=psha,
                             seed=self.seed + s)
            meta = {"key": key, "prompt_sha": psha, "prompt_version": version, "model": ctx["fp"],
                    "sample": s, "seed": self.seed + s, "batch": list(prompt.keys), "ad_hash": ctx["ahash"],
                    "neighbour_ids": ctx["nb_ids"], **({"round": round_} if round_ else {})}
            try:
                ans = self.ask(prompt.system, prompt.user, prompt.schema,
                               lambda text: self._parse(text, prompt.keys), key, self.seed + s, meta, cost,
                               record=lambda a: {"weights": a.weights}, images=ctx["images"])
            except CallFailed as e:
                last_reason = e.reason
                if n - (s + 1) + accepted < self.min_samples:
                    break  # cannot reach min_samples any more
                continue
            accepted += 1
            out[s] = [ans.weights[k] for k in prompt.keys]
            for k, txt in ans.rationale.items():
                rationale.setdefault(k, txt)
            if ans.analysis and not analysis:
                analysis = ans.analysis
        return out, rationale, analysis, accepted, last_reason

    # ----------------------------------------------------------------------- one ad

    def generate(self, ad: "Ad", neighbours: list[Neighbour], features: list[tuple[str, str]]) -> Generated:
        """Weights f32[F] for one ad. Raises QuotaExhausted / auth FatalLLMError (job stops);
        any other failure (an answer, the judge, the ad's image) is returned as
        ``Generated.failed`` with the reason."""
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
        ctx = {"ahash": ad_content_hash(ad), "fp": self.backend.fingerprint(), "images": (),
               "nb_ids": [str(getattr(nb.ad, "ad_id", "")) for nb in shown]}
        rationale: dict[str, str] = {}
        analysis = ""
        failed: str | None = None
        judge_rec: dict | None = None
        if self.images and getattr(ad, "image_path", None):
            try:
                img = load_image(ad.image_path, self.image_max_bytes, self.image_max_side)
            except ImageError as e:
                failed = f"image: {e}"
            else:  # the bytes sent are part of every cache key: a replaced image asks again
                ctx["images"] = (img,)
                ctx["ahash"] = content_hash(ctx["ahash"], "image", img.sha256)
                if img.downscaled:
                    flags = sorted({*flags, "image:downscaled"})

        batches = [[cols[p] for p in pos] for pos in feature_batches(len(cols), self.batch_size)]
        for bi, bcols in enumerate(batches if failed is None else []):
            out, rat, ana, accepted, last_reason = self._batch(ad, neighbours, feats, findex, bcols, ctx, cost)
            samples[:, bcols] = out
            for k, txt in rat.items():
                rationale.setdefault(k, txt)
            analysis = analysis or ana
            if accepted < self.min_samples:
                names = [feats[c][0] for c in bcols]
                failed = (f"batch {bi} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''}): "
                          f"{accepted}/{n} samples accepted; {last_reason}")
                break
        if failed is None and self.judge != "off":
            from offline.generators.judging import review_ad

            failed, judge_rec = review_ad(self, ad, neighbours, feats, findex, batches, samples, rationale,
                                          ctx, cost)
            if judge_rec and judge_rec.get("unresolved"):
                flags = sorted({*flags, "judge:unresolved"})

        with warnings.catch_warnings():  # all-NaN columns of a failed ad are expected
            warnings.simplefilter("ignore", RuntimeWarning)
            theta = np.nanmean(samples, axis=0)
            spread = np.nanstd(samples, axis=0)
        fallback = None
        if failed is not None:
            if self.on_failure == "knn" and knn is not None:
                theta, fallback = knn.theta.astype(np.float64), self.knn.name
            else:
                theta = np.full(F, np.nan)
        return Generated(
            theta=theta.astype(np.float32), rationale=rationale, samples=samples.astype(np.float32),
            spread=spread.astype(np.float32), cost=cost, failed=failed, flags=flags,
            fallback=fallback, analysis=analysis, judge=judge_rec,
        )
