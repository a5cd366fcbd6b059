"""The wire bytes of a plain ``RankResponse``, written without building the message.

A unary ``Rank`` answer is a version id plus ``top_k`` scored ads. Building it with
``resp.ads.add(...)`` per ad and then ``SerializeToString`` costs more than the scoring
kernel (each add crosses into the protobuf runtime with four keyword arguments). Everything
in an answer except the two floats of each ad is known once a version is loaded, so
:class:`RankEncoder` prepares, per ad, the bytes before and after those floats and a
``struct`` packer, and an answer is one ``pack`` per ad and one ``join``.

The bytes are exactly what protobuf writes for the same message (fields in number order,
proto3 defaults left out); a value protobuf would leave out (a ctr or logit of 0.0, which
needs a shorter encoding) makes :meth:`RankEncoder.encode` return None and the caller builds
the message instead. The server registers a response serializer that passes these bytes
through and serializes a message as usual (``guard.add_ranker_to_server``). Other answers
(contributions, exploration) are messages from :func:`rank_message`.
"""

from __future__ import annotations

import struct
from typing import Any, Sequence

import numpy as np

import scoring
from llmhyper._proto import ranker_pb2 as pb

# Field tags (field number << 3 | wire type) of ranker.proto.
_RESP_VERSION, _RESP_AD, _RESP_RULES_APPLIED = b"\x0a", b"\x12", b"\x20\x01"
_AD_ID, _AD_CTR, _AD_LOGIT, _AD_INDEX = b"\x0a", 0x15, 0x1D, b"\x28"


def _varint(n: int) -> bytes:
    """Protobuf base-128 varint of a non-negative int."""
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _len_field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field; empty when ``payload`` is (proto3 leaves it out)."""
    return tag + _varint(len(payload)) + payload if payload else b""


class RankEncoder:
    """Serialized ``RankResponse`` bytes for one version's ads, without the message.

    Args:
        version: the version id every answer carries.
        ad_ids: the version's M ad ids in row order.

    Per ad the encoder keeps one ``struct.Struct`` (formats shared between ads of equal id
    length) and its fixed head and tail bytes: about 200 bytes of memory per ad, built once
    per loaded version (~1 s per million ads).
    """

    __slots__ = ("_head", "_packs")

    def __init__(self, version: str, ad_ids: Sequence[str]) -> None:
        self._head = _len_field(_RESP_VERSION, version.encode())
        formats: dict[str, struct.Struct] = {}
        packs: list[tuple[Any, bytes, bytes]] = []
        for i, ad_id in enumerate(ad_ids):
            id_field = _len_field(_AD_ID, ad_id.encode())
            tail = _AD_INDEX + _varint(i) if i else b""
            body_len = len(id_field) + 10 + len(tail)  # ctr and logit: tag + 4 bytes each
            head = _RESP_AD + _varint(body_len) + id_field + bytes((_AD_CTR,))
            fmt = f"<{len(head)}sfBf{len(tail)}s"
            s = formats.get(fmt)
            if s is None:
                s = formats[fmt] = struct.Struct(fmt)
            packs.append((s.pack, head, tail))
        self._packs = tuple(packs)

    def encode(self, rows: list[list[float]], rules_applied: bool) -> bytes | None:
        """Bytes of ``RankResponse(version, ads, content_rules_applied)`` (not explored).

        ``rows``: ranked ``[ad index, logit, prob]`` rows (``scoring.topk_one_rows(...).tolist()``).
        Returns None when a logit or ctr is 0.0 (protobuf leaves such a field out; build
        the message then).
        """
        packs = self._packs
        parts = [self._head]
        append = parts.append
        for i, logit, ctr in rows:
            if not (logit and ctr):
                return None
            pack, head, tail = packs[int(i)]
            append(pack(head, ctr, _AD_LOGIT, logit, tail))
        if rules_applied:
            append(_RESP_RULES_APPLIED)
        return b"".join(parts)


def rank_message(st: Any, rows: list[list[float]], x: "np.ndarray | None", applied: bool, explore: bool,
                 seed: int) -> pb.RankResponse:
    """The ``RankResponse`` message of ranked ``[ad index, logit, prob]`` rows for version state
    ``st`` (a ``ServingState``); with the user's vector ``x`` (float32 [F]) each ad carries its
    per-feature contributions and the answer the feature names."""
    resp = pb.RankResponse(version=st.version, content_rules_applied=applied, explored=explore, seed=seed)
    ad_ids = st.ad_ids
    ads = resp.ads
    if x is not None:
        resp.feature_names.extend(st.feature_names)
        theta = st.theta
        for i, lg, p in rows:
            i = int(i)
            ad = ads.add(ad_id=ad_ids[i], ctr=p, logit=lg, ad_index=i)
            ad.contributions.extend(scoring.contributions(theta[i], x).tolist())
    else:
        for i, lg, p in rows:
            i = int(i)
            ads.add(ad_id=ad_ids[i], ctr=p, logit=lg, ad_index=i)
    return resp


def serialize_rank_response(resp: "pb.RankResponse | bytes") -> bytes:
    """The Rank method's response serializer: bytes from :class:`RankEncoder` pass through,
    a ``RankResponse`` message is serialized."""
    if resp.__class__ is bytes:
        return resp  # type: ignore[return-value]
    return resp.SerializeToString()  # type: ignore[union-attr]
