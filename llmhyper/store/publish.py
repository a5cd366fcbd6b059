"""Writing versions: publish one (validate everything, then one write transaction that also moves
``current``), roll ``current`` back, prune old versions. The public entry points with their full
argument docs are the :class:`~llmhyper.store.weight_store.WeightStore` methods that call these."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import lmdb
import numpy as np

from llmhyper.store.env import FORMAT_VERSION, _Env
from llmhyper.store.extras import RULES_SUFFIX, SIGMA_SUFFIX, check_rules_input, check_sigma, encode_rules
from llmhyper.store.users import users_writer
from llmhyper.store.validate import (
    InvalidWeights,
    StoreError,
    VersionNotFound,
    check_features,
    check_ids,
    check_manifest,
    check_matrix,
    check_records,
    to_json,
)
from llmhyper.store.views import DTYPE as _DTYPE

__all__ = ["prune_versions", "publish_version", "rollback_version"]


def _vid(seq: int) -> str:
    return f"v{seq:06d}"


def _paged(mat: np.ndarray, psize: int) -> Any:
    """The bytes of a float32 matrix, zero-padded to >= one page so LMDB puts the value on
    overflow pages (page aligned, hence 16-byte aligned for zero-copy float32 views)."""
    if mat.nbytes >= psize:
        return mat.data.cast("B")  # the array's own buffer (C-contiguous), no copy
    pad = np.zeros(psize, dtype=np.uint8)
    pad[: mat.nbytes] = np.frombuffer(mat.tobytes(), dtype=np.uint8)
    return pad


def publish_version(e: _Env, ad_ids: Sequence[str], theta: Any, features: Sequence[Any],
                    manifest: Mapping[str, Any] | None,
                    ad_records: Mapping[str, Mapping[str, Any]] | None,
                    users: tuple[Sequence[str], Any, Sequence[Any]] | None,
                    rules: Any, sigma: Any, arrays: Mapping[str, Any] | None) -> str:
    """Validate a version and publish it into ``e`` as the new current one; returns its id.

    ``users`` (``(user_ids, X, features)`` or None) replaces the user table in the same transaction
    (validated after the version, by :func:`llmhyper.store.users.users_writer`). See
    :meth:`WeightStore.publish` for the arguments and the errors raised.
    """
    ids = check_ids(ad_ids, "ad_ids")
    feats = check_features(features)
    mat = check_matrix(theta, "theta", len(ids), len(feats))
    now = time.time()
    man = check_manifest(manifest, now)
    recs = check_records(ad_records, ids)
    crules = None if rules is None else check_rules_input(rules, ids, [n for n, _ in feats])
    sig = None if sigma is None else check_sigma(sigma, len(ids), len(feats))
    extra = {}
    for name, arr in (arrays or {}).items():
        if not isinstance(name, str) or not name.isidentifier() or name in ("rules", "sigma"):
            raise InvalidWeights(f"arrays: name must be an identifier other than 'rules' / 'sigma' "
                                 f"(pass sigma=...), got {name!r}")
        extra[name] = check_matrix(arr, f"arrays[{name!r}]", len(ids), len(feats))
    header_extra = {"features": [list(f) for f in feats], "manifest": man,
                    "created_at": float(man["created_at"]), "n_ads": mat.shape[0],
                    "n_features": mat.shape[1], "dtype": _DTYPE.str, "n_records": len(recs),
                    "format": FORMAT_VERSION}
    if extra:
        header_extra["arrays"] = sorted(extra)
    if crules is not None:
        header_extra.update(has_rules=True, n_rules=crules.n_rules)
    if sig is not None:
        header_extra["has_sigma"] = True
    to_json(header_extra, "version header")
    ids_json = to_json(ids, "ad_ids")
    dbs = e.dbs
    write_users, users_hint = users_writer(e, *users) if users is not None else (None, 0)

    def write(txn: lmdb.Transaction[bytes]) -> str:
        seq = int(txn.get(b"next_seq", db=dbs["meta"]) or b"1")
        version = _vid(seq)
        key = version.encode()
        psize = e.env.stat()["psize"]
        hdr = dict(header_extra, version=version, seq=seq)
        txn.put(key, _paged(mat, psize), db=dbs["matrices"])
        if crules is not None:
            txn.put(key + RULES_SUFFIX, encode_rules(crules), db=dbs["matrices"])
        if sig is not None:
            txn.put(key + SIGMA_SUFFIX, _paged(sig, psize), db=dbs["matrices"])
        txn.put(key, ids_json, db=dbs["ad_ids"])
        txn.put(key, to_json(hdr, "version header"), db=dbs["versions"])
        for name, arr in extra.items():
            txn.put(key + b"\x00" + name.encode(), arr.tobytes(), db=dbs["matrices"])
        for ad, rec in recs.items():
            txn.put(key + b"\x00" + ad.encode(), rec, db=dbs["records"])
        if write_users is not None:
            write_users(txn)
        txn.put(b"next_seq", str(seq + 1).encode(), db=dbs["meta"])
        txn.put(b"current", key, db=dbs["meta"])
        return version

    hint = (2 * mat.nbytes + 8 * (0 if crules is None else crules.n_rules) + len(ids_json)
            + sum(len(r) + 64 for r in recs.values()) + 8192 + users_hint + sum(a.nbytes + 64 for a in extra.values()))
    return e.write(write, hint)


def rollback_version(e: _Env, version: str | None) -> str:
    """Make ``version`` (None: the newest one before the current) current in ``e``; returns it."""
    meta, versions = e.dbs["meta"], e.dbs["versions"]

    def move(txn: lmdb.Transaction[bytes]) -> str:
        cur = txn.get(b"current", db=meta)
        if version is not None:
            if not isinstance(version, str) or txn.get(version.encode(), db=versions) is None:
                raise VersionNotFound(f"cannot roll back to {version!r}: no such version")
            target = version
        else:
            if cur is None:
                raise VersionNotFound("cannot roll back: the store has no current version")
            cur_hdr = txn.get(cur, db=versions)
            if cur_hdr is None:  # 'current' names a version without a header: a damaged store
                raise StoreError(f"cannot roll back: the current version {cur.decode()} has no header")
            cur_seq = json.loads(cur_hdr)["seq"]
            older = [(h["seq"], h["version"]) for h in
                     (json.loads(bytes(v)) for _, v in txn.cursor(db=versions))
                     if h["seq"] < cur_seq]
            if not older:
                raise VersionNotFound(f"cannot roll back: no version before {cur.decode()} is stored")
            target = max(older)[1]
        txn.put(b"current", target.encode(), db=meta)
        return target

    return e.write(move, 4096)


def prune_versions(e: _Env, keep: int) -> list[str]:
    """Delete all but the ``keep`` newest versions of ``e`` (never the current one) and retire
    their cached views; returns the removed version ids."""
    dbs = e.dbs

    def drop(txn: lmdb.Transaction[bytes]) -> list[str]:
        cur = txn.get(b"current", db=dbs["meta"])
        hdrs = sorted((json.loads(bytes(v)) for _, v in txn.cursor(db=dbs["versions"])),
                      key=lambda h: h["seq"])
        kept = {h["version"] for h in hdrs[len(hdrs) - keep:]} if keep else set()
        if cur is not None:
            kept.add(cur.decode())
        removed = [h["version"] for h in hdrs if h["version"] not in kept]
        arrays_of = {h["version"]: h.get("arrays", ()) for h in hdrs}
        for v in removed:
            key = v.encode()
            for name in arrays_of.get(v, ()):
                txn.delete(key + b"\x00" + name.encode(), db=dbs["matrices"])
            for name in ("versions", "matrices", "ad_ids"):
                txn.delete(key, db=dbs[name])
            for suffix in (RULES_SUFFIX, SIGMA_SUFFIX):
                txn.delete(key + suffix, db=dbs["matrices"])
            prefix = key + b"\x00"
            cur_r = txn.cursor(db=dbs["records"])
            if cur_r.set_range(prefix):
                while cur_r.key()[: len(prefix)] == prefix:
                    if not cur_r.delete():
                        break
        return removed

    removed = e.write(drop, 4096)
    for v in removed:
        e.retire(v)
    return removed
