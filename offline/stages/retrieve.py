"""Nearest warm ads for a cold ad: exact cosine search with faiss (IndexFlatIP).

Rows are L2-normalised on the way in, so inner product = cosine similarity in [-1, 1].
An ad is never its own neighbour: pass each query's ad id in ``query_ids`` and the warm ad
with that id is skipped for that query; ``exclude`` removes ids from every query's results.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from offline.stages.embed import l2_normalise


class NeighbourIndex:
    """Exact inner-product index over warm-ad embeddings emb float32 [W, d] with ids [W]."""

    def __init__(self, emb: np.ndarray, ids: Sequence[str]) -> None:
        import faiss

        emb = np.asarray(emb)
        if emb.ndim != 2:
            raise ValueError(f"emb must be 2-D [W, d], got shape {emb.shape}")
        if emb.shape[0] != len(ids):
            raise ValueError(f"emb has {emb.shape[0]} rows but {len(ids)} ids were given")
        if emb.shape[0] == 0:
            raise ValueError("cannot build a neighbour index without warm ads")
        if not np.all(np.isfinite(emb)):
            raise ValueError("emb has non-finite values")
        self.ids = [str(i) for i in ids]
        if len(set(self.ids)) != len(self.ids):
            raise ValueError("ids must be unique")
        self.pos = {a: i for i, a in enumerate(self.ids)}
        self.dim = int(emb.shape[1])
        self.emb = l2_normalise(emb)
        self._index = faiss.IndexFlatIP(self.dim)
        self._index.add(self.emb)

    def __len__(self) -> int:
        return len(self.ids)

    def search(self, q: np.ndarray, k: int, exclude: Sequence[str] | None = None,
               query_ids: Sequence[str | None] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """k nearest warm ads per query row: (idx int64 [Q, k'], sim float32 [Q, k']).

        q: [Q, d] (normalised here). idx indexes ``self.ids``; rows sorted by similarity desc.
        exclude: ids never returned. query_ids: the ad id of each query (None for none); a warm
        ad with that id is skipped for that query. k' = min(k, W - #excluded - (1 if any query
        id is in the index)), the same for every row, so every row is fully valid.
        """
        q = np.asarray(q)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"queries must be [Q, {self.dim}], got shape {q.shape}")
        if not np.all(np.isfinite(q)):
            raise ValueError("queries have non-finite values")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        Q = q.shape[0]
        if query_ids is not None and len(query_ids) != Q:
            raise ValueError(f"query_ids has {len(query_ids)} entries for {Q} queries")
        banned = {self.pos[e] for e in (exclude or ()) if e in self.pos}
        self_pos = np.full(Q, -1, dtype=np.int64)
        if query_ids is not None:
            for i, qid in enumerate(query_ids):
                if qid is not None and qid in self.pos:
                    self_pos[i] = self.pos[qid]
        k_eff = min(k, len(self.ids) - len(banned) - int((self_pos >= 0).any()))
        if k_eff < 1:
            raise ValueError("no warm ads left to return after exclusions")
        if Q == 0:
            return np.zeros((0, k_eff), np.int64), np.zeros((0, k_eff), np.float32)
        fetch = min(len(self.ids), k_eff + len(banned) + 1)
        sim, idx = self._index.search(l2_normalise(q), fetch)
        out_i = np.empty((Q, k_eff), dtype=np.int64)
        out_s = np.empty((Q, k_eff), dtype=np.float32)
        for r in range(Q):
            keep = [(j, s) for j, s in zip(idx[r], sim[r]) if j >= 0 and j not in banned and j != self_pos[r]]
            out_i[r] = [j for j, _ in keep[:k_eff]]
            out_s[r] = [s for _, s in keep[:k_eff]]
        return out_i, out_s

    def neighbours(self, q: np.ndarray, k: int, query_ids: Sequence[str | None] | None = None,
                   exclude: Sequence[str] | None = None) -> list[list[tuple[str, float]]]:
        """Like :meth:`search`, as lists of (ad_id, cosine similarity) per query."""
        idx, sim = self.search(q, k, exclude=exclude, query_ids=query_ids)
        return [[(self.ids[j], float(s)) for j, s in zip(ri, rs)] for ri, rs in zip(idx, sim)]
