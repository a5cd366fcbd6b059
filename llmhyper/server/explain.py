"""The Explain answer: one ad's score for one user broken down per feature, with the rationale,
provenance and content rules stored with the version."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from llmhyper._proto import ranker_pb2 as pb
from llmhyper.server.state import ServingState


def explain_response(st: ServingState, ad_id: str, i: int, x: np.ndarray, contrib: np.ndarray,
                     logit: np.ndarray, ctr: np.ndarray, record: Any) -> pb.ExplainResponse:
    """The ExplainResponse for ad ``ad_id`` (row ``i`` of ``st.theta``) and user features ``x``
    float32 [F]: ``contrib`` float32 [F] per-feature theta*x, ``logit`` / ``ctr`` float [1] the
    ad's score, ``record`` the ad's stored record (dict with an optional ``rationale``) or None.
    Contributions come largest |contribution| first."""
    rationale = record.get("rationale") if isinstance(record, dict) else None
    per_feature = rationale if isinstance(rationale, dict) else {}
    resp = pb.ExplainResponse(version=st.version, ad_id=ad_id, logit=float(logit[0]), ctr=float(ctr[0]))
    order = np.argsort(-np.abs(contrib), kind="stable")
    xs, ws, cs = x.tolist(), st.theta[i].tolist(), contrib.tolist()
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
