"""Server options: one validated dataclass shared by ``create_server``, ``serve`` and the CLI."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ServerConfig:
    """Options of the Ranker gRPC server.

    Attributes:
        workers: threads of the sync server's ThreadPoolExecutor (handlers run there).
        max_concurrent_rpcs: RPCs admitted at once (in flight + queued); the excess is
            answered RESOURCE_EXHAUSTED by grpc itself. None: unlimited.
        max_receive_message_bytes: largest request accepted; bigger ones get RESOURCE_EXHAUSTED.
        max_send_message_bytes: largest response the server will send.
        max_top_k: largest top_k a request may ask for (requests must use 1..max_top_k).
        max_batch_users: largest number of rows in one RankBatch request.
        poll_interval_s: how often the hot-swap thread polls the store's current version (s).
        reflection: register the gRPC server-reflection service (off by default).
        tls_cert / tls_key: PEM server certificate chain and private key (paths); both or neither.
        tls_client_ca: PEM CA bundle (path); when set, clients must present a certificate
            signed by it (mutual TLS). Requires tls_cert/tls_key.
        tokens: accepted bearer tokens; empty: no token check. Health checks are exempt
            unless ``auth_health`` is True.
        auth_health: also require the token for grpc.health.v1 calls.
        grace_s: seconds in-flight calls get to finish on shutdown.
        drain_s: seconds between reporting NOT_SERVING and closing the port on shutdown,
            so load balancers watching health stop sending before new calls are refused.
        pinned_versions_cached: how many non-current versions (version pins) keep their
            precomputed serving state in memory.
        background_warmup: compile the kernels in a background thread after the port is
            open (health says NOT_SERVING meanwhile and ranking RPCs get UNAVAILABLE);
            False compiles them before ``create_server`` returns.
        explore_default: rank by a Thompson sample when a request leaves ``explore`` unset
            (needs versions published with posterior spread; others answer INVALID_ARGUMENT).
        metrics_port: serve Prometheus ``/metrics`` over HTTP on this port (0 picks a free one;
            None: no endpoint). metrics_host: its bind address.
        reuse_port: bind the gRPC port with SO_REUSEPORT (the pre-forked children of
            ``--processes N`` share one port).
        debug_handler_delay_s: TEST HOOK ONLY. Seconds every ranking handler sleeps before
            its deadline check and kernel call. 0 in production.
    """

    workers: int = 4
    max_concurrent_rpcs: int | None = None
    max_receive_message_bytes: int = 4 * 1024 * 1024
    max_send_message_bytes: int = 16 * 1024 * 1024
    max_top_k: int = 1000
    max_batch_users: int = 65536
    poll_interval_s: float = 0.1
    reflection: bool = False
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    tokens: tuple[str, ...] = field(default_factory=tuple)
    auth_health: bool = False
    grace_s: float = 5.0
    drain_s: float = 0.0
    pinned_versions_cached: int = 8
    background_warmup: bool = False
    explore_default: bool = False
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    reuse_port: bool = False
    debug_handler_delay_s: float = 0.0

    def __post_init__(self) -> None:
        def positive(name: str, value: float) -> None:
            if not value > 0:
                raise ValueError(f"server option {name} must be > 0, got {value!r}")

        positive("workers", self.workers)
        if self.max_concurrent_rpcs is not None:
            positive("max_concurrent_rpcs", self.max_concurrent_rpcs)
        positive("max_receive_message_bytes", self.max_receive_message_bytes)
        positive("max_send_message_bytes", self.max_send_message_bytes)
        positive("max_top_k", self.max_top_k)
        positive("max_batch_users", self.max_batch_users)
        positive("poll_interval_s", self.poll_interval_s)
        positive("pinned_versions_cached", self.pinned_versions_cached)
        if self.drain_s < 0:
            raise ValueError(f"server option drain_s must be >= 0, got {self.drain_s!r}")
        if self.grace_s < 0:
            raise ValueError(f"server option grace_s must be >= 0, got {self.grace_s!r}")
        if self.debug_handler_delay_s < 0:
            raise ValueError(f"server option debug_handler_delay_s must be >= 0, got {self.debug_handler_delay_s!r}")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"server option metrics_port must be in [0, 65535], got {self.metrics_port!r}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("server options tls_cert and tls_key must be given together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("server option tls_client_ca (mutual TLS) needs tls_cert and tls_key")
        if isinstance(self.tokens, str):
            object.__setattr__(self, "tokens", (self.tokens,))
        else:
            object.__setattr__(self, "tokens", tuple(self.tokens))
        for tok in self.tokens:
            if not tok or any(c.isspace() for c in tok):
                raise ValueError("server option tokens: a bearer token must be non-empty and contain no whitespace")

    @classmethod
    def from_options(cls, **options: object) -> "ServerConfig":
        """Build a config from keyword options; unknown names raise TypeError naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"unknown server option(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**options)  # type: ignore[arg-type]
