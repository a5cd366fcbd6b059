"""Refusals and the one place exceptions become gRPC status codes.

Handlers raise :class:`RequestError` (a status code and a message for the caller); the guard
(``guard.py``) turns every exception into a status with :func:`status_of`. Unparseable request
bytes become a :class:`_BadBytes` (see :func:`_safe_deserializer`) answered INVALID_ARGUMENT.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Sequence

import grpc
from google.protobuf.message import DecodeError

from llmhyper.store.weight_store import StoreError, VersionNotFound

log = logging.getLogger("llmhyper.server")

_SC = grpc.StatusCode


class RequestError(Exception):
    """A request the server refuses: carries the gRPC status code and a message for the caller."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _invalid(msg: str) -> RequestError:
    return RequestError(_SC.INVALID_ARGUMENT, msg)


def _not_found(msg: str) -> RequestError:
    return RequestError(_SC.NOT_FOUND, msg)


_MAX_ECHO = 64  # characters of a caller-supplied string echoed back in an error message
_MAX_DETAILS = 2000  # grpc clients drop a call whose status details exceed their metadata limit


def _short(s: str) -> str:
    """repr() of a caller-supplied string, cut to ``_MAX_ECHO`` characters for error messages."""
    if len(s) <= _MAX_ECHO:
        return repr(s)
    return f"{s[:_MAX_ECHO]!r}... ({len(s)} chars)"


def _preview(items: Sequence[str], n: int = 5) -> str:
    shown = ", ".join(_short(s) for s in items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")


def unknown_user(user_id: object, n_users: int) -> RequestError:
    """NOT_FOUND for a user id the store's user table (of ``n_users`` users) does not hold."""
    return _not_found(f"unknown user_id {_short(str(user_id))} (the store's user table has {n_users} users)")


class _BadBytes:
    """What the request deserializer returns for bytes that are not the method's protobuf."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


_BAD_BYTES_LOG_EVERY_S = 10.0
_bad_bytes_log = {"last": 0.0, "suppressed": 0}
_bad_bytes_lock = threading.Lock()


def _log_bad_bytes(name: str, error: str) -> None:
    """One log line per ``_BAD_BYTES_LOG_EVERY_S`` seconds at most, with how many were suppressed."""
    now = time.monotonic()
    with _bad_bytes_lock:
        if now - _bad_bytes_log["last"] < _BAD_BYTES_LOG_EVERY_S:
            _bad_bytes_log["suppressed"] += 1
            return
        suppressed, _bad_bytes_log["suppressed"], _bad_bytes_log["last"] = _bad_bytes_log["suppressed"], 0, now
    log.warning("%s: request bytes do not parse (%s); answered INVALID_ARGUMENT (%d more such requests "
                "in the last %.0f s not logged)", name, error, suppressed, _BAD_BYTES_LOG_EVERY_S)


def _safe_deserializer(message_cls: Any) -> Callable[[bytes], Any]:
    """``message_cls.FromString`` that returns a :class:`_BadBytes` instead of raising, so the
    guard answers INVALID_ARGUMENT (grpc itself would answer INTERNAL and log a traceback)."""
    parse = message_cls.FromString

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except (DecodeError, ValueError, RuntimeError) as e:
            return _BadBytes(f"{type(e).__name__}: {str(e)[:120]}")

    return deserialize


def status_of(name: str, exc: Exception) -> tuple[grpc.StatusCode, str]:
    """(status code, message) answering ``exc`` raised by handler ``name``; logs the traceback of
    server-side failures (call it inside the ``except`` block)."""
    if isinstance(exc, RequestError):
        return exc.code, exc.message
    if isinstance(exc, VersionNotFound):
        return _SC.NOT_FOUND, str(exc)
    if isinstance(exc, ValueError):  # a validation we did not anticipate: still the caller's input
        return _SC.INVALID_ARGUMENT, f"invalid request: {exc}"
    if isinstance(exc, StoreError):
        log.exception("%s: store error", name)
        return _SC.INTERNAL, f"store error: {exc}"
    log.exception("%s: unexpected error", name)
    return _SC.INTERNAL, f"internal error in {name}: {type(exc).__name__}: {exc}"


def cap_details(msg: str) -> str:
    """``msg`` cut to ``_MAX_DETAILS`` characters: never let an echoed value turn the answer into
    RESOURCE_EXHAUSTED."""
    if len(msg) > _MAX_DETAILS:
        msg = msg[:_MAX_DETAILS] + "..."
    return msg
