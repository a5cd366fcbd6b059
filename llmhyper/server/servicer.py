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
* Health (grpc.health.v1): NOT_SERVING until the store is open, a version is loaded
  and ``scoring.warmup()`` compiled the kernels; SERVING after; NOT_SERVING first on
  shutdown, then ``server.stop(grace)`` lets in-flight calls finish.
* Errors: handlers raise :class:`RequestError`; a wrapper turns it into the status code
  with its message. Any unexpected exception is logged and answered INTERNAL; a
  handler never answers UNKNOWN and never takes the server down.

The server never imports ``offline``, torch, faiss or LLM clients.
"""

from __future__ import annotations

import collections
import functools
import json
import logging
import secrets
import threading
import time
from typing import Any, Callable, Mapping, Sequence

import grpc
import numpy as np
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2

import scoring
from llmhyper._proto import ranker_pb2 as pb
from llmhyper._proto import ranker_pb2_grpc as pb_grpc
from llmhyper.server.config import ServerConfig
from llmhyper.server.metrics import ServerMetrics
from llmhyper.store.weight_store import StoreError, UserNotFound, VersionNotFound, WeightStore

log = logging.getLogger("llmhyper.server")

SERVICE_NAME = "llmhyper.v1.Ranker"
_F32 = np.dtype(np.float32)
_LE_F32 = np.dtype("<f4")
_LE_I32 = np.dtype("<i4")
_PONG = pb.PingResponse()
_SYNC_ATTEMPTS = 3  # by-id reads that may each catch a newer publish before giving up
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


class ServingState:
    """Everything a request needs about one weight version, computed once when it is loaded.

    Attributes:
        view: the store's immutable VersionView.
        version: version id.
        theta: float32 [M, F] weights (zero-copy view on the store).
        M, F: number of ads and features.
        ad_ids: tuple of M ad ids in row order; ad_index: ad id -> row.
        feature_names: tuple of F names; feature_index: name -> column.
        map_default: float32 [F] starting vector for name->value requests (bias 1, rest 0).
        rules: the version's content rules (scoring.rules.ContentRules), checked once here, or None.
        sigma: float32 [M, F] posterior spread for Thompson exploration, or None.
        sigma_bound: float64 [M] scoring.sigma_row_norms(sigma) (None without sigma).
    """

    __slots__ = (
        "view", "version", "theta", "M", "F", "ad_ids", "ad_index", "feature_names",
        "feature_index", "features", "map_default", "pb_features", "_users_checked",
        "manifest_json", "created_at", "rules", "sigma", "sigma_bound",
    )

    def __init__(self, view: Any) -> None:
        theta = view.theta
        if not (isinstance(theta, np.ndarray) and theta.dtype == _F32 and theta.ndim == 2 and theta.flags.c_contiguous):
            raise StoreError(f"version {view.version}: theta must be C-contiguous float32 [M, F]")
        self.view = view
        self.version: str = view.version
        self.theta: np.ndarray = theta
        self.M, self.F = (int(s) for s in theta.shape)
        self.ad_ids: tuple[str, ...] = tuple(view.ad_ids)
        self.ad_index: dict[str, int] = {a: i for i, a in enumerate(self.ad_ids)}
        self.features: tuple[tuple[str, str], ...] = tuple((str(n), str(d)) for n, d in view.features)
        self.feature_names: tuple[str, ...] = tuple(n for n, _ in self.features)
        self.feature_index: dict[str, int] = {n: j for j, n in enumerate(self.feature_names)}
        if len(self.feature_names) != self.F:
            raise StoreError(f"version {self.version}: {len(self.feature_names)} feature names for F={self.F} columns")
        md = np.zeros(self.F, dtype=np.float32)
        if "bias" in self.feature_index:
            md[self.feature_index["bias"]] = 1.0
        self.map_default = md
        self.pb_features = tuple(pb.Feature(name=n, description=d) for n, d in self.features)
        self.manifest_json = json.dumps(view.manifest, sort_keys=True, default=str)
        self.created_at = float(getattr(view, "created_at", 0.0) or 0.0)
        self._users_checked: tuple[Any, str | None] | None = None
        rules = getattr(view, "rules", None)
        if rules is not None:
            try:
                scoring.check_rules(rules, self.M, self.F)
            except ValueError as e:
                raise StoreError(f"version {self.version}: stored content rules are invalid: {e}") from None
        self.rules = rules
        sigma = getattr(view, "sigma", None)
        if sigma is not None and not (isinstance(sigma, np.ndarray) and sigma.dtype == _F32
                                      and sigma.shape == theta.shape and sigma.flags.c_contiguous):
            raise StoreError(f"version {self.version}: stored sigma must be C-contiguous float32 {theta.shape}")
        self.sigma: np.ndarray | None = sigma
        # per-ad ||sigma||_2, computed once per version: lets the Thompson kernels skip ads
        self.sigma_bound: np.ndarray | None = None if sigma is None else scoring.sigma_row_norms(sigma)

    def exploration(self, request: Any, default: bool) -> tuple[bool, int]:
        """(explore?, seed) for a Rank/RankBatch request: its ``explore`` field, else the
        server default; the request's seed, else a random one. INVALID_ARGUMENT when
        exploring a version that has no stored posterior spread."""
        explore = request.explore if request.HasField("explore") else default
        if not explore:
            return False, 0
        if self.sigma is None:
            raise _invalid(f"version {self.version} has no posterior spread (sigma) to sample from; "
                           "publish it with sigma, or send explore=false")
        seed = request.seed if request.HasField("seed") else secrets.randbits(64)
        return True, int(seed)

    def rules_for(self, request: Any) -> tuple[Any, bool]:
        """(rules to apply or None, whether the request applies the version's rules)."""
        apply = not request.HasField("apply_content_rules") or request.apply_content_rules
        return (self.rules if apply else None), bool(apply)

    def users_problem(self, user_features: Sequence[tuple[str, str]] | None) -> str | None:
        """None when a user table with this schema can be scored by this version (or there is
        no table), else the FAILED_PRECONDITION message. The last answer is kept per schema
        object (the store hands out the same tuple while the table is unchanged)."""
        last = self._users_checked
        if last is not None and last[0] is user_features:
            return last[1]
        problem = self._users_problem(user_features)
        self._users_checked = (user_features, problem)
        return problem

    def _users_problem(self, user_features: Sequence[tuple[str, str]] | None) -> str | None:
        if user_features is None:
            return None  # no table: every user id is simply unknown (NOT_FOUND)
        names = tuple(n for n, _ in user_features)
        if names != self.feature_names:
            return (f"the store's user table has {len(names)} features that do not match the "
                    f"{self.F} features of version {self.version}; send inline features instead")
        return None


class RankerServicer(pb_grpc.RankerServicer):
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
        self._users: Any = None  # UsersView of the live version (rows of its own publish), or None
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

    def _refresh_users(self) -> None:
        """Keep ``_users`` a snapshot of the user table taken with the live version current, so
        by-id requests read rows without reading the store's meta (see ``_users_by_id``)."""
        if not hasattr(self._store, "users_view"):
            return
        old = self._users
        if old is not None and old.fresh():
            return
        new = self._store.users_view()
        self._users = new
        if old is not None:
            old.close()

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

    def _users_by_id(self, st: ServingState, live: bool, user_ids: Sequence[str]) -> tuple[ServingState, np.ndarray]:
        """(state, float32 [B, F]) for rows of the store's user table.

        The rows, the table's schema and the store's current version are read in one
        transaction. When the request is for the live version and that read shows a newer
        publish than ``st``, the server swaps to it first (instead of waiting up to one poll),
        so a user row is never scored with weights from a different publish. The schema is
        checked against the version actually used, on every request. A pinned version is scored
        with the user table as it is now.

        Fast path: the poller keeps a snapshot of the user table taken in a transaction where
        ``st.version`` was current. While nothing was committed since (LMDB's last transaction
        id unchanged, checked per request without a transaction) its rows are the current ones
        and belong with these weights; after any commit the request takes the full read below
        until the poller renews the snapshot."""
        users = self._users
        if live and users is not None and users.version == st.version and users.fresh():
            try:
                X = users.rows(user_ids)
            except UserNotFound as e:
                raise _not_found(f"unknown user_id {_short(str(e.user_id))} (the store's user table has "
                                 f"{users.n_users} users)") from None
            if X is not None:
                problem = st.users_problem(users.features)
                if problem is not None:
                    raise RequestError(_SC.FAILED_PRECONDITION, problem)
                return st, X
        for _ in range(_SYNC_ATTEMPTS):
            try:
                snap = self._store.users_snapshot(user_ids)
            except UserNotFound as e:
                raise _not_found(f"unknown user_id {_short(str(e.user_id))} (the store's user table has "
                                 f"{self._store.n_users()} users)") from None
            if live and snap.version is not None and snap.version != st.version:
                st = self._sync_to(snap.version, st)
                continue
            problem = st.users_problem(snap.features)
            if problem is not None:
                raise RequestError(_SC.FAILED_PRECONDITION, problem)
            return st, snap.X
        raise RequestError(_SC.UNAVAILABLE, f"the weight version changed {_SYNC_ATTEMPTS} times while this "
                                            "request read its users; retry")

    def _sync_to(self, version: str, st: ServingState) -> ServingState:
        """Load the just-published ``version`` now (a by-id request saw it before the poller).
        A version that failed to load is not retried by requests for one poll interval."""
        failed = self._failed_load
        if failed is not None and failed[0] == version and time.monotonic() - failed[1] < self._config.poll_interval_s:
            raise RequestError(_SC.UNAVAILABLE, f"version {version} was just published but could not be loaded; retry")
        try:
            with self._sync_lock:
                if self._state is None or self._state.version != version:
                    self._poll_once()
        except Exception as e:  # serve nothing rather than a user row with other weights
            self._failed_load = (version, time.monotonic())
            log.exception("loading %s for a by-id request failed; still serving %s", version, st.version)
            raise RequestError(_SC.UNAVAILABLE, f"version {version} was just published but could not be "
                                                f"loaded ({type(e).__name__}); retry") from None
        return self._state_for("")

    def _user_vector(self, st: ServingState, live: bool, user_id: str, dense: Sequence[float],
                     fmap: Mapping[str, float]) -> tuple[ServingState, np.ndarray]:
        """(state, the request's feature vector float32 [F]), validated: length, names, finite.
        The state differs from ``st`` only when a by-id read caught a newer publish (see
        :meth:`_users_by_id`)."""
        n_dense = len(dense)
        given = (1 if user_id else 0) + (1 if n_dense else 0) + (1 if len(fmap) else 0)
        if given != 1:
            if given == 0:
                raise _invalid("no user given: set exactly one of user_id, features (dense) or feature_map")
            raise _invalid("set exactly one of user_id, features (dense) or feature_map, not several")
        if user_id:
            st, U = self._users_by_id(st, live, [user_id])
            return st, U[0]
        if n_dense:
            if n_dense != st.F:
                raise _invalid(f"features has {n_dense} values, expected F={st.F} for version {st.version} "
                               f"(schema order: {_preview(list(st.feature_names), 4)})")
            x = np.fromiter(dense, dtype=_F32, count=n_dense)
        else:
            x = st.map_default.copy()
            index = st.feature_index
            unknown = []
            for name, value in fmap.items():
                j = index.get(name)
                if j is None:
                    unknown.append(name)
                else:
                    x[j] = value
            if unknown:
                raise _invalid(f"unknown feature name(s) in feature_map: {_preview(sorted(unknown))}; "
                               f"version {st.version} has {st.F} features: {_preview(list(st.feature_names), 6)}")
        if not np.isfinite(x).all():
            bad = int(np.flatnonzero(~np.isfinite(x))[0])
            raise _invalid(f"feature {st.feature_names[bad]!r} (index {bad}) is {float(x[bad])}; values must be finite")
        return st, x

    def _check_k(self, k: int) -> int:
        if k < 1 or k > self._max_k:
            raise _invalid(f"top_k must be in [1, {self._max_k}], got {k}")
        return k

    def _allow_mask(self, st: ServingState, allow_ids: Sequence[str], deny_ids: Sequence[str]) -> np.ndarray | None:
        """uint8 [M] candidate mask, or None when every ad is a candidate."""
        if not allow_ids and not deny_ids:
            return None
        index = st.ad_index
        unknown = [a for a in allow_ids if a not in index] + [a for a in deny_ids if a not in index]
        if unknown:
            raise _not_found(f"unknown ad id(s) in allow/deny list for version {st.version}: {_preview(unknown)}")
        if allow_ids:
            mask = np.zeros(st.M, dtype=np.uint8)
            mask[[index[a] for a in allow_ids]] = 1
        else:
            mask = np.ones(st.M, dtype=np.uint8)
        if deny_ids:
            mask[[index[a] for a in deny_ids]] = 0
        return mask

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
    def Rank(self, request: pb.RankRequest, context: grpc.ServicerContext) -> pb.RankResponse:
        st = self._state_for(request.version)
        st, x = self._user_vector(st, self._is_live(request.version), request.user_id,
                                  request.features, request.feature_map)
        k = self._check_k(request.top_k)
        mask = self._allow_mask(st, request.allow_ad_ids, request.deny_ad_ids)
        rules, applied = st.rules_for(request)
        explore, seed = st.exploration(request, self._config.explore_default)
        resp = pb.RankResponse(version=st.version, content_rules_applied=applied, explored=explore, seed=seed)
        if mask is not None and not mask.any():
            return resp  # every ad filtered out: nothing to rank
        self._before_kernel(context)
        if explore:  # ranked by the sample; the returned logit/ctr are the mean ones
            idx, logit, prob, _ = scoring.topk_one_thompson(st.theta, st.sigma, x, k, seed, mask, rules,
                                                            st.sigma_bound)
        else:
            idx, logit, prob = scoring.topk_one(st.theta, x, k, mask, rules)
        self._count_kernel()
        ad_ids = st.ad_ids
        ads = resp.ads
        if request.with_contributions:
            resp.feature_names.extend(st.feature_names)
            theta = st.theta
            for i, lg, p in zip(idx.tolist(), logit.tolist(), prob.tolist()):
                ad = ads.add(ad_id=ad_ids[i], ctr=p, logit=lg, ad_index=i)
                ad.contributions.extend(scoring.contributions(theta[i], x).tolist())
        else:
            for i, lg, p in zip(idx.tolist(), logit.tolist(), prob.tolist()):
                ads.add(ad_id=ad_ids[i], ctr=p, logit=lg, ad_index=i)
        return resp

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
        X_inline = np.frombuffer(raw, dtype=_LE_F32).reshape(n_inline, F) if n_inline else None
        if X_inline is not None and X_inline.dtype != _F32:  # big-endian host
            X_inline = X_inline.astype(_F32)
        if X_inline is not None and not np.isfinite(X_inline).all():
            r, c = (int(v) for v in np.argwhere(~np.isfinite(X_inline))[0])
            raise _invalid(f"features row {r}, feature {st.feature_names[c]!r} (index {c}) is "
                           f"{float(X_inline[r, c])}; values must be finite")
        if U is not None:
            X = U if X_inline is None else np.concatenate([X_inline, U])
        else:
            X = X_inline
        mask = self._allow_mask(st, request.allow_ad_ids, request.deny_ad_ids)
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
        st, x = self._user_vector(st, self._is_live(request.version), request.user_id,
                                  request.features, request.feature_map)
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
        rationale = record.get("rationale") if isinstance(record, dict) else None
        per_feature = rationale if isinstance(rationale, dict) else {}
        resp = pb.ExplainResponse(version=st.version, ad_id=request.ad_id, logit=float(logit[0]), ctr=float(ctr[0]))
        order = np.argsort(-np.abs(contrib), kind="stable")
        xs, ws, cs = x.tolist(), theta_row.tolist(), contrib.tolist()
        for j in order.tolist():
            name, desc = st.features[j]
            reason = per_feature.get(name, "")
            resp.contributions.add(name=name, description=desc, value=xs[j], weight=ws[j], contribution=cs[j],
                                   rationale=reason if isinstance(reason, str) else json.dumps(reason, default=str))
        if rationale is not None:
            resp.rationale_json = json.dumps(rationale, sort_keys=True, default=str)
        if isinstance(record, dict):
            rest = {k: v for k, v in record.items() if k != "rationale"}
            if rest:
                resp.provenance_json = json.dumps(rest, sort_keys=True, default=str)
        if st.rules is not None:  # the ad's few rules, tested exactly as the kernels do
            for r, f, t in st.rules.of_ad(i):
                fires = bool(x[f] > np.float32(t))
                resp.content_rules.add(feature=st.feature_names[f], threshold=t, value=xs[f], fires=fires,
                                       rule_index=r)
                resp.excluded_by_rules |= fires
        return resp

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
            except RequestError as e:
                code, msg = e.code, e.message
            except VersionNotFound as e:
                code, msg = _SC.NOT_FOUND, str(e)
            except ValueError as e:  # a validation we did not anticipate: still the caller's input
                code, msg = _SC.INVALID_ARGUMENT, f"invalid request: {e}"
            except StoreError as e:
                log.exception("%s: store error", name)
                code, msg = _SC.INTERNAL, f"store error: {e}"
            except Exception as e:
                log.exception("%s: unexpected error", name)
                code, msg = _SC.INTERNAL, f"internal error in {name}: {type(e).__name__}: {e}"
            with lock:
                servicer._errors[code.name] += 1
            count(name, codes, code.name)
        finally:
            in_flight.dec()
            observe(clock() - t0)
        if len(msg) > _MAX_DETAILS:  # never let an echoed value turn the answer into RESOURCE_EXHAUSTED
            msg = msg[:_MAX_DETAILS] + "..."
        context.abort(code, msg)

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
    into INVALID_ARGUMENT answered by the guard."""
    guarded = _GuardedServicer(inner)
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(getattr(guarded, name), request_deserializer=_safe_deserializer(req),
                                                  response_serializer=resp.SerializeToString)
        for name, req, resp in _METHODS
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
