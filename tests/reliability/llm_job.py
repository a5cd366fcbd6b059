"""A resumable LLM weight-generation job, run as its own process by row 14.

``python -m tests.reliability.llm_job BASE_URL CACHE_DIR OUT_PREFIX``

Runs the production path (``LLMGenerator`` + the real google-genai client via
``GeminiBackend`` + ``generate_all``) over the seeded catalog of tests/test_generate.py.
Every backoff the retry policy chooses is appended to ``OUT_PREFIX.sleeps`` as
``<seconds> <monotonic time>`` before sleeping (the sleep itself is capped at 20 ms so the
suite stays fast; the recorded value is the policy's choice). Exit codes: 0 finished
(weights in ``OUT_PREFIX.npy``), 3 stopped by QuotaExhausted (message on stderr).
"""

from __future__ import annotations

import sys
import time

import numpy as np

from offline.generators.job import generate_all
from offline.generators.llm import LLMGenerator
from offline.llm.base import QuotaExhausted
from offline.llm.gemini import GeminiBackend
from tests.helpers import FEATS, make_catalog

N_ADS, N_SAMPLES, BATCH, WORKERS = 8, 2, 4, 2
BACKOFF_BASE, BACKOFF_CAP, MAX_RETRIES = 0.05, 0.5, 6


def make_generator(base_url: str, cache_dir: str, sleep) -> LLMGenerator:
    backend = GeminiBackend("gemini-fake", api_key="test-key", base_url=base_url, timeout_s=60)
    return LLMGenerator(backend, n_samples=N_SAMPLES, batch_size=BATCH, max_concurrency=WORKERS,
                        max_retries=MAX_RETRIES, backoff_base=BACKOFF_BASE, backoff_cap=BACKOFF_CAP,
                        cache_dir=cache_dir, sleep=sleep)


def main(base_url: str, cache_dir: str, out_prefix: str) -> int:
    log = open(out_prefix + ".sleeps", "a", buffering=1)

    def sleep(d: float) -> None:
        log.write(f"{d!r} {time.monotonic()!r}\n")
        time.sleep(min(d, 0.02))

    ads, nbs = make_catalog(N_ADS)
    gen = make_generator(base_url, cache_dir, sleep)
    try:
        res = generate_all(gen, ads, nbs, FEATS, progress=False)
    except QuotaExhausted as e:
        print(f"stopped: daily quota exhausted: {e}", file=sys.stderr, flush=True)
        return 3
    np.save(out_prefix + ".npy", np.stack([g.theta for g in res]))
    print("finished", sum(g.failed is not None for g in res), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:4]))
