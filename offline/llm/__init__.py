"""LLM backends behind one interface (:class:`LLMBackend`) and the errors our retry policy reads."""

from typing import Any, Mapping

from offline.llm.base import (
    FatalLLMError,
    LLMBackend,
    LLMError,
    LLMReply,
    QuotaExhausted,
    RetryableLLMError,
    classify_http_error,
    is_daily_quota,
)


BACKEND_KEYS = frozenset({"model", "base_url", "api_key", "temperature", "timeout_s", "max_output_tokens",
                          "max_tokens", "api_key_env", "response_format"})
BACKENDS = ("gemini", "openai")


def make_backend(kind: str, options: Mapping[str, Any]) -> LLMBackend:
    """An LLM backend: ``kind`` "gemini" (google-genai) or "openai" (OpenAI-compatible HTTP).

    ``options`` go to the backend constructor and must be among :data:`BACKEND_KEYS`
    (model, base_url, api_key, temperature, timeout_s, ...); an unknown key or kind is a
    ValueError that names it.
    """
    unknown = sorted(set(options) - BACKEND_KEYS)
    if unknown:
        raise ValueError(f"unknown LLM backend option(s) {unknown}; known: {sorted(BACKEND_KEYS)}")
    if kind == "gemini":
        from offline.llm.gemini import GeminiBackend

        return GeminiBackend(**options)
    if kind == "openai":
        from offline.llm.openai_compat import OpenAICompatBackend

        if not options.get("base_url"):
            raise ValueError("the openai backend needs base_url")
        return OpenAICompatBackend(**options)
    raise ValueError(f"LLM backend must be one of {BACKENDS}, got {kind!r}")


__all__ = [
    "FatalLLMError",
    "LLMBackend",
    "LLMError",
    "LLMReply",
    "QuotaExhausted",
    "RetryableLLMError",
    "classify_http_error",
    "is_daily_quota",
    "make_backend",
    "BACKEND_KEYS",
    "BACKENDS",
]
