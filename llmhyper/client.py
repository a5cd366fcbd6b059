"""Typed Python client for the Ranker service, for use from other services.

Example::

    from llmhyper.client import RankerClient

    with RankerClient("127.0.0.1:50051", token="s3cret") as c:
        res = c.rank("u42", top_k=5)
        for ad in res.ads:
            print(ad.ad_id, ad.ctr)
        batch = c.rank_batch(np.random.rand(256, F).astype(np.float32), top_k=10)
        batch.ad_ids_matrix()   # object [B, k] of ad ids

Every method raises :class:`RankerError` (with the gRPC status ``code`` and the server's
``details``) when the call fails.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmhyper._proto import ranker_pb2 as pb
from llmhyper._proto import ranker_pb2_grpc as pb_grpc
from llmhyper.auth import ClientTLS, bearer_metadata

__all__ = [
    "RankerClient", "RankerError", "RankedAd", "RankResult", "BatchResult", "Contribution",
    "Explanation", "VersionInfo", "ModelInfo", "ClientTLS",
]


class RankerError(Exception):
    """A failed Ranker call: ``code`` is the grpc.StatusCode, ``details`` the server's message."""

    def __init__(self, code: grpc.StatusCode, details: str, method: str) -> None:
        super().__init__(f"{method} failed: {code.name}: {details}")
        self.code = code
        self.details = details
        self.method = method


@dataclass(frozen=True)
class RankedAd:
    """One ranked ad: ``ctr`` in [0, 1], ``logit`` in log-odds, ``ad_index`` its weight row.

    ``contributions`` is float32 [F] (theta_j * xi_j, schema order) when requested, else None.
    """

    ad_id: str
    ctr: float
    logit: float
    ad_index: int
    contributions: np.ndarray | None = None


@dataclass(frozen=True)
class RankResult:
    """Result of :meth:`RankerClient.rank`: ads best first and the version used.

    ``feature_names`` (length F) is set when contributions were requested.
    """

    version: str
    ads: list[RankedAd]
    feature_names: tuple[str, ...] | None = None
    #: False only when the request opted out of the version's content rules
    content_rules_applied: bool = True
    #: True when the order is a Thompson sample; ``seed`` reproduces it
    explored: bool = False
    seed: int = 0

    @property
    def ad_ids(self) -> list[str]:
        return [a.ad_id for a in self.ads]


@dataclass(frozen=True)
class BatchResult:
    """Result of :meth:`RankerClient.rank_batch` for B users and k' ads per user.

    Attributes:
        version: weight version used.
        ad_index: int32 [B, k'] rows into ``ad_ids``, best first.
        ctr: float32 [B, k'] calibrated CTR. logit: float32 [B, k'] log-odds.
        ad_ids: the version's ad ids (length M) to decode ``ad_index``.
        content_rules_applied / explored / seed: as in :class:`RankResult`.
    A row left with fewer eligible ads by content rules ends with ad_index -1 (ctr 0).
    """

    version: str
    ad_index: np.ndarray
    ctr: np.ndarray
    logit: np.ndarray
    ad_ids: tuple[str, ...]
    content_rules_applied: bool = True
    explored: bool = False
    seed: int = 0

    def ad_ids_matrix(self) -> np.ndarray:
        """object [B, k'] array of ad id strings (None where a row is padded with -1)."""
        if not self.ad_index.size:
            return np.empty(self.ad_index.shape, dtype=object)
        ids = np.asarray(list(self.ad_ids) + [None], dtype=object)
        return ids[np.where(self.ad_index < 0, len(self.ad_ids), self.ad_index)]


@dataclass(frozen=True)
class Contribution:
    """One feature's part in an explained score: value xi_j, weight theta_j, contribution theta_j*xi_j."""

    name: str
    description: str
    value: float
    weight: float
    contribution: float
    rationale: str


@dataclass(frozen=True)
class RuleCheck:
    """One content rule of an explained ad: hidden when the user's ``value`` > ``threshold``."""

    feature: str
    threshold: float
    value: float
    fires: bool
    rule_index: int


@dataclass(frozen=True)
class Explanation:
    """Result of :meth:`RankerClient.explain`; ``contributions`` sorted by |contribution| desc.

    ``rationale`` / ``provenance`` are the decoded stored JSON (None when not stored).
    """

    version: str
    ad_id: str
    logit: float
    ctr: float
    contributions: list[Contribution]
    rationale: object | None
    provenance: dict | None
    #: every content rule of the ad, with whether it fires for this user
    content_rules: list[RuleCheck] = field(default_factory=list)
    #: True when a rule fires, so Rank / RankBatch never return the ad to this user
    excluded_by_rules: bool = False


@dataclass(frozen=True)
class VersionInfo:
    """One version in the store: id, publish time (unix s), M, F, generator, current flag."""

    version: str
    created_at: float
    n_ads: int
    n_features: int
    generator: str
    current: bool


@dataclass(frozen=True)
class ModelInfo:
    """Result of :meth:`RankerClient.model_info`."""

    version: str
    ad_ids: tuple[str, ...]
    features: tuple[tuple[str, str], ...]
    manifest: dict
    versions: list[VersionInfo]
    created_at: float
    n_users: int

    @property
    def n_ads(self) -> int:
        return len(self.ad_ids)


def _decode_json(text: str) -> object | None:
    import json

    return json.loads(text) if text else None


def service_config(timeout: float | None = 5.0, max_attempts: int = 4) -> str:
    """The gRPC service config the client ships (JSON): every Ranker method retries UNAVAILABLE
    (a server restarting, a child process replaced, a version published a moment ago) up to
    ``max_attempts`` calls with exponential backoff from 20 ms to 500 ms (x2, jittered by grpc),
    and has a default deadline of ``timeout`` seconds. The server only answers UNAVAILABLE
    before a handler has done anything, so a retry never repeats work."""
    method: dict = {
        "name": [{"service": "llmhyper.v1.Ranker"}],
        "retryPolicy": {"maxAttempts": int(max_attempts), "initialBackoff": "0.02s", "maxBackoff": "0.5s",
                        "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]},
    }
    if timeout is not None:
        method["timeout"] = f"{float(timeout):.3f}s"
    return json.dumps({"methodConfig": [method]})


class RankerClient:
    """Blocking client of ``llmhyper.v1.Ranker``.

    The channel carries :func:`service_config`: UNAVAILABLE is retried with backoff (``retries``
    False turns it off) and every call has the default deadline ``timeout``.

    Args:
        target: "host:port".
        token: bearer token sent as ``authorization: Bearer <token>`` on every call.
        tls: :class:`ClientTLS` for TLS / mutual TLS; None: plaintext.
        timeout: default per-call deadline in seconds (None: no deadline).
        max_message_bytes: largest response accepted (RankBatch responses grow with B*k).
        options: extra grpc channel options.
        retries: ship the retry policy of :func:`service_config` (default True).
    """

    def __init__(self, target: str, *, token: str | None = None, tls: ClientTLS | None = None,
                 timeout: float | None = 5.0, max_message_bytes: int = 64 * 1024 * 1024,
                 options: Sequence[tuple[str, object]] = (), retries: bool = True) -> None:
        opts: list[tuple[str, object]] = [
            ("grpc.max_receive_message_length", int(max_message_bytes)),
            ("grpc.max_send_message_length", -1),
            ("grpc.enable_retries", 1 if retries else 0),
            ("grpc.service_config", service_config(timeout) if retries else json.dumps({})),
            *(tls.channel_options() if tls is not None else []),
            *options,
        ]
        if tls is not None:
            self._channel = grpc.secure_channel(target, tls.credentials(), options=opts)
        else:
            self._channel = grpc.insecure_channel(target, options=opts)
        self.target = target
        self.timeout = timeout
        self._md = bearer_metadata(token) if token else None
        self._stub = pb_grpc.RankerStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._ad_ids_cache: dict[str, tuple[str, ...]] = {}

    # -------------------------------------------------------------- plumbing
    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "RankerClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, fn, request, timeout: float | None):
        try:
            return fn(request, timeout=self.timeout if timeout is None else timeout, metadata=self._md)
        except grpc.RpcError as e:
            raise RankerError(e.code(), e.details() or "", method) from e

    @staticmethod
    def _fill_user(req, user_id: str | None, features: Sequence[float] | np.ndarray | Mapping[str, float] | None) -> None:
        if (user_id is None) == (features is None):
            raise ValueError("give exactly one of user_id or features")
        if user_id is not None:
            req.user_id = user_id
        elif isinstance(features, Mapping):
            for name, value in features.items():
                req.feature_map[name] = float(value)
        else:
            arr = np.asarray(features, dtype=np.float32).ravel()
            req.features.extend(arr.tolist())

    # -------------------------------------------------------------- RPCs
    def rank(self, user_id: str | None = None, *, features: Sequence[float] | np.ndarray | Mapping[str, float] | None = None,
             top_k: int = 10, allow: Sequence[str] | None = None, deny: Sequence[str] | None = None,
             with_contributions: bool = False, version: str | None = None, timeout: float | None = None,
             apply_content_rules: bool | None = None, explore: bool | None = None,
             seed: int | None = None) -> RankResult:
        """Top-k ads for one user given by ``user_id`` or ``features`` (dense [F] or name->value).

        apply_content_rules=False skips the version's content rules (audits); explore
        ranks by a Thompson sample (None: the server default), reproducible with ``seed``.
        """
        req = pb.RankRequest(top_k=top_k, with_contributions=with_contributions, version=version or "")
        _fill_options(req, apply_content_rules, explore, seed)
        self._fill_user(req, user_id, features)
        if allow:
            req.allow_ad_ids.extend(allow)
        if deny:
            req.deny_ad_ids.extend(deny)
        resp = self._call("Rank", self._stub.Rank, req, timeout)
        ads = [
            RankedAd(a.ad_id, a.ctr, a.logit, a.ad_index,
                     np.asarray(a.contributions, dtype=np.float32) if with_contributions else None)
            for a in resp.ads
        ]
        return RankResult(resp.version, ads, tuple(resp.feature_names) if with_contributions else None,
                          resp.content_rules_applied, resp.explored, resp.seed)

    def rank_batch(self, features: np.ndarray | None = None, user_ids: Sequence[str] | None = None, *, top_k: int = 10,
                   allow: Sequence[str] | None = None, deny: Sequence[str] | None = None,
                   version: str | None = None, timeout: float | None = None,
                   apply_content_rules: bool | None = None, explore: bool | None = None,
                   seed: int | None = None) -> BatchResult:
        """Top-k ads for B users: rows of ``features`` (float32 [B_f, F]) then ``user_ids``.

        Returns numpy arrays [B, k']. The ad id list is cached per version, so repeated
        calls do not re-send it. apply_content_rules / explore / seed as in :meth:`rank`.
        """
        req = pb.RankBatchRequest(top_k=top_k, version=version or "")
        _fill_options(req, apply_content_rules, explore, seed)
        if features is not None:
            X = np.ascontiguousarray(features, dtype="<f4")
            if X.ndim != 2:
                raise ValueError(f"features must be 2-D [B, F], got shape {X.shape}")
            req.features = X.tobytes()
            req.num_features = X.shape[1]
        if user_ids:
            req.user_ids.extend(user_ids)
        if allow:
            req.allow_ad_ids.extend(allow)
        if deny:
            req.deny_ad_ids.extend(deny)
        # Skip re-sending the ad ids when we hold them for the version we expect back.
        req.skip_ad_ids = (version in self._ad_ids_cache) if version else bool(self._ad_ids_cache)
        resp = self._call("RankBatch", self._stub.RankBatch, req, timeout)
        if resp.ad_ids:
            ad_ids = tuple(resp.ad_ids)
            self._remember(resp.version, ad_ids)
        elif resp.version in self._ad_ids_cache:
            ad_ids = self._ad_ids_cache[resp.version]
        else:  # the server moved to a version we have not seen: fetch its ids once
            ad_ids = self.model_info(version=resp.version, timeout=timeout).ad_ids
            self._remember(resp.version, ad_ids)
        B, k = resp.num_users, resp.k
        return BatchResult(
            version=resp.version,
            ad_index=np.frombuffer(resp.ad_indices, dtype="<i4").reshape(B, k),
            ctr=np.frombuffer(resp.ctr, dtype="<f4").reshape(B, k),
            logit=np.frombuffer(resp.logit, dtype="<f4").reshape(B, k),
            ad_ids=ad_ids,
            content_rules_applied=resp.content_rules_applied,
            explored=resp.explored,
            seed=resp.seed,
        )

    def _remember(self, version: str, ad_ids: tuple[str, ...]) -> None:
        self._ad_ids_cache.pop(version, None)
        self._ad_ids_cache[version] = ad_ids
        while len(self._ad_ids_cache) > 4:
            self._ad_ids_cache.pop(next(iter(self._ad_ids_cache)))

    def explain(self, ad_id: str, user_id: str | None = None, *,
                features: Sequence[float] | np.ndarray | Mapping[str, float] | None = None,
                version: str | None = None, timeout: float | None = None) -> Explanation:
        """Per-feature contributions of ``ad_id``'s score for one user, with stored rationale/provenance."""
        req = pb.ExplainRequest(ad_id=ad_id, version=version or "")
        self._fill_user(req, user_id, features)
        r = self._call("Explain", self._stub.Explain, req, timeout)
        prov = _decode_json(r.provenance_json)
        return Explanation(
            version=r.version, ad_id=r.ad_id, logit=r.logit, ctr=r.ctr,
            contributions=[Contribution(c.name, c.description, c.value, c.weight, c.contribution, c.rationale)
                           for c in r.contributions],
            rationale=_decode_json(r.rationale_json),
            provenance=prov if isinstance(prov, dict) else None,
            content_rules=[RuleCheck(c.feature, c.threshold, c.value, c.fires, c.rule_index)
                           for c in r.content_rules],
            excluded_by_rules=r.excluded_by_rules,
        )

    def model_info(self, version: str | None = None, timeout: float | None = None) -> ModelInfo:
        """The served (or given) version's ads, feature schema, manifest, and the store's versions."""
        r = self._call("GetModelInfo", self._stub.GetModelInfo, pb.GetModelInfoRequest(version=version or ""), timeout)
        manifest = _decode_json(r.manifest_json)
        return ModelInfo(
            version=r.version,
            ad_ids=tuple(r.ad_ids),
            features=tuple((f.name, f.description) for f in r.features),
            manifest=manifest if isinstance(manifest, dict) else {},
            versions=[VersionInfo(v.version, v.created_at, v.n_ads, v.n_features, v.generator, v.current)
                      for v in r.versions],
            created_at=r.created_at,
            n_users=r.n_users,
        )

    def ping(self, timeout: float | None = None) -> None:
        """Empty round trip (raises RankerError when the server is unreachable)."""
        self._call("Ping", self._stub.Ping, pb.PingRequest(), timeout)

    def health(self, service: str = "", timeout: float | None = None) -> str:
        """grpc.health.v1 status name: "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN" or "UNKNOWN"."""
        r = self._call("Health.Check", self._health.Check, health_pb2.HealthCheckRequest(service=service), timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)

    def wait_until_serving(self, timeout: float = 30.0, service: str = "") -> None:
        """Poll health until SERVING; raises TimeoutError naming the last status after ``timeout`` s."""
        import time

        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                last = self.health(service, timeout=min(1.0, max(0.05, deadline - time.monotonic())))
                if last == "SERVING":
                    return
            except RankerError as e:
                last = f"{e.code.name}: {e.details}"
            time.sleep(0.05)
        raise TimeoutError(f"{self.target} not SERVING after {timeout:.1f}s (last: {last})")


def _fill_options(req: Any, apply_content_rules: bool | None, explore: bool | None, seed: int | None) -> None:
    """Set the optional rule / exploration fields only when given (unset means server default)."""
    if apply_content_rules is not None:
        req.apply_content_rules = bool(apply_content_rules)
    if explore is not None:
        req.explore = bool(explore)
    if seed is not None:
        req.seed = int(seed)
