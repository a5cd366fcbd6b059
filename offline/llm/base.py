"""The one interface every LLM backend implements, and the error classes our retry policy reads.

Backends make one HTTP call per ``complete`` (the OpenAI-compatible backend may add up to
three more, once per backend, while it finds the structured-output form a server accepts) and
never retry on their own: the generator's
retry loop (offline/generate.py) is the only retry policy, so every attempt is counted.

Error classification (shared by all backends, see :func:`classify_http_error`):

* ``QuotaExhausted`` -- the provider says the *daily* (or billing) quota is spent, so waiting
  minutes will not help and the whole job must stop. Rule: HTTP 429 whose body
  - names a quota id containing ``PerDay`` (Gemini ``QuotaFailure`` details), or
  - has a message mentioning a daily quota (``per day``, ``per-day``, ``daily``), or
  - carries the OpenAI error code/type ``insufficient_quota``.
  A plain 429 (per-minute rate limit, ``RESOURCE_EXHAUSTED`` with a per-minute quota id)
  is retryable, not a quota stop.
* ``RetryableLLMError`` -- 408, 429 (rate limit), 500, 502, 503, 504, timeouts, connection
  resets/refusals, and a 200 whose envelope is not the protocol's JSON.
* ``FatalLLMError`` -- everything else (400 bad request, 404 unknown model, ...). For 401/403
  (bad or missing key) ``stops_job`` is True: every later call would fail the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    from offline.llm.images import ImagePart


class LLMError(Exception):
    """Base class of backend errors; ``status`` is the HTTP status or None (transport errors)."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class RetryableLLMError(LLMError):
    """Transient failure (rate limit, overload, timeout, reset): try again after a backoff."""


class QuotaExhausted(LLMError):
    """The provider's daily/billing quota is spent: stop the whole job (resume later)."""


class FatalLLMError(LLMError):
    """Non-transient failure. ``stops_job`` True for auth errors that would hit every call."""

    def __init__(self, message: str, *, status: int | None = None, stops_job: bool = False):
        super().__init__(message, status=status)
        self.stops_job = stops_job


@dataclass(frozen=True)
class LLMReply:
    """One completion: raw text plus accounting (tokens as reported by the provider, 0 if not)."""

    text: str
    input_tokens: int
    output_tokens: int
    seconds: float  # wall time of the HTTP call


@runtime_checkable
class LLMBackend(Protocol):
    """A chat model that returns JSON text for a (system, user) prompt pair."""

    name: str  # backend kind, e.g. "gemini", "openai"
    model: str  # model id sent to the provider

    def complete(
        self, system: str, user: str, json_schema: dict | None = None, *, seed: int | None = None,
        images: Sequence[ImagePart] = (),
    ) -> LLMReply:
        """Do one call; ``images`` are sent with the user message (checked bytes, see
        offline/llm/images.py). Raises RetryableLLMError, QuotaExhausted or FatalLLMError."""
        ...

    def fingerprint(self) -> str:
        """Settings that change answers (model, temperature, ...), part of every cache key."""
        ...


_DAILY = re.compile(r"per[ -]?day|daily", re.IGNORECASE)


def _walk_strings(obj: Any, depth: int = 0):
    """Yield every string inside a JSON value (bounded depth)."""
    if depth > 8:
        return
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            yield str(k)
            yield from _walk_strings(v, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _walk_strings(v, depth + 1)


def is_daily_quota(body: Any, text: str = "") -> bool:
    """True if a 429 body says the daily/billing quota is spent (see module docstring)."""
    strings = list(_walk_strings(body)) + ([text] if text else [])
    for s in strings:
        if "insufficient_quota" in s:
            return True
        if "quota" in s.lower() and _DAILY.search(s):
            return True
        if re.search(r"PerDay", s):
            return True
    return False


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds form only); None if absent/unparsable."""
    if not value:
        return None
    try:
        v = float(value.strip())
    except ValueError:
        return None
    return v if v >= 0 else None


def classify_http_error(
    status: int, body: Any, text: str = "", retry_after: float | None = None, where: str = "LLM"
) -> LLMError:
    """Map an HTTP error response to our error classes (rules in the module docstring)."""
    snippet = (text or str(body))[:300]
    msg = f"{where} HTTP {status}: {snippet}"
    if status == 429:
        if is_daily_quota(body, text):
            return QuotaExhausted(msg, status=status)
        return RetryableLLMError(msg, status=status, retry_after=retry_after)
    if status in (408, 500, 502, 503, 504):
        return RetryableLLMError(msg, status=status, retry_after=retry_after)
    if status in (401, 403):
        return FatalLLMError(msg, status=status, stops_job=True)
    return FatalLLMError(msg, status=status)
