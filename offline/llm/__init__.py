"""LLM backends behind one interface (:class:`LLMBackend`) and the errors our retry policy reads."""

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


def make_backend(kind: str, model: str, **kwargs) -> LLMBackend:
    """Build a backend by kind: "gemini" (google-genai) or "openai" (OpenAI-compatible HTTP).

    kwargs go to the backend constructor (base_url, api_key, temperature, timeout_s, ...).
    """
    if kind == "gemini":
        from offline.llm.gemini import GeminiBackend

        return GeminiBackend(model, **kwargs)
    if kind in ("openai", "openai_compat", "openai-compatible"):
        from offline.llm.openai_compat import OpenAICompatBackend

        base_url = kwargs.pop("base_url", None)
        if not base_url:
            raise ValueError("openai backend needs base_url")
        return OpenAICompatBackend(base_url, model, **kwargs)
    raise ValueError(f"unknown LLM backend kind {kind!r}; expected 'gemini' or 'openai'")


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
]
