"""Prometheus metrics of the Ranker server (``llmhyper serve --metrics-port``).

Per call (fed by ``guard._guard``): ``llmhyper_requests_total{method,code}``,
``llmhyper_request_duration_seconds{method}`` (buckets 50 us .. 1 s), ``llmhyper_in_flight_requests``.
Calls grpc itself sheds over ``--max-concurrent`` never reach a handler; they are counted in
``llmhyper_shed_total`` by a hook on grpc's rejection path.
Per version: ``llmhyper_served_version_info{version,generator,n_ads,n_features}`` (1 for the
version served, 0 for earlier ones), ``llmhyper_served_version_published_timestamp_seconds``,
``llmhyper_hot_swaps_total``, ``llmhyper_last_swap_duration_seconds``.
At scrape time (:class:`StoreCollector`): ``llmhyper_served_version_age_seconds``,
``llmhyper_store_map_size_bytes``, ``llmhyper_store_used_bytes``, ``llmhyper_user_table_users``.

With several processes (``--processes N``) every child writes its values to files in
``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's multiprocess mode) and the parent serves the
aggregate: counters and histograms summed, in-flight summed over live processes, the gauges of
the served version the maximum over live processes.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

log = logging.getLogger("llmhyper.server")

# 50 us .. 1 s, about 3 buckets per decade (the unary Rank round trip is ~0.1-1 ms).
LATENCY_BUCKETS = (5e-5, 1e-4, 2e-4, 3e-4, 5e-4, 7.5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0)


def multiprocess() -> bool:
    """True when prometheus-client writes values to ``PROMETHEUS_MULTIPROC_DIR`` files."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir"))


class ServerMetrics:
    """The metric objects of one server process, registered in their own registry.

    ``call(method)`` returns the (counter-by-code getter, histogram child) pair a handler
    feeds; children are cached so a call costs two dict lookups, one inc and one observe.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("llmhyper_requests", "Ranker RPCs answered, by method and status code",
                                ("method", "code"), registry=r)
        self.latency = Histogram("llmhyper_request_duration_seconds", "Ranker RPC handling time in seconds",
                                 ("method",), buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("llmhyper_in_flight_requests", "Ranker RPCs being handled now",
                               registry=r, multiprocess_mode="livesum")
        self.shed = Counter("llmhyper_shed", "calls refused RESOURCE_EXHAUSTED by the concurrency limit "
                            "(before any handler ran)", registry=r)
        self.version_info = Gauge("llmhyper_served_version_info", "1 for the weight version served now",
                                  ("version", "generator", "n_ads", "n_features"), registry=r,
                                  multiprocess_mode="livemax")
        self.published = Gauge("llmhyper_served_version_published_timestamp_seconds",
                               "unix time the served version was published", registry=r,
                               multiprocess_mode="livemax")
        self.swaps = Counter("llmhyper_hot_swaps", "hot swaps to a newer or rolled-back version", registry=r)
        self.swap_seconds = Gauge("llmhyper_last_swap_duration_seconds",
                                  "seconds the last hot swap took to load and prepare the new version",
                                  registry=r, multiprocess_mode="livemax")
        self._by_method: dict[str, tuple[dict[str, Any], Any]] = {}
        self._lock = threading.Lock()
        self._version_labels: tuple[str, str, str, str] | None = None
        _SHED_SINKS.append(self.shed)

    def for_method(self, method: str) -> tuple[dict[str, Any], Any]:
        """(code name -> counter child cache, histogram child) of ``method``."""
        got = self._by_method.get(method)
        if got is None:
            with self._lock:
                got = self._by_method.setdefault(method, ({}, self.latency.labels(method)))
        return got

    def count(self, method: str, codes: dict[str, Any], code: str) -> None:
        """Count one answered call of ``method`` with status ``code`` (cached child)."""
        child = codes.get(code)
        if child is None:
            child = codes[code] = self.requests.labels(method, code)
        child.inc()

    def set_version(self, version: str, generator: str, n_ads: int, n_features: int, published_at: float,
                    swap_seconds: float | None) -> None:
        """Record the version now served (``swap_seconds`` None for the first load)."""
        labels = (version, generator, str(n_ads), str(n_features))
        with self._lock:
            old, self._version_labels = self._version_labels, labels
        if old is not None and old != labels:
            self.version_info.labels(*old).set(0)
        self.version_info.labels(*labels).set(1)
        self.published.set(published_at)
        if swap_seconds is not None:
            self.swaps.inc()
            self.swap_seconds.set(swap_seconds)

    def close(self) -> None:
        """Stop feeding this object from grpc's shed hook."""
        try:
            _SHED_SINKS.remove(self.shed)
        except ValueError:
            pass


class StoreCollector:
    """Scrape-time gauges read from the store: map size, bytes used, users, served version age."""

    def __init__(self, stats: Callable[[], dict], published_at: Callable[[], float | None]) -> None:
        self._stats = stats
        self._published_at = published_at

    def collect(self) -> Iterable[GaugeMetricFamily]:
        try:
            s = self._stats()
        except Exception as e:  # a scrape must not fail because the store is busy remapping
            log.warning("metrics: store stats failed: %s", e)
            s = {}
        for key, name, doc in (("map_size", "llmhyper_store_map_size_bytes", "LMDB map size in bytes"),
                               ("used_bytes", "llmhyper_store_used_bytes", "LMDB bytes in use (pages to the last one)"),
                               ("n_users", "llmhyper_user_table_users", "users in the store's user table")):
            if key in s:
                yield GaugeMetricFamily(name, doc, value=float(s[key]))
        t = self._published_at()
        if t:
            yield GaugeMetricFamily("llmhyper_served_version_age_seconds",
                                    "seconds since the served version was published", value=max(0.0, time.time() - t))


def store_stats(store: Any) -> dict:
    """map_size, used_bytes and n_users of an open WeightStore."""
    s = store.stats()
    return {"map_size": s["map_size"], "used_bytes": s["used_bytes"], "n_users": store.n_users()}


def start_metrics_http(port: int, host: str, registry: CollectorRegistry) -> Any:
    """Serve ``registry`` at http://host:port/metrics in a daemon thread; returns the HTTP server."""
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server


# ---------------------------------------------------------------- shed hook
_SHED_SINKS: list[Any] = []
_HOOKED = False


def install_shed_hook() -> bool:
    """Count grpc's own RESOURCE_EXHAUSTED rejections (over maximum_concurrent_rpcs).

    grpc rejects such calls in its server loop before any handler or interceptor can see the
    outcome, so the only place to count them is its private ``_reject_rpc``; the wrapper adds
    one comparison to a rejection and nothing to an admitted call. Returns False (and the shed
    counter stays 0) when this grpc version has no such function."""
    global _HOOKED
    if _HOOKED:
        return True
    try:
        from grpc import _server as gs
        from grpc._cython import cygrpc

        original = gs._reject_rpc
        exhausted = cygrpc.StatusCode.resource_exhausted
    except (ImportError, AttributeError):
        log.warning("metrics: this grpc version has no _reject_rpc; llmhyper_shed_total stays 0")
        return False

    def counted(rpc_event: Any, rpc_state: Any, status: Any, details: bytes) -> Any:
        if status == exhausted:
            for sink in _SHED_SINKS:
                sink.inc()
        return original(rpc_event, rpc_state, status, details)

    gs._reject_rpc = counted
    _HOOKED = True
    return True
