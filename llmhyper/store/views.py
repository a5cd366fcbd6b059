"""The immutable, zero-copy view of one published weight version, and how it is read from LMDB.

A :class:`VersionView`'s ``theta`` (and ``sigma``) are read-only ``numpy.frombuffer`` arrays over
the LMDB memory map; :func:`load_version` builds one inside a read transaction that the caller
(:class:`llmhyper.store.env._Env`) keeps open for as long as the arrays may be used.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import lmdb
import numpy as np

from llmhyper.store.extras import RULES_SUFFIX, SIGMA_SUFFIX, decode_rules
from llmhyper.store.validate import StoreError, VersionNotFound

__all__ = ["DTYPE", "VersionView", "load_version"]

#: the stored dtype of every matrix and user row: float32 little-endian
DTYPE = np.dtype("<f4")
_DTYPE = DTYPE


@dataclass(frozen=True, eq=False)
class VersionView:
    """One immutable published weight version.

    ``theta`` is float32 [M, F] (M ads x F features), read-only and mapped straight from the
    LMDB file (no copy); it stays valid while this view (or any array derived from ``theta``)
    is alive and the store is open.
    """

    version: str
    theta: np.ndarray
    ad_ids: tuple[str, ...]
    ad_index: Mapping[str, int]
    features: tuple[tuple[str, str], ...]
    manifest: dict
    created_at: float
    #: content rules (scoring.rules.ContentRules) stored with the version, or None
    rules: Any = None
    #: posterior spread float32 [M, F] (read-only, zero-copy like theta), or None
    sigma: np.ndarray | None = None

    @property
    def n_ads(self) -> int:
        """Number of ads M (rows of ``theta``)."""
        return int(self.theta.shape[0])

    @property
    def n_features(self) -> int:
        """Number of features F (columns of ``theta``), bias included."""
        return int(self.theta.shape[1])

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Feature names in schema order (index 0 is ``bias``)."""
        return tuple(n for n, _ in self.features)


def load_version(txn: lmdb.Transaction[memoryview], dbs: Mapping[str, Any], path: str,
                 version: str) -> tuple[VersionView, np.ndarray, np.ndarray | None]:
    """Read ``version`` in ``txn`` (a ``buffers=True`` read txn that must outlive the arrays).

    Returns (the view, the 1-D theta array every derived array keeps alive, the same for sigma
    or None). Raises VersionNotFound for an unknown version, StoreError for an incomplete one.
    """
    key = version.encode()
    hdr_b = txn.get(key, db=dbs["versions"])
    if hdr_b is None:
        raise VersionNotFound(f"weight version {version!r} does not exist in {path!r}")
    hdr = json.loads(bytes(hdr_b))
    M, F = int(hdr["n_ads"]), int(hdr["n_features"])
    buf = txn.get(key, db=dbs["matrices"])
    ids_b = txn.get(key, db=dbs["ad_ids"])
    if buf is None or ids_b is None or len(buf) < M * F * 4:
        raise StoreError(f"weight version {version!r} in {path!r} is incomplete")
    flat = np.frombuffer(buf, dtype=_DTYPE, count=M * F)
    if flat.ctypes.data % _DTYPE.alignment:
        warnings.warn(f"weight version {version!r} is not aligned in the map; copying it",
                      RuntimeWarning, stacklevel=3)  # -> WeightStore.view
        flat = flat.copy()
    flat.flags.writeable = False
    theta = flat.reshape(M, F)
    ids = tuple(json.loads(bytes(ids_b)))
    rules, sigma, sflat = None, None, None
    n_rules = int(hdr.get("n_rules", 0) or 0)
    if hdr.get("has_rules"):
        rb = txn.get(key + RULES_SUFFIX, db=dbs["matrices"])
        if rb is None:
            raise StoreError(f"weight version {version!r} in {path!r} is incomplete (rules missing)")
        try:
            rules = decode_rules(rb, M, n_rules)
        except ValueError as e:
            raise StoreError(f"weight version {version!r} in {path!r}: {e}") from None
    if hdr.get("has_sigma"):
        sb = txn.get(key + SIGMA_SUFFIX, db=dbs["matrices"])
        if sb is None or len(sb) < M * F * 4:
            raise StoreError(f"weight version {version!r} in {path!r} is incomplete (sigma missing)")
        sflat = np.frombuffer(sb, dtype=_DTYPE, count=M * F)
        if sflat.ctypes.data % _DTYPE.alignment:
            sflat = sflat.copy()
        sflat.flags.writeable = False
        sigma = sflat.reshape(M, F)
    view = VersionView(
        version=version,
        theta=theta,
        ad_ids=ids,
        ad_index=MappingProxyType({a: i for i, a in enumerate(ids)}),
        features=tuple((str(n), str(d)) for n, d in hdr["features"]),
        manifest=hdr["manifest"],
        created_at=float(hdr["created_at"]),
        rules=rules,
        sigma=sigma,
    )
    return view, flat, sflat
