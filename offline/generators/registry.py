"""The one list of weight generators: config name -> spec (class, calibration default, LLM or not).

The CLI (``--generator`` choices), the pipeline, ``evaluate`` and ``robustness`` all read this
table, so a generator's config name, its ``name`` attribute (the store's and the report's label)
and its class are declared together here. ``knn`` is kept as an alias of ``knn-content``, the
name it had before the two kNN generators got distinct labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from offline.types import WeightGenerator

__all__ = ["GeneratorSpec", "GENERATORS", "ALIASES", "DEFAULT_GENERATOR", "choices", "canonical", "spec",
           "make_generator"]


@dataclass(frozen=True)
class GeneratorSpec:
    """One generator. ``calibration`` is its measured default (normalize, shift) (paper eq. 2)."""

    name: str
    summary: str
    uses_llm: bool
    calibration: tuple[bool, bool]
    factory: Callable[[dict[str, Any], "Context"], WeightGenerator]


@dataclass(frozen=True)
class Context:
    """Build-wide settings a generator may default from: cache folder, caption use, seed."""

    work_dir: str
    use_caption: bool
    seed: int


def _content_knn(opts: dict[str, Any], ctx: Context) -> WeightGenerator:
    from offline.generators.content_knn import ContentKNNGenerator

    return ContentKNNGenerator(**opts)


def _raw_knn(opts: dict[str, Any], ctx: Context) -> WeightGenerator:
    from offline.generators.knn import RawKNNGenerator

    return RawKNNGenerator(**opts)


def _llm(kind: str) -> Callable[[dict[str, Any], Context], WeightGenerator]:
    def factory(opts: dict[str, Any], ctx: Context) -> WeightGenerator:
        from offline.generators.llm import LLMGenerator
        from offline.llm import BACKEND_KEYS, make_backend

        backend = make_backend(kind, {k: opts.pop(k) for k in list(opts) if k in BACKEND_KEYS})
        opts.setdefault("cache_dir", str(Path(ctx.work_dir) / "llm-cache"))
        opts.setdefault("use_caption", ctx.use_caption)
        opts.setdefault("seed", ctx.seed)
        return LLMGenerator(backend, **opts)

    return factory


GENERATORS: dict[str, GeneratorSpec] = {
    s.name: s
    for s in (
        GeneratorSpec("knn-content", "neighbour weights with launch-time drift and a neighbour-CTR intercept "
                      "(the deterministic default)", False, (False, False), _content_knn),
        GeneratorSpec("knn-raw", "similarity-weighted mean of the neighbours' weights (baseline)", False,
                      (False, False), _raw_knn),
        GeneratorSpec("gemini", "LLM-written weights through the Gemini API (google-genai)", True, (True, True),
                      _llm("gemini")),
        GeneratorSpec("openai", "LLM-written weights through an OpenAI-compatible server", True, (True, True),
                      _llm("openai")),
    )
}
ALIASES = {"knn": "knn-content"}
DEFAULT_GENERATOR = "knn-content"


def choices() -> tuple[str, ...]:
    """Every accepted config name (canonical names, then aliases), for CLI choices."""
    return (*GENERATORS, *ALIASES)


def canonical(name: str) -> str:
    """The canonical config name for ``name``; ValueError naming the choices if unknown."""
    name = ALIASES.get(name, name)
    if name not in GENERATORS:
        raise ValueError(f"generator must be one of {list(choices())}, got {name!r}")
    return name


def spec(name: str) -> GeneratorSpec:
    """The spec of generator ``name`` (an alias is accepted)."""
    return GENERATORS[canonical(name)]


def make_generator(name: str, options: Mapping[str, Any] | None = None, *, work_dir: str = ".llmhyper-work",
                   use_caption: bool = True, seed: int = 0) -> WeightGenerator:
    """A new generator ``name`` built with ``options`` (constructor / backend keyword arguments)."""
    return spec(name).factory(dict(options or {}), Context(str(work_dir), bool(use_caption), int(seed)))
