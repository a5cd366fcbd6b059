"""Where a chunk is scored: the local store (``--store``) or a server fleet (``--target``).

Both turn a :class:`~llmhyper.batch.inputs.Chunk` into a :class:`Scored` result: the rows
kept (unknown ids dropped with ``--on-unknown skip``), their top-k ad indices, CTRs and
logits, and the rejected (row, id) pairs. Scoring itself is :func:`score_rows`, the one
function the local path and the Dask workers run.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from llmhyper.batch import BatchInputError, BatchRuntimeError
from llmhyper.batch.inputs import Chunk

__all__ = ["Weights", "Scored", "LocalScorer", "RemoteScorer", "score_rows", "candidate_mask"]


@dataclass(frozen=True)
class Weights:
    """One pinned weight version: theta float32 [M, F], its ad ids and feature names."""

    version: str
    theta: np.ndarray
    ad_ids: tuple[str, ...]
    feature_names: tuple[str, ...]


@dataclass
class Scored:
    """A scored chunk: ``ids`` of the kept rows, idx int64 / ctr, logit float32 [n, k'],
    and ``rejects`` [(1-based row, user id)] of unknown ids skipped."""

    ids: list[str]
    idx: np.ndarray
    ctr: np.ndarray
    logit: np.ndarray
    rejects: list[tuple[int, str]] = field(default_factory=list)


def candidate_mask(ad_ids: Sequence[str], allow: Sequence[str] | None, deny: Sequence[str] | None) -> np.ndarray | None:
    """uint8 [M] candidate mask from allow/deny ad id lists (None: every ad). Unknown ids raise."""
    if not allow and not deny:
        return None
    index = {a: i for i, a in enumerate(ad_ids)}
    unknown = [a for a in list(allow or []) + list(deny or []) if a not in index]
    if unknown:
        raise BatchInputError(f"unknown ad id(s) in --allow/--deny: {unknown[:5]} (the version has {len(ad_ids)} ads)")
    mask = np.zeros(len(ad_ids), np.uint8) if allow else np.ones(len(ad_ids), np.uint8)
    if allow:
        mask[[index[a] for a in allow]] = 1
    if deny:
        mask[[index[a] for a in deny]] = 0
    return mask


def score_rows(theta: np.ndarray, X: np.ndarray, k: int, mask: np.ndarray | None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(idx int64, ctr float32, logit float32) [B, k'] for users X float32 [B, F] (scoring.topk_batch)."""
    import scoring

    if X.shape[0] == 0:
        kk = min(k, theta.shape[0] if mask is None else int(mask.sum()))
        return np.empty((0, kk), np.int64), np.empty((0, kk), np.float32), np.empty((0, kk), np.float32)
    idx, lg, pr = scoring.topk_batch(theta, np.ascontiguousarray(X, dtype=np.float32), k, mask)
    return idx, pr, lg


def _unknown_error(chunk: Chunk, missing: list[int]) -> BatchInputError:
    shown = ", ".join(f"{chunk.ids[i]!r} (row {chunk.row0 + i + 1})" for i in missing[:5])
    more = f" and {len(missing) - 5} more in this chunk" if len(missing) > 5 else ""
    return BatchInputError(f"unknown user id(s): {shown}{more}; use --on-unknown skip to skip them "
                           "(they are written to the rejects file)")


class LocalScorer:
    """Scores from a local store (memory map): pins ``version`` and reads user rows by id."""

    def __init__(self, store_path: str, version: str | None) -> None:
        from llmhyper.store.weight_store import StoreError, VersionNotFound, WeightStore

        try:
            self.store = WeightStore(store_path, readonly=True)
            view = self.store.view(version)
        except VersionNotFound as e:
            raise BatchInputError(str(e)) from None
        except StoreError as e:
            raise BatchInputError(f"cannot open store {store_path}: {e}") from None
        self.weights = Weights(view.version, view.theta, view.ad_ids, view.feature_names)
        self._view = view  # keeps the zero-copy theta pinned for the whole job

    def check_users(self) -> None:
        """The user table must exist and share the version's feature names (by-id input)."""
        feats = self.store.user_features()
        if feats is None:
            raise BatchInputError(f"the store {self.store.path} has no user table; give feature columns instead of user_id")
        names = tuple(n for n, _ in feats)
        if names != self.weights.feature_names:
            raise BatchInputError(f"the store's user table has features {list(names)[:6]}..., but version "
                                  f"{self.weights.version} expects {list(self.weights.feature_names)[:6]}...")

    def rows(self, chunk: Chunk, on_unknown: str) -> tuple[list[str], np.ndarray, list[tuple[int, str]]]:
        """(kept ids, X float32 [n, F], rejects) for a chunk: by-id rows from the user table."""
        from llmhyper.store.weight_store import UserNotFound

        if chunk.X is not None:
            return chunk.ids, chunk.X, []
        try:
            return chunk.ids, self.store.user_matrix(chunk.ids), []
        except UserNotFound:
            pass
        vecs = [self.store.user_vector(u) for u in chunk.ids]
        missing = [i for i, v in enumerate(vecs) if v is None]
        if on_unknown == "error":
            raise _unknown_error(chunk, missing)
        keep = [i for i, v in enumerate(vecs) if v is not None]
        F = len(self.weights.feature_names)
        X = np.stack([vecs[i] for i in keep]) if keep else np.empty((0, F), np.float32)
        return ([chunk.ids[i] for i in keep], np.ascontiguousarray(X, dtype=np.float32),
                [(chunk.row0 + i + 1, chunk.ids[i]) for i in missing])

    def close(self) -> None:
        self._view = None
        self.store.close()


class RemoteScorer:
    """Scores through ``RankBatch`` on a server fleet, pinned to one version.

    Sub-batches of ``batch_size`` users run ``concurrency`` at a time; UNAVAILABLE and
    RESOURCE_EXHAUSTED answers are retried with capped exponential backoff (``attempts``
    tries). With ``--on-unknown skip`` a NOT_FOUND batch is split until the unknown ids are
    isolated.
    """

    def __init__(self, client, version: str | None, k: int, allow: Sequence[str] | None,
                 deny: Sequence[str] | None, concurrency: int = 4, batch_size: int = 1024,
                 attempts: int = 6, on_retry: Callable[[Exception], None] | None = None) -> None:
        self.client = client
        self.attempts = attempts
        self.on_retry = on_retry  # called before each backoff sleep (logging, tests)
        self.retries = 0
        from llmhyper.client import RankerError

        try:
            info = self._retrying(lambda: client.model_info(version=version))
        except RankerError as e:  # NOT_FOUND (unknown version) and other answers about our input
            raise BatchInputError(f"server refused GetModelInfo ({e.code.name}): {e.details}") from None
        self.weights = Weights(info.version, np.empty((len(info.ad_ids), 0), np.float32),
                               tuple(info.ad_ids), tuple(name for name, _ in info.features))
        candidate_mask(self.weights.ad_ids, allow, deny)  # unknown ad ids: refuse before any call
        self.k, self.allow, self.deny = k, list(allow or []), list(deny or [])
        self.concurrency, self.batch_size = concurrency, batch_size

    def _retrying(self, fn):
        import grpc
        from tenacity import RetryError, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

        from llmhyper.client import RankerError

        transient = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)

        def before_sleep(state) -> None:
            self.retries += 1
            if self.on_retry is not None:
                self.on_retry(state.outcome.exception())

        try:
            for attempt in Retrying(stop=stop_after_attempt(self.attempts),
                                    wait=wait_exponential(multiplier=0.05, max=2.0),
                                    retry=retry_if_exception(lambda e: isinstance(e, RankerError) and e.code in transient),
                                    before_sleep=before_sleep, reraise=True):
                with attempt:
                    return fn()
        except RetryError as e:  # pragma: no cover - reraise=True re-raises the last error
            raise e.last_attempt.exception() from None
        except RankerError as e:
            if e.code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                          grpc.StatusCode.FAILED_PRECONDITION):
                raise
            raise BatchRuntimeError(f"{e.method} failed ({e.code.name}): {e.details}") from None
        raise AssertionError("unreachable")

    def _call(self, ids: list[str] | None, X: np.ndarray | None):
        return self._retrying(lambda: self.client.rank_batch(
            features=X, user_ids=ids, top_k=self.k, allow=self.allow, deny=self.deny,
            version=self.weights.version))

    def _by_id(self, ids: list[str], pos: list[int], on_unknown: str, out: list) -> None:
        import grpc

        from llmhyper.client import RankerError

        try:
            out.append((pos, self._call(ids, None)))
        except RankerError as e:
            if e.code != grpc.StatusCode.NOT_FOUND or "user" not in e.details:
                raise BatchInputError(f"server refused the request ({e.code.name}): {e.details}") from None
            if len(ids) == 1:
                out.append((pos, None))
                return
            h = len(ids) // 2
            self._by_id(ids[:h], pos[:h], on_unknown, out)
            self._by_id(ids[h:], pos[h:], on_unknown, out)

    def score(self, chunk: Chunk, on_unknown: str) -> Scored:
        """Score one chunk through RankBatch (the server reads by-id rows itself)."""
        from llmhyper.client import RankerError

        n = len(chunk.ids)
        spans = [(a, min(n, a + self.batch_size)) for a in range(0, n, self.batch_size)]

        def one(span: tuple[int, int]) -> list:
            a, b = span
            out: list = []
            try:
                if chunk.X is None:
                    self._by_id(chunk.ids[a:b], list(range(a, b)), on_unknown, out)
                else:
                    out.append((list(range(a, b)), self._call(None, chunk.X[a:b])))
            except RankerError as e:  # transient codes were retried and became BatchRuntimeError
                raise BatchInputError(f"server refused the request ({e.code.name}): {e.details}") from None
            return out

        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            parts = [p for res in pool.map(one, spans) for p in res]
        parts.sort(key=lambda p: p[0][0])
        missing = [i for pos, r in parts if r is None for i in pos]
        if missing and on_unknown == "error":
            raise _unknown_error(chunk, missing)
        got = [(pos, r) for pos, r in parts if r is not None]
        for _, r in got:
            if r.version != self.weights.version:
                raise BatchRuntimeError(f"server answered with version {r.version}, expected {self.weights.version}")
        kk = got[0][1].ad_index.shape[1] if got else 0
        idx = np.concatenate([r.ad_index for _, r in got]).astype(np.int64) if got else np.empty((0, kk), np.int64)
        ctr = np.concatenate([r.ctr for _, r in got]) if got else np.empty((0, kk), np.float32)
        lg = np.concatenate([r.logit for _, r in got]) if got else np.empty((0, kk), np.float32)
        keep = [i for pos, _ in got for i in pos]
        return Scored([chunk.ids[i] for i in keep], idx, ctr, lg,
                      [(chunk.row0 + i + 1, chunk.ids[i]) for i in missing])

    def close(self) -> None:
        self.client.close()
