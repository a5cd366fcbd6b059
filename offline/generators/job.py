"""Run one generator over every cold ad: bounded concurrency, a progress bar, clean stop."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import TYPE_CHECKING, Sequence

from offline.types import Generated, Neighbour, WeightGenerator

if TYPE_CHECKING:  # pragma: no cover
    from offline.data.dataset import Ad

__all__ = ["generate_all", "partition_failed"]



def generate_all(
    generator: WeightGenerator,
    ads: Sequence["Ad"],
    neighbours_per_ad: Sequence[list[Neighbour]],
    features: list[tuple[str, str]],
    progress: bool = True,
    *,
    max_workers: int | None = None,
) -> list[Generated]:
    """Generate weights for every ad (result i <-> ads[i]) with a progress bar on stderr and at
    most ``max_workers`` ads in flight (default: the generator's ``max_concurrency``, else 1).

    Resumable: with an ``LLMGenerator`` cache_dir, re-running after a kill reuses every cached
    answer. QuotaExhausted (or an auth error, or Ctrl-C) stops the job: pending ads are cancelled,
    running ones stop at their next call, everything validated so far is already on disk, and
    the exception is re-raised.
    """
    if len(ads) != len(neighbours_per_ad):
        raise ValueError(f"{len(ads)} ads but {len(neighbours_per_ad)} neighbour lists")
    from tqdm import tqdm

    workers = int(max_workers or getattr(generator, "max_concurrency", 1) or 1)
    results: list[Generated | None] = [None] * len(ads)
    n_failed = 0
    with tqdm(total=len(ads), file=sys.stderr, disable=not progress, desc=f"generate[{generator.name}]",
              unit="ad", dynamic_ncols=True) as bar:
        ex = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gen")
        futs = {ex.submit(generator.generate, ad, list(nbs), features): i
                for i, (ad, nbs) in enumerate(zip(ads, neighbours_per_ad))}
        try:
            for fut in as_completed(futs):
                g = fut.result()
                results[futs[fut]] = g
                n_failed += g.failed is not None
                bar.update(1)
                if n_failed:
                    bar.set_postfix(failed=n_failed)
        except BaseException as e:
            if hasattr(generator, "stop"):
                generator.stop(e if isinstance(e, Exception) else RuntimeError(f"job interrupted: {e!r}"))
            for f in futs:
                f.cancel()
            ex.shutdown(wait=True, cancel_futures=True)
            raise
        ex.shutdown(wait=True)
    return results  # type: ignore[return-value]  # every slot is filled when no exception


def partition_failed(results: Sequence[Generated]) -> tuple[list[int], list[int]]:
    """(indices with usable weights, indices to exclude): an ad is excluded when it failed
    without a fallback (theta not finite)."""
    keep = [i for i, g in enumerate(results) if g.usable]
    drop = [i for i, g in enumerate(results) if not g.usable]
    return keep, drop
