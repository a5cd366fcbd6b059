"""One contract every generator in the registry (and every evaluation baseline) passes:

* shapes: one f32[F] theta per cold ad, aligned with the dataset's features;
* finiteness;
* determinism: the same inputs give bit-identical weights;
* only retired labels: shuffling who clicked each ACTIVE ad, and dropping a third of those
  clicks, changes nothing (the active ads' labels are what the evaluation scores).

The LLM generators run against the local fake Gemini / OpenAI server with a fresh answer cache
per run, so determinism is the backend's plus our parsing, not the cache's.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from offline import pipeline
from offline.data.adapters.synthetic import make_synthetic
from offline.generators import registry
from offline.generators.baselines import LRColdGenerator, PopularityGenerator
from tests.fakes.llm_server import FakeLLMServer

GENERATORS = [*registry.GENERATORS, "lr-cold", "popularity"]


def _shuffle_active_labels(ds, cold: np.ndarray, seed: int = 0):
    """The same dataset with every active ad's clicks given to random other users, a third dropped."""
    rng = np.random.default_rng(seed)
    is_cold = np.isin(ds.inter_ad, cold)
    keep = ~is_cold | (rng.random(ds.inter_ad.size) > 1 / 3)
    users = ds.inter_user.copy()
    users[is_cold] = rng.integers(0, ds.n_users, size=int(is_cold.sum()))
    # a shuffled pair may repeat an existing (user, ad): drop duplicates, keep the first
    pairs = np.stack([users, ds.inter_ad], axis=1)[keep]
    _, first = np.unique(pairs, axis=0, return_index=True)
    idx = np.flatnonzero(keep)[np.sort(first)]
    return dataclasses.replace(ds, inter_user=users[idx].astype(ds.inter_user.dtype), inter_ad=ds.inter_ad[idx],
                               inter_clicked=ds.inter_clicked[idx], inter_ts=ds.inter_ts[idx])


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    """(prepared original, prepared with shuffled active labels) on a small synthetic world."""
    work = str(tmp_path_factory.mktemp("contract-work"))
    ds, _ = make_synthetic(n_ads=80, n_users=400, n_features=8, seed=5)
    cfg = pipeline.BuildConfig(dataset="synthetic", work_dir=work, k=5)
    prep = pipeline.prepare(ds, cfg)
    shuffled = _shuffle_active_labels(ds, prep.split.cold)
    assert not np.array_equal(shuffled.labels(prep.split.cold), ds.labels(prep.split.cold))
    assert np.array_equal(shuffled.labels(prep.split.warm), ds.labels(prep.split.warm))
    # the perturbation is visible to anything that reads active labels: LRwarm's weights move
    from offline.stages.train import train_logreg

    X = np.ascontiguousarray(ds.X)
    lr_a = train_logreg(X, ds.labels(prep.split.cold), 1.0)
    lr_b = train_logreg(X, shuffled.labels(prep.split.cold), 1.0)
    assert np.abs(lr_a - lr_b).max() > 0.1
    return prep, pipeline.prepare(shuffled, cfg)


def _run(name: str, prep, tmp_path, llm: FakeLLMServer | None) -> np.ndarray:
    if name == "lr-cold":
        gen = LRColdGenerator()
    elif name == "popularity":
        gen = PopularityGenerator()
    else:
        opts: dict = {}
        if registry.spec(name).uses_llm:
            assert llm is not None
            url = llm.base_url if name == "gemini" else llm.openai_base_url
            opts = {"base_url": url, "model": "m", "api_key": "k", "n_samples": 1, "shots": 3, "max_retries": 1,
                    "backoff_base": 0.0, "backoff_cap": 0.0, "cache_dir": str(tmp_path)}
        gen = registry.make_generator(name, opts, work_dir=str(tmp_path))
    if hasattr(gen, "fit"):
        gen.fit(prep)
    out = pipeline.generate_cold(prep, gen)
    assert all(g.failed is None for g in out), [g.failed for g in out if g.failed]
    return np.stack([g.theta for g in out])


@pytest.mark.parametrize("name", GENERATORS)
def test_generator_contract(name, worlds, tmp_path):
    prep, shuffled = worlds
    F, C = len(prep.dataset.features), len(prep.split.cold)
    with FakeLLMServer() as llm:
        a = _run(name, prep, tmp_path / "a", llm)
        b = _run(name, prep, tmp_path / "b", llm)
        c = _run(name, shuffled, tmp_path / "c", llm)
    assert a.shape == (C, F) and a.dtype == np.float32
    assert np.all(np.isfinite(a))
    assert np.array_equal(a, b), "not deterministic"
    assert np.array_equal(a, c), "an active ad's labels changed the weights"
