"""Prompt optimisation (paper appendix C.3): choose the weight prompt on retired ads only.

The search space is small and explicit: instruction variants
(:data:`~offline.llm.prompt_file.INSTRUCTION_VARIANTS`, or any given dict) crossed with shot
counts. Each candidate is the LLM generator with that prompt, scored by the same pseudo-cold
objective the default generator is chosen by (offline/selection: rolling-origin folds of
RETIRED ads, importance-weighted toward the active ads' content, ``select_config``): the
candidate writes weights for each fold's held-out retired ads from that fold's pool of older
retired ads, and is scored on the held-out ads' own clicks. No active ad's label is read.
The winner is saved as a versioned prompt file (offline/llm/prompt_file.py) with the score
table, for ``build --prompt`` / ``evaluate --prompt``.

Why not DSPy + GEPA (the paper's tool): GEPA optimises free text by reflective LLM rewrites
against a metric it calls per example; our metric is a ranking objective over a whole fold
(AUC / NDCG / per-ad AUC of many ads at once), our calls must go through our own retry policy,
answer cache and quota stop, and DSPy would add a heavy dependency that owns the prompt
format (the data-block fencing that keeps advertiser text inert would no longer be ours). A
transparent grid over a few hand-written variants is cheap to cache, resumable, and its
choice is auditable from the saved table.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from offline.generators.knn import RawKNNGenerator
from offline.llm.prompt_file import INSTRUCTION_VARIANTS, PromptFile, finite_or_none
from offline.types import Generated, Neighbour

if TYPE_CHECKING:  # pragma: no cover
    from offline.llm.base import LLMBackend
    from offline.selection.folds import ValidationFold
    from offline.stages.prepared import Prepared

__all__ = ["FoldLLM", "candidates", "optimize_prompt"]


class FoldLLM:
    """The LLM generator behind select_config's fold protocol. ``fit_arrays`` has nothing to
    learn (the LLM only reads the neighbours it is given, which come from the fold's pool); an
    ad whose generation failed gets the raw kNN weights so the fold's scores stay defined, and
    is counted in ``failed``."""

    def __init__(self, gen: Any) -> None:
        self.gen = gen
        self.knn = RawKNNGenerator()
        self.failed = 0
        self.calls = 0

    def fit_arrays(self, *args: Any, **kwargs: Any) -> "FoldLLM":
        return self

    def generate(self, ad: Any, neighbours: list[Neighbour], features: list[tuple[str, str]]) -> Generated:
        g = self.gen.generate(ad, neighbours, features)
        self.calls += int(g.cost.get("calls", 0))
        if not g.usable:
            self.failed += 1
            return self.knn.generate(ad, neighbours, features)
        return g


def candidates(variants: Mapping[str, str] | Sequence[str] | None = None,
               shots: Sequence[int] = (0, 3, 5)) -> dict[str, dict[str, Any]]:
    """Candidate name ``VARIANT/Ns`` -> {"name", "instruction", "shots"} for every variant x shots."""
    if variants is None:
        variants = INSTRUCTION_VARIANTS
    elif not isinstance(variants, Mapping):
        unknown = [v for v in variants if v not in INSTRUCTION_VARIANTS]
        if unknown:
            raise ValueError(f"unknown instruction variant(s) {unknown}; known: {sorted(INSTRUCTION_VARIANTS)}")
        variants = {v: INSTRUCTION_VARIANTS[v] for v in variants}
    if not variants or not shots:
        raise ValueError("need at least one instruction variant and one shots value")
    return {f"{name}/{int(s)}s": {"name": name, "instruction": text, "shots": int(s)}
            for name, text in variants.items() for s in shots}


def _cap_folds(folds: Sequence["ValidationFold"], max_held: int | None) -> list["ValidationFold"]:
    """At most ``max_held`` held-out ads per fold (an evenly spaced, deterministic subset)."""
    if max_held is None:
        return list(folds)
    out = []
    for f in folds:
        if f.held.size <= max_held:
            out.append(f)
            continue
        pick = np.unique(np.linspace(0, f.held.size - 1, max_held).round().astype(int))
        out.append(dataclasses.replace(f, held=f.held[pick], weights=f.weights[pick]))
    return out


def optimize_prompt(prep: "Prepared", backend: "LLMBackend", generator_options: Mapping[str, Any] | None = None,
                    variants: Mapping[str, str] | Sequence[str] | None = None, shots: Sequence[int] = (0, 3, 5),
                    folds: Sequence["ValidationFold"] | None = None, max_held: int | None = 30,
                    edges: Sequence[float] = (0.6, 0.8, 1.0), quiet: bool = True) -> PromptFile:
    """Score every candidate prompt on the retired-only folds and return the winner as a
    :class:`PromptFile` (not yet saved) whose ``search`` holds the objective and metrics of every
    candidate, the folds' sizes and the number of failed ads. ``generator_options``: extra
    LLMGenerator options (cache_dir, n_samples, batch_size, ...); ``max_held``: held-out ads
    scored per fold (bounds the LLM cost; None = all)."""
    from offline.generators.llm import LLMGenerator
    from offline.selection import folds as F
    from offline.selection.select import SELECTION_OBJECTIVE, select_config

    cands = candidates(variants, shots)
    if folds is None:
        folds = F.validation_folds(prep, edges=edges)
    folds = _cap_folds(folds, max_held)
    opts = dict(generator_options or {})
    for k in ("shots", "prompt_file"):
        opts.pop(k, None)
    made: dict[str, FoldLLM] = {}

    def make(name: str, instruction: str, shots: int) -> FoldLLM:
        pf = PromptFile(name=name, instruction=instruction, shots=shots)
        fl = FoldLLM(LLMGenerator(backend, prompt_file=pf, **opts))
        made.setdefault(f"{name}/{shots}s", fl)
        if not quiet:
            print(f"[llmhyper] optimize-prompt: scoring {name} with {shots} shots", file=sys.stderr, flush=True)
        return made[f"{name}/{shots}s"]

    best, table = select_config(prep, cands, folds, make)
    win = cands[best]
    search = {
        "objective": "+".join(SELECTION_OBJECTIVE) + " (importance-weighted, mean over retired-only folds)",
        "best": best,
        "folds": [{"held": int(f.held.size), "pool": int(f.pool.size), "cut": float(f.cut)} for f in folds],
        "candidates": {n: {**{k: finite_or_none(v) for k, v in m.items()},
                           "failed_ads": made[n].failed if n in made else None} for n, m in table.items()},
        "backend": backend.fingerprint(),
    }
    return PromptFile(name=win["name"], instruction=win["instruction"], shots=win["shots"], search=search)
