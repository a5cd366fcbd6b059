"""The judge loop of :class:`~offline.generators.llm.LLMGenerator` (paper appendix C.1).

For every feature batch of an ad (the same batches the weights were written in) one judge call
reviews the batch's averaged weights and rationales (offline/llm/judge.py). With
``judge="flag"`` the verdicts are only recorded. With ``judge="regenerate"`` the features judged
wrong are written again -- the whole batch is asked again with the reviewer's notes, and only
the rejected features take the new weights -- and reviewed again, at most ``judge_rounds``
times per batch. Features still judged wrong after the last round keep their weights, their
verdicts are recorded and the ad is flagged ``judge:unresolved``.

A judge answer that fails validation is retried under the shared retry budget; when it cannot
be obtained the ad fails (``on_failure`` decides what is published), so a poisoned judge answer
never changes a weight or a rule. Judge calls use the generator's answer cache: a killed build
resumes without repeating one.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from offline.llm.judge import JUDGE_VERSION, build_judge_prompt, judge_key, parse_judge
from offline.llm.retrying import CallFailed

if TYPE_CHECKING:  # pragma: no cover
    from offline.llm.judge import JudgeAnswer
    from offline.types import Neighbour

LLMGenerator = Any  # offline.generators.llm.LLMGenerator; not imported: it imports this module

__all__ = ["review_ad"]


def _mean(samples: np.ndarray, cols: list[int]) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(samples[:, cols], axis=0)


def _judge(gen: "LLMGenerator", ad: Any, batch: list[tuple[str, str]], w: np.ndarray, rationale: dict[str, str],
           ctx: dict, cost: dict, bi: int, round_: int) -> "JudgeAnswer":
    keys = [n for n, _ in batch]
    system, user, schema, keys_t = build_judge_prompt(
        ad, batch, dict(zip(keys, map(float, w))), {k: rationale.get(k, "") for k in keys},
        gen.prompt_config.use_caption, gen.bound)
    import hashlib

    psha = hashlib.sha256((system + "\x00" + user).encode("utf-8")).hexdigest()
    key = judge_key(ctx["ahash"], ctx["fp"], psha, round_)
    meta = {"key": key, "kind": "judge", "judge_version": JUDGE_VERSION, "batch": keys, "round": round_,
            "ad_hash": ctx["ahash"], "model": ctx["fp"]}
    return gen.ask(system, user, schema, lambda t: parse_judge(t, keys_t), key, gen.seed, meta, cost,
                   record=lambda a: {"verdicts": {k: v.verdict for k, v in a.verdicts.items()}},
                   images=ctx["images"])


def review_ad(gen: "LLMGenerator", ad: Any, neighbours: list["Neighbour"], feats: list[tuple[str, str]],
              findex: dict, batches: list[list[int]], samples: np.ndarray, rationale: dict[str, str],
              ctx: dict, cost: dict) -> tuple[str | None, dict]:
    """Judge (and in regenerate mode rewrite) every batch of one ad; ``samples`` f64[n, F] and
    ``rationale`` are updated in place. Returns (failure reason or None, the judge record:
    mode, verdicts {feature: {verdict, reason}}, regenerations, regenerated features,
    unresolved features, content_rules)."""
    rec: dict[str, Any] = {"mode": gen.judge, "version": JUDGE_VERSION, "verdicts": {}, "regenerations": 0,
                           "regenerated": [], "unresolved": [], "content_rules": []}
    rounds = gen.judge_rounds if gen.judge == "regenerate" else 0
    for bi, bcols in enumerate(batches):
        batch = [feats[c] for c in bcols]
        names = [n for n, _ in batch]
        ans = None
        for round_ in range(rounds + 1):
            try:
                ans = _judge(gen, ad, batch, _mean(samples, bcols), rationale, ctx, cost, bi, round_)
            except CallFailed as e:
                return f"judge batch {bi} round {round_}: {e.reason}", rec
            bad = ans.rejected()
            if not bad or round_ == rounds:
                break
            notes = [{"name": k, "verdict": ans.verdicts[k].verdict, "reason": ans.verdicts[k].reason} for k in bad]
            out, rat, _ana, accepted, last = gen._batch(ad, neighbours, feats, findex, bcols, ctx, cost,
                                                        round_=round_ + 1, notes=notes)
            rec["regenerations"] += 1
            if accepted < gen.min_samples:
                return (f"judge batch {bi}: regeneration round {round_ + 1} got {accepted}/{gen.n_samples} "
                        f"samples; {last}"), rec
            for j, c in enumerate(bcols):  # only the rejected features take the rewritten weights
                if feats[c][0] in bad:
                    samples[:, c] = out[:, j]
                    if rat.get(feats[c][0]):
                        rationale[feats[c][0]] = rat[feats[c][0]]
            rec["regenerated"].extend(k for k in bad if k not in rec["regenerated"])
        assert ans is not None
        for k in names:
            v = ans.verdicts[k]
            rec["verdicts"][k] = {"verdict": v.verdict, "reason": v.reason}
        rec["unresolved"].extend(ans.rejected())
        rec["content_rules"].extend(ans.rules)
    return None, rec
