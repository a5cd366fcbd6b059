"""``llmhyper robustness``: the counterfactual robustness study (offline/counterfactual.py).

Imports offline code inside the handler only, like build and evaluate.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from llmhyper.cli.common import GENERATOR_HELP
from llmhyper.cli.registry import CLIError, RuntimeFailure, command

KINDS = ("enhanced", "diminished", "neutralized")


def _kinds(text: str) -> tuple[str, ...]:
    out = tuple(t.strip() for t in text.split(",") if t.strip())
    bad = [t for t in out if t not in KINDS]
    if bad or not out:
        raise argparse.ArgumentTypeError(f"kinds must be a comma-separated subset of {','.join(KINDS)}, got {text!r}")
    return out


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="movielens-100k",
                   help="dataset layout directory, movielens-100k[:PATH] or synthetic[:SEED] (default movielens-100k)")
    p.add_argument("--generator", default="knn-content",
                   help=f"weight generator under test: {GENERATOR_HELP} (default knn-content)")
    p.add_argument("--rewriter", choices=("rules", "gemini", "openai"), default="rules",
                   help="who rewrites the ads: deterministic genre rules (default) or an LLM backend")
    p.add_argument("--model", default=None, help="LLM model name (LLM generator and/or rewriter)")
    p.add_argument("--base-url", default=None, help="LLM endpoint (openai-compatible, or a Gemini REST proxy)")
    p.add_argument("--kinds", type=_kinds, default=KINDS, help="rewrites to run (default enhanced,diminished,neutralized)")
    p.add_argument("--limit", type=int, default=None, help="only the first N cold ads with a target feature")
    p.add_argument("-k", type=int, default=20, help="neighbours retrieved per ad (default 20)")
    p.add_argument("--work-dir", default=".llmhyper-work", help="caches (warm weights, embeddings, LLM answers)")
    p.add_argument("--out", default="robustness-report", help="report directory (robustness.md, robustness.json)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


@command("robustness", "counterfactual robustness study: rewrite cold ads, check the weights move as meant", _args)
def _robustness(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise CLIError(f"--limit must be >= 1, got {args.limit}")
    if args.k < 1:
        raise CLIError(f"-k must be >= 1, got {args.k}")
    uses_llm = args.generator in ("gemini", "openai") or args.rewriter in ("gemini", "openai")  # LLM backends
    if (args.model or args.base_url) and not uses_llm:
        raise CLIError("--model / --base-url apply to an LLM generator or rewriter; neither is used here")
    for role, kind in (("--generator", args.generator), ("--rewriter", args.rewriter)):
        if kind == "openai" and not args.base_url:
            raise CLIError(f"{role} openai needs --base-url")
    from pathlib import Path

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {args.out} exists and is not a directory")
    from offline.evaluation import counterfactual as cf
    from offline import pipeline
    from offline.generators import registry
    from offline.llm import make_backend

    backend_opts: dict[str, Any] = {k: v for k, v in (("model", args.model), ("base_url", args.base_url)) if v}
    try:  # everything that can reject the arguments, before any training or caching
        cfg = pipeline.BuildConfig(dataset=args.dataset, generator=args.generator, k=args.k, work_dir=args.work_dir,
                                   generator_options=dict(backend_opts) if registry.spec(args.generator).uses_llm else {})
        gen = pipeline.make_generator(cfg)
        rewriter: Any = (cf.GenreRewriter() if args.rewriter == "rules" else
                         cf.LLMRewriter(make_backend(args.rewriter, backend_opts),
                                        cache_dir=Path(args.work_dir) / "llm-cache"))
        ds = pipeline.load_source(cfg.dataset)
    except FileNotFoundError as e:
        raise CLIError(f"dataset not found: {e}") from None
    except ValueError as e:
        raise CLIError(str(e)) from None
    try:
        prep = pipeline.prepare(ds, cfg, quiet=args.quiet)
        if hasattr(gen, "fit"):
            gen.fit(prep)
        if isinstance(rewriter, cf.GenreRewriter):
            rewriter.fit([ds.ads[i] for i in prep.split.warm])
        embedder = pipeline.make_embedder(cfg.embedder, cfg.work_dir, cfg.use_caption)
        result = cf.run_study(prep, gen, rewriter, embedder, k=args.k, kinds=args.kinds, limit=args.limit,
                              progress=not args.quiet)
    except cf.StudyInputError as e:
        raise CLIError(str(e)) from None
    except Exception as e:  # a stage failed (LLM quota or auth, I/O, every case failed): not the caller's input
        raise RuntimeFailure(f"robustness study failed: {type(e).__name__}: {e}") from None
    files = cf.write_report(result, ds.name, args.out)
    if args.json:
        print(json.dumps({"summary": result["summary"], "n_ads": result["n_ads"],
                          "skipped": len(result["skipped"]), "files": files}, indent=1, default=str))
    else:
        print(Path(files[0]).read_text())
        print("wrote " + ", ".join(files))
    return 0
