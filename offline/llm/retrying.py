"""The one retry policy of every LLM call the offline jobs make (weight generation, ad rewrites).

:class:`RetryingLLM` wraps an :class:`~offline.llm.base.LLMBackend` with: an on-disk answer cache
(a validated answer is stored before it is used, so a killed job resumes without repeating a
call), bounded concurrency, capped exponential backoff with full jitter (at least the server's
Retry-After), a shared retry budget for transient errors and rejected answers, and a job-level
stop on a spent daily quota or an auth failure. The retry loop itself is tenacity's; the wait is
ours, because the jitter is seeded per (answer key, attempt) so a resumed job waits the same.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any, Callable

from tenacity import RetryCallState, RetryError, Retrying, retry_if_exception_type, stop_after_attempt

from offline.llm.base import FatalLLMError, LLMBackend, QuotaExhausted, RetryableLLMError
from offline.llm.cache import AnswerCache
from offline.llm.parse import ParseError


def new_cost() -> dict:
    """Empty cost counters of a job (calls, retries, tokens, seconds, errors by reason)."""
    return {
        "calls": 0, "retries": 0, "invalid": 0, "cache_hits": 0, "input_tokens": 0,
        "output_tokens": 0, "llm_seconds": 0.0, "backoff_seconds": 0.0, "errors": {},
    }


class CallFailed(Exception):
    """One answer could not be obtained (retries spent, or a non-job-stopping fatal error)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class RetryingLLM:
    """Backend + cache + retry policy. max_retries: retries per answer after the first attempt;
    backoff: sleep ~ U(0, min(backoff_cap, backoff_base * 2**attempt)) seconds; max_concurrency:
    simultaneous backend calls; sleep: injectable (tests)."""

    def __init__(self, backend: LLMBackend, cache_dir: str | Path | None = None, max_retries: int = 5,
                 backoff_base: float = 0.5, backoff_cap: float = 20.0, max_concurrency: int = 4,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if backoff_base < 0 or backoff_cap < 0:
            raise ValueError("backoff_base and backoff_cap must be >= 0")
        self.backend = backend
        self.cache = AnswerCache(cache_dir)  # after every check: it creates the directory
        self.max_retries = int(max_retries)
        self.backoff_base, self.backoff_cap = float(backoff_base), float(backoff_cap)
        self.max_concurrency = int(max_concurrency)
        self.sleep = sleep
        self._sem = threading.BoundedSemaphore(self.max_concurrency)
        self._stop: BaseException | None = None
        self._stop_lock = threading.Lock()

    # ------------------------------------------------------------------ job-level stop
    def stop(self, exc: BaseException) -> None:
        """Make every later call raise ``exc`` (quota spent, auth failure, interrupt)."""
        with self._stop_lock:
            if self._stop is None:
                self._stop = exc

    def reset_stop(self) -> None:
        """Clear a stop so the object can be used again (e.g. the next day)."""
        with self._stop_lock:
            self._stop = None

    def _check_stop(self) -> None:
        if self._stop is not None:
            raise self._stop

    def backoff_delay(self, key: str, attempt: int, retry_after: float | None = None) -> float:
        """Full-jitter delay before retry ``attempt`` (0-based), deterministic per (key, attempt)."""
        ceiling = min(self.backoff_cap, self.backoff_base * (2.0 ** attempt))
        d = random.Random(f"{key}:{attempt}").uniform(0.0, ceiling)
        if retry_after is not None:
            d = max(d, min(float(retry_after), self.backoff_cap))
        return d

    @staticmethod
    def _count(cost: dict, reason: str) -> None:
        cost["errors"][reason] = cost["errors"].get(reason, 0) + 1

    # ------------------------------------------------------------------- one answer
    def ask(self, system: str, user: str, schema: dict | None, parse: Callable[[str], Any], key: str,
            seed: int, meta: dict, cost: dict, record: Callable[[Any], dict] | None = None) -> Any:
        """One validated answer: ``parse(text)`` of the cached text for ``key``, or of a backend
        reply with retries. ``parse`` raises ParseError to reject an answer (counted against the
        retry budget). The cache stores ``meta`` + the text + accounting + ``record(answer)``.
        Raises CallFailed, or QuotaExhausted / job-stopping FatalLLMError (after stopping)."""
        rec = self.cache.get(key)
        if rec is not None:
            try:
                ans = parse(rec["text"])
                cost["cache_hits"] += 1
                return ans
            except (ParseError, KeyError, TypeError):
                pass  # stale entry (e.g. a tighter bound now): ask again and overwrite it
        state = {"last": "no attempt"}

        def attempt_once() -> Any:
            self._check_stop()
            try:
                with self._sem:
                    self._check_stop()
                    cost["calls"] += 1
                    reply = self.backend.complete(system, user, schema, seed=seed)
                cost["input_tokens"] += reply.input_tokens
                cost["output_tokens"] += reply.output_tokens
                cost["llm_seconds"] += reply.seconds
                ans = parse(reply.text)
            except QuotaExhausted as e:
                self.stop(e)
                raise
            except FatalLLMError as e:
                if e.stops_job:
                    self.stop(e)
                    raise
                self._count(cost, f"fatal_{e.status}")
                raise CallFailed(f"fatal LLM error: {e}") from e
            except RetryableLLMError as e:
                state["last"] = f"transient LLM error: {e}"
                self._count(cost, f"http_{e.status}" if e.status else "transport")
                raise
            except ParseError as e:
                state["last"] = f"invalid answer ({e})"
                cost["invalid"] += 1
                self._count(cost, f"parse_{e.reason}")
                raise
            self.cache.put(key, {**meta, "text": reply.text, **(record(ans) if record else {}),
                                 "input_tokens": reply.input_tokens, "output_tokens": reply.output_tokens,
                                 "seconds": reply.seconds, "created_at": time.time()})
            return ans

        def wait(rs: RetryCallState) -> float:
            exc = rs.outcome.exception() if rs.outcome is not None else None
            return self.backoff_delay(key, rs.attempt_number - 1, getattr(exc, "retry_after", None))

        def count_retry(rs: RetryCallState) -> None:  # runs only when another attempt follows
            cost["retries"] += 1
            cost["backoff_seconds"] += rs.upcoming_sleep

        retrying = Retrying(stop=stop_after_attempt(self.max_retries + 1), wait=wait, sleep=self.sleep,
                            retry=retry_if_exception_type((RetryableLLMError, ParseError)),
                            before_sleep=count_retry)
        try:
            return retrying(attempt_once)
        except RetryError:
            raise CallFailed(f"gave up after {self.max_retries + 1} attempts; last: {state['last']}") from None
