"""Transport security and caller authentication for the Ranker service.

* TLS / mutual TLS: :func:`server_credentials` builds grpc server credentials from PEM
  files (certificate chain, private key, and optionally a client CA; with a client CA,
  clients must present a certificate it signed). :class:`ClientTLS` is the client side.
* Bearer tokens: :class:`BearerTokenInterceptor` requires the metadata entry
  ``authorization: Bearer <token>`` on every RPC and answers UNAUTHENTICATED when it is
  missing or wrong. Methods whose full name starts with one of ``exempt_prefixes`` (by
  default the ``grpc.health.v1.Health`` service, so load balancers and orchestrator
  probes can check health without a secret) pass without a token.

Tokens are compared in constant time. Tokens over a plaintext channel can be sniffed:
use them together with TLS outside loopback.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import grpc

HEALTH_PREFIX = "/grpc.health.v1.Health/"
AUTH_METADATA_KEY = "authorization"


def _read(path: str | Path | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read {what} {path}: {e.strerror or e}") from None


def server_credentials(cert_file: str | Path, key_file: str | Path, client_ca_file: str | Path | None = None) -> grpc.ServerCredentials:
    """TLS credentials for the server from PEM files.

    With ``client_ca_file`` the server requires and verifies a client certificate signed
    by that CA (mutual TLS). Raises ValueError naming an unreadable file.
    """
    cert = _read(cert_file, "TLS certificate")
    key = _read(key_file, "TLS private key")
    ca = _read(client_ca_file, "TLS client CA")
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)


@dataclass(frozen=True)
class ClientTLS:
    """Client-side TLS settings (paths to PEM files).

    Attributes:
        ca_file: CA bundle that signed the server certificate; None uses the system roots.
        cert_file / key_file: client certificate chain and key for mutual TLS; both or neither.
        server_name: override the name checked against the server certificate (e.g. when
            connecting by IP to a certificate issued for a DNS name). None: the target host.
    """

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        """grpc channel credentials for these settings; ValueError on unreadable files."""
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("client TLS cert_file and key_file must be given together")
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca_file, "TLS CA"),
            private_key=_read(self.key_file, "TLS client key"),
            certificate_chain=_read(self.cert_file, "TLS client certificate"),
        )

    def channel_options(self) -> list[tuple[str, str]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def bearer_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """The call metadata that carries ``token`` (precompute once, pass on every call)."""
    return ((AUTH_METADATA_KEY, f"Bearer {token}"),)


def _unauthenticated(message: str) -> grpc.RpcMethodHandler:
    def deny(request: object, context: grpc.ServicerContext) -> None:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    # Request bytes are not deserialised: an unauthenticated caller costs no parsing.
    return grpc.unary_unary_rpc_method_handler(deny, request_deserializer=None, response_serializer=None)


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Server interceptor that admits an RPC only with ``authorization: Bearer <token>``.

    Args:
        tokens: accepted tokens (any one of them passes). Must be non-empty.
        exempt_prefixes: full method names starting with one of these pass without a
            token; default: grpc.health.v1 health checks.
        on_reject: optional callback(method) called for every rejected call (counters).
    """

    def __init__(
        self,
        tokens: Iterable[str],
        exempt_prefixes: Iterable[str] = (HEALTH_PREFIX,),
        on_reject: Callable[[str], None] | None = None,
    ) -> None:
        self._tokens = tuple(t.encode() for t in tokens)
        if not self._tokens:
            raise ValueError("BearerTokenInterceptor needs at least one token")
        self._exempt = tuple(exempt_prefixes)
        self._on_reject = on_reject
        self._missing = _unauthenticated("missing bearer token: send metadata 'authorization: Bearer <token>'")
        self._wrong = _unauthenticated("invalid bearer token")

    def _accepted(self, presented: bytes) -> bool:
        ok = False
        for tok in self._tokens:  # no early exit: time does not depend on which token matched
            ok |= hmac.compare_digest(presented, tok)
        return ok

    def intercept_service(self, continuation, handler_call_details):  # type: ignore[override]
        method = handler_call_details.method or ""
        if self._exempt and method.startswith(self._exempt):
            return continuation(handler_call_details)
        value = None
        for key, val in handler_call_details.invocation_metadata or ():
            if key == AUTH_METADATA_KEY:
                value = val
                break
        if value is None:
            if self._on_reject:
                self._on_reject(method)
            return self._missing
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        scheme, _, presented = value.partition(" ")
        if scheme.lower() != "bearer" or not self._accepted(presented.strip().encode()):
            if self._on_reject:
                self._on_reject(method)
            return self._wrong
        return continuation(handler_call_details)
