"""Server lifecycle: ``create_server`` (build, bind, start; returns ``(server, port)``) and the blocking ``serve``.

See :mod:`llmhyper.server.servicer` for the serving model (states, hot swap, errors).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from concurrent import futures
from typing import Any, Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

import scoring
from llmhyper._proto import ranker_pb2 as pb
from llmhyper.auth import BearerTokenInterceptor, server_credentials
from llmhyper.server.config import ServerConfig
from llmhyper.server import metrics as _metrics
from llmhyper.server.guard import add_ranker_to_server
from llmhyper.server.servicer import RankerServicer
from llmhyper.store.weight_store import WeightStore

log = logging.getLogger("llmhyper.server")


class RankerServer(grpc.Server):
    """A started grpc.Server plus the Ranker parts tests and operators need.

    Attributes:
        port: the bound port. servicer: the :class:`RankerServicer` (counters, state).
        health: the grpc.health.v1 servicer. config: the :class:`ServerConfig`.

    ``stop(grace)`` reports NOT_SERVING first, stops the hot-swap thread, then stops the
    grpc server letting in-flight calls finish within ``grace`` seconds; a store the
    server opened itself is closed once the server has terminated.
    """

    def __init__(self, server: grpc.Server, servicer: RankerServicer, health_servicer: health.HealthServicer,
                 config: ServerConfig, port: int, owned_store: WeightStore | None) -> None:
        self._server = server
        self.servicer = servicer
        self.health = health_servicer
        self.config = config
        self.port = port
        self._owned_store = owned_store
        self._stopped: threading.Event | None = None
        self._close_lock = threading.Lock()
        self.metrics_port: int | None = None  # bound /metrics port when config.metrics_port is set
        self._metrics_http: Any = None

    def _close_owned_store(self) -> None:
        with self._close_lock:
            store, self._owned_store = self._owned_store, None
        if store is not None:
            store.close()

    def add_generic_rpc_handlers(self, generic_rpc_handlers):  # type: ignore[override]
        return self._server.add_generic_rpc_handlers(generic_rpc_handlers)

    def add_registered_method_handlers(self, service_name, method_handlers):  # type: ignore[override]
        return self._server.add_registered_method_handlers(service_name, method_handlers)

    def add_insecure_port(self, address: str) -> int:
        return self._server.add_insecure_port(address)

    def add_secure_port(self, address: str, server_credentials: grpc.ServerCredentials) -> int:
        return self._server.add_secure_port(address, server_credentials)

    def start(self) -> None:
        self._server.start()

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self._server.wait_for_termination(timeout)

    def stop(self, grace: float | None = None) -> threading.Event:
        """Graceful stop: health NOT_SERVING, ``drain_s`` pause, then grpc stop with ``grace`` s."""
        if self._stopped is not None:
            return self._stopped
        self.health.enter_graceful_shutdown()  # every service NOT_SERVING, later sets ignored
        self.servicer.close()
        self.servicer.metrics.close()
        if self.config.drain_s:
            time.sleep(self.config.drain_s)  # still serving, but health already says NOT_SERVING
        event = self._server.stop(grace)
        self._stopped = event
        if self._metrics_http is not None:
            http, self._metrics_http = self._metrics_http, None
            threading.Thread(target=lambda: (event.wait(), http.shutdown(), http.server_close()),
                             name="llmhyper-metrics-close", daemon=True).start()
        if self._owned_store is not None:

            def close_when_done() -> None:
                event.wait()
                self._close_owned_store()

            threading.Thread(target=close_when_done, name="llmhyper-store-close", daemon=True).start()
        return event


def create_server(address: str, store: WeightStore | str, **options: Any) -> tuple[RankerServer, int]:
    """Build, bind and START a Ranker server.

    Args:
        address: "host:port" to bind; port 0 picks a free port.
        store: an open :class:`WeightStore`, or a path opened read-only (and closed when
            the server stops).
        **options: :class:`ServerConfig` fields (workers, max_concurrent_rpcs,
            max_receive_message_bytes, max_send_message_bytes, max_top_k, poll_interval_s,
            reflection, tls_cert, tls_key, tls_client_ca, tokens, auth_health, grace_s,
            background_warmup, debug_handler_delay_s, ...). Unknown names raise TypeError.

    Returns:
        (server, port). Unless ``background_warmup=True`` the kernels are compiled and
        the current version loaded before this returns (health SERVING if the store
        holds a version; otherwise it turns SERVING when the first version appears).
    """
    config = ServerConfig.from_options(**options)
    owned = None
    if isinstance(store, (str, bytes)) or hasattr(store, "__fspath__"):
        store = owned = WeightStore(store, readonly=True)
    health_servicer = health.HealthServicer(experimental_non_blocking=True,
                                            experimental_thread_pool=futures.ThreadPoolExecutor(max_workers=1))
    _metrics.install_shed_hook()
    servicer = RankerServicer(store, config, health_servicer)
    servicer._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
    interceptors = []
    if config.tokens:
        def rejected(method: str) -> None:
            with servicer._lock:
                servicer._errors["UNAUTHENTICATED"] += 1

        exempt = () if config.auth_health else ("/grpc.health.v1.Health/",)
        interceptors.append(BearerTokenInterceptor(config.tokens, exempt_prefixes=exempt, on_reject=rejected))
    grpc_options = [
        ("grpc.max_receive_message_length", int(config.max_receive_message_bytes)),
        ("grpc.max_send_message_length", int(config.max_send_message_bytes)),
        ("grpc.so_reuseport", 1 if config.reuse_port else 0),
    ]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="llmhyper-rpc"),
        interceptors=interceptors or None,
        options=grpc_options,
        maximum_concurrent_rpcs=config.max_concurrent_rpcs,
    )
    add_ranker_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if config.reflection:
        from grpc_reflection.v1alpha import reflection

        reflection.enable_server_reflection(
            (pb.DESCRIPTOR.services_by_name["Ranker"].full_name, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    try:
        if config.tls_cert is not None:
            assert config.tls_key is not None  # ServerConfig requires tls_cert and tls_key together
            port = server.add_secure_port(address, server_credentials(config.tls_cert, config.tls_key, config.tls_client_ca))
        else:
            port = server.add_insecure_port(address)
    except RuntimeError as e:
        if owned is not None:
            owned.close()
        raise OSError(f"cannot bind {address}: {e}") from None
    if not port:
        if owned is not None:
            owned.close()
        raise OSError(f"cannot bind {address}")
    wrapped = RankerServer(server, servicer, health_servicer, config, port, owned)
    if config.metrics_port is not None:
        registry = servicer.metrics.registry
        registry.register(_metrics.StoreCollector(lambda: _metrics.store_stats(store), servicer.published_at))
        try:
            http = _metrics.start_metrics_http(config.metrics_port, config.metrics_host, registry)
        except OSError as e:
            if owned is not None:
                owned.close()
            raise OSError(f"cannot bind the metrics port {config.metrics_host}:{config.metrics_port}: {e}") from None
        wrapped._metrics_http = http
        wrapped.metrics_port = int(http.server_port)
    server.start()

    def warm() -> None:
        try:
            servicer.load_and_warmup()
        except Exception:
            log.exception("warm-up failed; health stays NOT_SERVING, retrying on the next poll")
        servicer.start_polling()

    if config.background_warmup:
        threading.Thread(target=warm, name="llmhyper-warmup", daemon=True).start()
    else:
        try:
            servicer.load_and_warmup()
        except Exception:
            wrapped.stop(0)
            raise
        servicer.start_polling()
    return wrapped, port


def serve(address: str, store: WeightStore | str, *, on_started: Callable[[RankerServer, int], None] | None = None,
          exit_hard_after_grace: bool = False, **options: Any) -> int:
    """Run a Ranker server until SIGTERM/SIGINT, then shut down gracefully. Blocks.

    Pins scoring to one thread, starts the server with background warm-up (so health
    answers NOT_SERVING while the kernels compile), calls ``on_started(server, port)``,
    and on a signal: health NOT_SERVING, ``server.stop(grace_s)`` so in-flight calls
    finish, store closed. Returns 0.

    grpc cuts calls still running when the grace period ends, but its stop only completes
    when their handler threads return. With ``exit_hard_after_grace`` (what ``llmhyper
    serve`` uses) a handler still stuck 0.5 s after drain + grace no longer holds the process:
    once the store is closed the process exits with status 0 at once, without running
    interpreter exit hooks (which would join stuck handler threads). Library callers keep the
    default and simply wait.
    """
    scoring.set_threads(1)
    options.setdefault("background_warmup", True)
    server, port = create_server(address, store, **options)
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        received.append(signum)
        stop.set()

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        if on_started is not None:
            on_started(server, port)
        while not stop.wait(0.5):
            pass
        log.info("signal %s: NOT_SERVING, stopping with %.1fs grace", received[0] if received else "?", server.config.grace_s)
        stopped = server.stop(server.config.grace_s)
        limit = server.config.grace_s + 0.5  # stop() above already spent drain_s before returning
        if not stopped.wait(limit if exit_hard_after_grace else None):
            log.warning("handlers still running %.1fs after the stop began; exiting without waiting for them", limit)
        server._close_owned_store()
        if exit_hard_after_grace:
            # Interpreter exit would join every handler thread, including one stuck past the
            # grace period (its call is already cut); the server is done, so leave now.
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
