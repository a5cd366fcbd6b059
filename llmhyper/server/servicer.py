"""The Ranker gRPC servicer: per-version serving state, request handlers, and errors to status codes.

Serving model
-------------
* A sync ``grpc.server`` with a small thread pool (the handlers are microseconds of
  Numba work; the sync server beats grpc.aio for this load).
* Every weight version the server uses is wrapped once in a :class:`ServingState`
  that precomputes what requests need (ad id tuple, id -> row dict, feature name ->
  column dict, the feature-map default vector, protobuf schema messages, manifest
  JSON). A request reads the current state reference ONCE and uses it for
  everything, so no response mixes versions.
* Hot swap: a background thread polls ``store.current_version()`` every
  ``poll_interval_s`` (default 100 ms) and replaces the state reference when it
  changes. Requests pinned to a version get that version's state from a small cache.
  Requests by user id read the user rows together with the store's current version (one
  read transaction) and swap at once when that shows a newer publish, so a user row and
  the weights published with it are always served together. The common case skips that
  read: the poller keeps a snapshot of the user table (one LMDB read transaction, taken with
  the live version current), used while LMDB's last transaction id shows no commit since.
* Unary Rank: the common answer is written as wire bytes by the version's encoder
  (``encode.py``), inline dense features are read zero-copy from the request's bytes
  (``wire.py``), by-id rows come from the snapshot's row cache (``UsersView.row``).
* Health (grpc.health.v1): NOT_SERVING until the store is open, a version is loaded
  and ``scoring.warmup()`` compiled the kernels; SERVING after; NOT_SERVING first on
  shutdown, then ``server.stop(grace)`` lets in-flight calls finish.
* Errors: handlers raise :class:`~llmhyper.server.errors.RequestError`; the guard
  (``guard.py``) turns it into the status code with its message (``errors.status_of``, the
  one place exceptions become codes). Any unexpected exception is logged and answered
  INTERNAL; a handler never answers UNKNOWN and never takes the server down.

Modules: ``state.py`` (:class:`ServingState`), ``byid.py`` (the by-id user reads, a base of
the servicer), ``inputs.py`` (inline features, allow/deny masks), ``explain.py`` (the Explain
answer), ``errors.py``, ``guard.py`` (wrapping and registering the handlers:
``add_ranker_to_server``); this one holds the servicer itself.

The server never imports ``offline``, torch, faiss or LLM clients.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2

import scoring
from llmhyper._proto import ranker_pb2 as pb
from llmhyper._proto import ranker_pb2_grpc as pb_grpc
from llmhyper.server.byid import UserReads
from llmhyper.server.config import ServerConfig
from llmhyper.server.inputs import allow_mask, check_finite_vector, inline_rows, inline_vector
from llmhyper.server.explain import explain_response
from llmhyper.server.encode import rank_message
from llmhyper.server.errors import _SC, RequestError, _invalid, _not_found, _preview, _short
from llmhyper.server.metrics import ServerMetrics
from llmhyper.server.state import ServingState
from llmhyper.server.wire import packed_features, take_wire
from llmhyper.store.users import UsersView
from llmhyper.store.weight_store import VersionNotFound, WeightStore

log = logging.getLogger("llmhyper.server")

SERVICE_NAME = "llmhyper.v1.Ranker"
_LE_F32 = np.dtype("<f4")
_LE_I32 = np.dtype("<i4")
_PONG = pb.PingResponse()


class RankerServicer(UserReads, pb_grpc.RankerServicer):
    """gRPC handlers for ``llmhyper.v1.Ranker`` on top of a :class:`WeightStore`.

    Counters for tests and monitoring (read with :meth:`counters`): ``requests`` (all
    RPCs of this service), ``kernel_calls`` (scoring kernel invocations),
    ``errors`` (status code name -> count), ``swaps`` (hot swaps applied),
    ``deadline_skips`` (requests whose deadline had passed before the kernel).
    """

    def __init__(self, store: WeightStore, config: ServerConfig, health_servicer: health.HealthServicer | None = None,
                 metrics: ServerMetrics | None = None) -> None:
        self._store = store
        self.metrics = metrics if metrics is not None else ServerMetrics()
        self._config = config
        self._health = health_servicer
        self._state: ServingState | None = None
        self._ready = False
        self._pinned: "collections.OrderedDict[str, ServingState]" = collections.OrderedDict()
        self._pinned_lock = threading.Lock()
        self._n_users = 0
        self._lock = threading.Lock()
        self._requests = 0
        self._kernel_calls = 0
        self._swaps = 0
        self._deadline_skips = 0
        self._errors: collections.Counter[str] = collections.Counter()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._poller_lock = threading.Lock()
        self._sync_lock = threading.Lock()  # one _poll_once at a time (poller or a request)
        self._failed_load: tuple[str, float] | None = None  # (version, monotonic time) of a failed by-id sync
        self._users: UsersView | None = None  # of the live version (rows of its own publish)
        self._delay = float(config.debug_handler_delay_s)
        self._max_k = int(config.max_top_k)

    # ------------------------------------------------------------------ lifecycle
    def load_and_warmup(self) -> None:
        """Compile the kernels, load the current version and report SERVING when one exists."""
        scoring.warmup()
        self._poll_once()

    def start_polling(self) -> None:
        """Start the hot-swap thread (idempotent; a no-op after close())."""
        with self._poller_lock:
            if self._poller is None and not self._stop.is_set():
                poller = threading.Thread(target=self._poll_loop, name="llmhyper-hotswap", daemon=True)
                poller.start()
                self._poller = poller  # published only once started, so close() may always join it

    def close(self) -> None:
        """Stop the hot-swap thread and release the user-table snapshot."""
        with self._poller_lock:
            self._stop.set()
            poller = self._poller
        if poller is not None and poller is not threading.current_thread():
            poller.join(timeout=2.0)
        users, self._users = self._users, None
        if users is not None:
            users.close()

    @property
    def ready(self) -> bool:
        """True once the kernels are compiled and a version is loaded."""
        return self._ready

    @property
    def current_version(self) -> str | None:
        st = self._state
        return st.version if st is not None else None

    def counters(self) -> dict[str, Any]:
        """Snapshot of the counters: requests, kernel_calls, swaps, deadline_skips, errors{code: n}."""
        with self._lock:
            return {
                "requests": self._requests,
                "kernel_calls": self._kernel_calls,
                "swaps": self._swaps,
                "deadline_skips": self._deadline_skips,
                "errors": dict(self._errors),
            }

    @property
    def kernel_calls(self) -> int:
        return self._kernel_calls

    @property
    def requests(self) -> int:
        return self._requests

    @property
    def errors(self) -> dict[str, int]:
        with self._lock:
            return dict(self._errors)

    def _set_health(self, status: int) -> None:
        if self._health is not None:
            self._health.set("", status)
            self._health.set(SERVICE_NAME, status)

    def published_at(self) -> float | None:
        """Unix time the served version was published (None before one is loaded)."""
        st = self._state
        return st.created_at if st is not None else None

    def _poll_once(self) -> None:
        current, _, n_users = self._store.schema_snapshot()
        self._n_users = n_users
        st = self._state
        if current is None:
            return
        if st is None or st.version != current:
            t0 = time.perf_counter()
            new = ServingState(self._store.view(current))
            self._state = new  # single reference assignment: requests see old or new, never a mix
            man = new.view.manifest if isinstance(new.view.manifest, dict) else {}
            self.metrics.set_version(new.version, str(man.get("generator", "")), new.M, new.F, new.created_at,
                                     time.perf_counter() - t0 if st is not None else None)
            if st is not None and st.version != new.version:
                with self._lock:
                    self._swaps += 1
                log.info("hot swap: now serving %s (was %s)", new.version, st.version)
            elif st is None:
                log.info("serving version %s (%d ads x %d features)", new.version, new.M, new.F)
        self._refresh_users()
        self._drop_gone_pins()
        if not self._ready and self._state is not None:
            self._ready = True
            self._set_health(health_pb2.HealthCheckResponse.SERVING)

    def _drop_gone_pins(self) -> None:
        """Forget pinned-version states whose version was pruned, so pins to it get NOT_FOUND."""
        with self._pinned_lock:
            pinned = list(self._pinned)
        gone = [v for v in pinned if not self._store.has_version(v)]
        if gone:
            with self._pinned_lock:
                for v in gone:
                    self._pinned.pop(v, None)
            log.info("dropped pinned version(s) no longer in the store: %s", ", ".join(gone))

    def _poll_loop(self) -> None:
        interval = self._config.poll_interval_s
        while not self._stop.wait(interval):
            try:
                with self._sync_lock:
                    self._poll_once()
            except Exception:  # keep serving the old version; try again next tick
                log.exception("hot-swap poll failed; still serving %s", self.current_version)

    # ------------------------------------------------------------------ helpers
    def _state_for(self, version: str) -> ServingState:
        st = self._state
        if st is None:
            raise RequestError(_SC.UNAVAILABLE, "no weight version is loaded yet (store empty or server warming up)")
        if not version or version == st.version:
            return st
        with self._pinned_lock:
            pinned = self._pinned.get(version)
            if pinned is not None:
                self._pinned.move_to_end(version)
                return pinned
        try:
            view = self._store.view(version)
        except VersionNotFound:
            raise _not_found(f"unknown version {_short(version)}; the store holds: "
                             f"{_preview([v['version'] for v in self._store.list_versions()][::-1], 8)}") from None
        pinned = ServingState(view)
        with self._pinned_lock:
            self._pinned[version] = pinned
            while len(self._pinned) > self._config.pinned_versions_cached:
                self._pinned.popitem(last=False)
        return pinned

    @staticmethod
    def _is_live(requested: str) -> bool:
        """True when the request follows the live version (it names none); a named version is
        pinned and stays on it even if a newer one is published meanwhile."""
        return not requested

    def _user_vector(self, st: ServingState, live: bool, request: Any, check_finite: bool = True,
                     wire: bytes | None = None) -> tuple[ServingState, np.ndarray]:
        """(state, the feature vector float32 [F] of a Rank or Explain ``request``), validated:
        exactly one input, length, names, and (with ``check_finite``) finite values. ``wire``:
        the request's bytes (``wire.take_wire``), to read dense features from without
        converting them. The state differs from ``st`` only when a by-id read caught a newer
        publish (see :meth:`_users_by_id`)."""
        user_id = request.user_id
        dense = request.features
        fmap = request.feature_map
        n_dense = len(dense)
        given = (1 if user_id else 0) + (1 if n_dense else 0) + (1 if len(fmap) else 0)
        if given != 1:
            if given == 0:
                raise _invalid("no user given: set exactly one of user_id, features (dense) or feature_map")
            raise _invalid("set exactly one of user_id, features (dense) or feature_map, not several")
        if user_id:
            return self._user_row(st, live, user_id)
        packed = packed_features(wire, n_dense) if wire is not None and n_dense == st.F else None
        return st, inline_vector(st, dense, fmap, packed, check_finite)

    def _check_k(self, k: int) -> int:
        if k < 1 or k > self._max_k:
            raise _invalid(f"top_k must be in [1, {self._max_k}], got {k}")
        return k

    def _before_kernel(self, context: grpc.ServicerContext) -> None:
        if self._delay:
            time.sleep(self._delay)  # test hook only (debug_handler_delay_s)
        if context.time_remaining() <= 0 or not context.is_active():
            with self._lock:
                self._deadline_skips += 1
            raise RequestError(_SC.DEADLINE_EXCEEDED, "deadline passed before scoring started; the kernel was not run")

    def _count_kernel(self) -> None:
        with self._lock:
            self._kernel_calls += 1

    # ------------------------------------------------------------------ RPCs
    def Rank(self, request: pb.RankRequest, context: grpc.ServicerContext) -> pb.RankResponse | bytes:
        """Top-k ads for one user. The common answer (no contributions, not exploring) comes
        back as the serialized bytes from the version's encoder (``encode.py``), else as a
        message; the registered response serializer takes both."""
        wire = take_wire(request)  # first, so the kept bytes never outlive the call
        version = request.version
        st = self._state_for(version)
        st, x = self._user_vector(st, not version, request, check_finite=False, wire=wire)  # the kernel checks
        k = self._check_k(request.top_k)
        allow, deny = request.allow_ad_ids, request.deny_ad_ids
        mask = allow_mask(st, allow, deny) if allow or deny else None
        rules, applied = st.rules_for(request)
        explore, seed = st.exploration(request, self._config.explore_default)
        if mask is not None and not mask.any():
            check_finite_vector(st, x)
            # every ad filtered out: nothing to rank
            return pb.RankResponse(version=st.version, content_rules_applied=applied, explored=explore, seed=seed)
        self._before_kernel(context)
        try:
            if explore:  # ranked by the sample; the returned logit/ctr are the mean ones
                assert st.sigma is not None  # exploration() refuses a version without sigma
                idx, logit, prob, _ = scoring.topk_one_thompson(st.theta, st.sigma, x, k, seed, mask, rules,
                                                                st.sigma_bound)
                rows: list[list[float]] = [list(r) for r in zip(idx.tolist(), logit.tolist(), prob.tolist())]
            else:
                rows = scoring.topk_one_rows(st.theta, x, k, mask, rules).tolist()
        except ValueError:  # the kernels refuse non-finite input: name the request's value
            check_finite_vector(st, x)
            raise
        self._count_kernel()
        with_contributions = request.with_contributions
        if not (explore or with_contributions):
            encoded = st.encoder.encode(rows, applied)
            if encoded is not None:
                return encoded
        return rank_message(st, rows, x if with_contributions else None, applied, explore, seed)

    def RankBatch(self, request: pb.RankBatchRequest, context: grpc.ServicerContext) -> pb.RankBatchResponse:
        st = self._state_for(request.version)
        user_ids = request.user_ids
        raw = request.features
        k = self._check_k(request.top_k)
        if not raw and not user_ids:
            raise _invalid("no users given: set features (packed float32 [B, F]) and/or user_ids")
        if len(user_ids) > self._config.max_batch_users:
            raise _invalid(f"batch has {len(user_ids)} user ids, more than the limit of {self._config.max_batch_users}")
        if request.num_features and request.num_features != st.F and not user_ids:
            raise _invalid(f"num_features is {request.num_features} but version {st.version} has F={st.F} features")
        U = None
        if user_ids:
            st, U = self._users_by_id(st, self._is_live(request.version), user_ids)
        F = st.F
        if request.num_features and request.num_features != F:
            raise _invalid(f"num_features is {request.num_features} but version {st.version} has F={F} features")
        if len(raw) % (4 * F):
            raise _invalid(f"features has {len(raw)} bytes, not a multiple of 4*F = {4 * F} "
                           f"(float32 little-endian rows of F={F} for version {st.version})")
        n_inline = len(raw) // (4 * F)
        B = n_inline + len(user_ids)
        if B == 0:
            raise _invalid("no users given: set features (packed float32 [B, F]) and/or user_ids")
        if B > self._config.max_batch_users:
            raise _invalid(f"batch has {B} users, more than the limit of {self._config.max_batch_users}")
        X_inline = inline_rows(st, raw, n_inline)
        if U is not None:
            X = U if X_inline is None else np.concatenate([X_inline, U])
        else:
            assert X_inline is not None  # B > 0 without user ids: the inline rows are there
            X = X_inline
        mask = allow_mask(st, request.allow_ad_ids, request.deny_ad_ids)
        rules, applied = st.rules_for(request)
        explore, seed = st.exploration(request, self._config.explore_default)
        resp = pb.RankBatchResponse(version=st.version, num_users=B, content_rules_applied=applied,
                                    explored=explore, seed=seed)
        if not request.skip_ad_ids:
            resp.ad_ids.extend(st.ad_ids)
        if mask is not None and not mask.any():
            return resp  # k = 0, empty arrays
        self._before_kernel(context)
        if explore:
            assert st.sigma is not None  # exploration() refuses a version without sigma
            idx, logit, prob, _ = scoring.topk_batch_thompson(st.theta, st.sigma, X, k, seed, mask, rules,
                                                              st.sigma_bound)
        else:
            idx, logit, prob = scoring.topk_batch(st.theta, X, k, mask, rules)
        self._count_kernel()
        resp.k = int(idx.shape[1])
        resp.ad_indices = idx.astype(_LE_I32).tobytes()
        resp.ctr = prob.astype(_LE_F32, copy=False).tobytes()
        resp.logit = logit.astype(_LE_F32, copy=False).tobytes()
        return resp

    def Explain(self, request: pb.ExplainRequest, context: grpc.ServicerContext) -> pb.ExplainResponse:
        st = self._state_for(request.version)
        if not request.ad_id:
            raise _invalid("ad_id is required")
        if request.ad_id not in st.ad_index:
            raise _not_found(f"unknown ad_id {_short(request.ad_id)} in version {st.version} ({st.M} ads)")
        st, x = self._user_vector(st, self._is_live(request.version), request)
        i = st.ad_index.get(request.ad_id)
        if i is None:  # the publish this request caught dropped the ad
            raise _not_found(f"unknown ad_id {_short(request.ad_id)} in version {st.version} ({st.M} ads)")
        self._before_kernel(context)
        theta_row = st.theta[i]
        contrib = scoring.contributions(theta_row, x)
        logit = scoring.score_all(st.theta[i:i + 1], x)
        ctr = scoring.sigmoid(logit)
        self._count_kernel()
        record = self._store.ad_record(st.version, request.ad_id)
        return explain_response(st, request.ad_id, i, x, contrib, logit, ctr, record)

    def GetModelInfo(self, request: pb.GetModelInfoRequest, context: grpc.ServicerContext) -> pb.ModelInfo:
        st = self._state_for(request.version)
        info = pb.ModelInfo(version=st.version, n_ads=st.M, manifest_json=st.manifest_json,
                            created_at=st.created_at, n_users=self._n_users)
        info.ad_ids.extend(st.ad_ids)
        info.features.extend(st.pb_features)
        for v in self._store.list_versions():
            info.versions.add(version=str(v.get("version", "")), created_at=float(v.get("created_at") or 0.0),
                              n_ads=int(v.get("n_ads") or 0), n_features=int(v.get("n_features") or 0),
                              generator=str(v.get("generator") or ""), current=bool(v.get("current")))
        return info

    def Ping(self, request: pb.PingRequest, context: grpc.ServicerContext) -> pb.PingResponse:
        return _PONG
