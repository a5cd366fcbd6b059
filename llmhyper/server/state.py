"""Everything a request needs about one served weight version, computed once when it is loaded."""

from __future__ import annotations

import json
import secrets
from typing import Any, Sequence

import numpy as np

import scoring
from llmhyper._proto import ranker_pb2 as pb
from llmhyper.server.encode import RankEncoder
from llmhyper.server.errors import _invalid
from llmhyper.store.weight_store import StoreError

_F32 = np.dtype(np.float32)


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
        encoder: the :class:`~llmhyper.server.encode.RankEncoder` of this version's answers.
    """

    __slots__ = (
        "view", "version", "theta", "M", "F", "ad_ids", "ad_index", "feature_names",
        "feature_index", "features", "map_default", "pb_features", "_users_checked",
        "manifest_json", "created_at", "rules", "sigma", "sigma_bound", "encoder",
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
        self.encoder = RankEncoder(self.version, self.ad_ids)
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
