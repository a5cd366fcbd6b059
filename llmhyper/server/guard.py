"""The guard around every Ranker handler (counting, readiness, exceptions to status codes) and
the registration of the guarded handlers on a grpc server."""

from __future__ import annotations

import functools
import time
from typing import Any, Callable

import grpc

from llmhyper._proto import ranker_pb2 as pb
from llmhyper._proto import ranker_pb2_grpc as pb_grpc
from llmhyper.server.encode import serialize_rank_response
from llmhyper.server.errors import (
    _SC,
    RequestError,
    _BadBytes,
    _invalid,
    _log_bad_bytes,
    _safe_deserializer,
    cap_details,
    status_of,
)
from llmhyper.server.servicer import SERVICE_NAME, RankerServicer
from llmhyper.server.wire import keeping_wire


def _guard(servicer: RankerServicer, name: str, fn: Callable) -> Callable:
    """Wrap a handler: count it (counters and Prometheus metrics), map refusals to their status,
    and never let an exception escape."""
    metrics = servicer.metrics
    codes, latency = metrics.for_method(name)
    in_flight = metrics.in_flight
    count = metrics.count
    observe = latency.observe
    clock = time.perf_counter

    @functools.wraps(fn)
    def handler(request: Any, context: grpc.ServicerContext) -> Any:
        t0 = clock()
        lock = servicer._lock
        with lock:
            servicer._requests += 1
        in_flight.inc()
        try:
            try:
                if request.__class__ is _BadBytes:
                    _log_bad_bytes(name, request.error)
                    raise _invalid(f"request bytes are not a valid {name} request message ({request.error})")
                if not servicer._ready and name != "Ping":
                    raise RequestError(_SC.UNAVAILABLE, "server is starting: kernels warming up or no version published yet")
                resp = fn(request, context)
                count(name, codes, "OK")
                return resp
            except Exception as e:
                code, msg = status_of(name, e)
            with lock:
                servicer._errors[code.name] += 1
            count(name, codes, code.name)
        finally:
            in_flight.dec()
            observe(clock() - t0)
        context.abort(code, cap_details(msg))

    return handler


_METHODS = (("Rank", pb.RankRequest, pb.RankResponse), ("RankBatch", pb.RankBatchRequest, pb.RankBatchResponse),
            ("Explain", pb.ExplainRequest, pb.ExplainResponse), ("GetModelInfo", pb.GetModelInfoRequest, pb.ModelInfo),
            ("Ping", pb.PingRequest, pb.PingResponse))


class _GuardedServicer(pb_grpc.RankerServicer):
    """The servicer's RPC methods, each wrapped by :func:`_guard`."""

    def __init__(self, inner: RankerServicer) -> None:
        for name, _, _ in _METHODS:
            setattr(self, name, _guard(inner, name, getattr(inner, name)))


def add_ranker_to_server(inner: RankerServicer, server: grpc.Server) -> None:
    """Register the guarded Ranker methods on ``server`` like the generated
    ``add_RankerServicer_to_server``, but with request deserializers that turn unparseable bytes
    into INVALID_ARGUMENT answered by the guard, and a Rank response serializer that also takes
    the pre-serialized bytes of ``encode.RankEncoder``."""
    guarded = _GuardedServicer(inner)
    deserializers = {name: _safe_deserializer(req) for name, req, _ in _METHODS}
    deserializers["Rank"] = keeping_wire(deserializers["Rank"])  # inline features read zero-copy (wire.py)
    serializers = {name: resp.SerializeToString for name, _, resp in _METHODS}
    serializers["Rank"] = serialize_rank_response
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(getattr(guarded, name), request_deserializer=deserializers[name],
                                                  response_serializer=serializers[name])
        for name, _, _ in _METHODS
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
