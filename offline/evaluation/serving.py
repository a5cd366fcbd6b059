"""Where the evaluation's weights are served from, injected so that offline code never imports
the serving half (``llmhyper``).

The protocol publishes every (method, seed) weight matrix through a :class:`ServingPath` and
scores the matrix it gets back. :class:`InMemoryServing` hands back the float32 matrix itself;
``llmhyper.evaluation.StoreServing`` publishes into a real LMDB store, scores the store's
zero-copy view and measures Rank latency through a real gRPC server. Both give the same numbers.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

import numpy as np

__all__ = ["ServingPath", "InMemoryServing"]


class ServingPath(Protocol):
    """The serving side of an evaluation run."""

    @property
    def location(self) -> str | None:
        """Where the published versions can be inspected (a store path), or None."""
        ...

    def open(self, user_ids: Sequence[str], X: np.ndarray, features: Sequence[str]) -> None:
        """Start a run over these users (X f32[N, F]) and features."""
        ...

    def publish(self, label: str, seed: int, ad_ids: Sequence[str], theta: np.ndarray) -> tuple[Any, np.ndarray]:
        """Publish theta f32[C, F] for the ads; returns (version handle, the served f32[C, F] matrix)."""
        ...

    def latency(self, versions: dict[str, Any], user_ids: Sequence[str]) -> dict[str, dict[str, float]]:
        """Per label, Rank latency (ms: mean, p50, p99, n) of its version for these users; {} if not measured."""
        ...

    def close(self) -> None:
        """Release what ``open`` acquired."""
        ...


class InMemoryServing:
    """Serves the published matrix itself (read-only float32 copy); measures no latency."""

    @property
    def location(self) -> str | None:
        return None

    def open(self, user_ids: Sequence[str], X: np.ndarray, features: Sequence[str]) -> None:
        self._n = 0

    def publish(self, label: str, seed: int, ad_ids: Sequence[str], theta: np.ndarray) -> tuple[Any, np.ndarray]:
        view = np.array(theta, dtype=np.float32, order="C")
        view.flags.writeable = False
        self._n += 1
        return f"{label}@{seed}", view

    def latency(self, versions: dict[str, Any], user_ids: Sequence[str]) -> dict[str, dict[str, float]]:
        return {}

    def close(self) -> None:
        pass
