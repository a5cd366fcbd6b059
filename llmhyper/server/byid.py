"""By-id user reads of the Ranker servicer: user rows served only with the weights of their publish.

A request by user id needs the user's feature row from the store's user table AND the weights
published together with that row. :class:`UserReads` (a base of
:class:`~llmhyper.server.servicer.RankerServicer`) gives it both:

* fast path: the poller keeps a :class:`~llmhyper.store.users.UsersView` snapshot taken while
  the live version was current; while LMDB shows no commit since, its rows are served with
  that version (``_fresh_users``, ``UsersView.row`` / ``rows``);
* full read: rows, schema and current version in one read transaction; a live request that
  sees a newer publish swaps to it first (``_read_users``, ``_sync_to``).

The schema of the user table is checked against the version used, on every request.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Sequence

import numpy as np

from llmhyper.server.config import ServerConfig
from llmhyper.server.errors import _SC, RequestError, unknown_user
from llmhyper.server.state import ServingState
from llmhyper.store.users import UsersView
from llmhyper.store.weight_store import UserNotFound, WeightStore

log = logging.getLogger("llmhyper.server")

_SYNC_ATTEMPTS = 3  # by-id reads that may each catch a newer publish before giving up


class UserReads:
    """The by-id reads; the servicer provides the state below and the two methods at the end."""

    _store: WeightStore
    _config: ServerConfig
    _state: ServingState | None
    _users: UsersView | None  # of the live version (rows of its own publish)
    _sync_lock: threading.Lock
    _failed_load: tuple[str, float] | None

    def _poll_once(self) -> None:  # pragma: no cover - the servicer's
        raise NotImplementedError

    def _state_for(self, version: str) -> ServingState:  # pragma: no cover - the servicer's
        raise NotImplementedError

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

    def _fresh_users(self, st: ServingState, live: bool) -> UsersView | None:
        """The poller's user-table snapshot if it may serve this request (live version, taken
        with ``st`` current, no commit since), else None."""
        users = self._users
        if live and users is not None and users.version == st.version and users.fresh():
            return users
        return None

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
        hit = self._from_snapshot(st, live, lambda users: users.rows(user_ids))
        return hit if hit is not None else self._read_users(st, live, user_ids)

    def _user_row(self, st: ServingState, live: bool, user_id: str) -> tuple[ServingState, np.ndarray]:
        """(state, float32 [F]) for one user: :meth:`_users_by_id` for a single id, whose fast
        path takes the row from the snapshot's row cache (``UsersView.row``)."""
        hit = self._from_snapshot(st, live, lambda users: users.row(user_id))
        if hit is not None:
            return hit
        st, X = self._read_users(st, live, (user_id,))
        return st, X[0]

    def _from_snapshot(self, st: ServingState, live: bool, read: Callable[[UsersView], np.ndarray | None]
                       ) -> tuple[ServingState, np.ndarray] | None:
        """The fast path of the by-id reads: (state, ``read(snapshot)``), or None when the
        snapshot may not serve this request or ``read`` misses it (returns None)."""
        users = self._fresh_users(st, live)
        if users is None:
            return None
        try:
            got = read(users)
        except UserNotFound as e:
            raise unknown_user(e.user_id, users.n_users) from None
        return None if got is None else (self._checked(st, users.features), got)

    @staticmethod
    def _checked(st: ServingState, user_features: Sequence[tuple[str, str]] | None) -> ServingState:
        """``st``, after checking that a user table with this schema can be scored by it."""
        problem = st.users_problem(user_features)
        if problem is not None:
            raise RequestError(_SC.FAILED_PRECONDITION, problem)
        return st

    def _read_users(self, st: ServingState, live: bool, user_ids: Sequence[str]) -> tuple[ServingState, np.ndarray]:
        """The full read of :meth:`_users_by_id`: rows and current version in one transaction."""
        for _ in range(_SYNC_ATTEMPTS):
            try:
                snap = self._store.users_snapshot(user_ids)
            except UserNotFound as e:
                raise unknown_user(e.user_id, self._store.n_users()) from None
            if live and snap.version is not None and snap.version != st.version:
                st = self._sync_to(snap.version, st)
                continue
            return self._checked(st, snap.features), snap.X
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
