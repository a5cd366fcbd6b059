"""``llmhyper optimize-prompt``: choose the LLM weight prompt on retired ads only (paper C.3).

Writes a versioned prompt file that ``llmhyper build --prompt FILE`` and ``llmhyper evaluate
--prompt FILE`` accept. Offline code is imported inside the handler only.

Example::

    llmhyper optimize-prompt --dataset movielens-100k --generator gemini --model gemini-2.5-flash \\
        --variants base,anchor,sparse --shots 0,3 --max-held 20 --out prompts/ml-v1.json
"""

from __future__ import annotations

import argparse
import json

from llmhyper.cli.common import parse_kv_options
from llmhyper.cli.registry import CLIError, RuntimeFailure, command


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="synthetic", help="dataset layout directory, movielens-100k[:PATH] or "
                                                           "synthetic[:SEED] (default synthetic)")
    p.add_argument("--generator", choices=("gemini", "openai"), required=True, help="LLM backend")
    p.add_argument("--model", default=None, help="LLM model name")
    p.add_argument("--base-url", default=None, help="LLM endpoint (OpenAI-compatible server, or a Gemini proxy)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=JSON",
                   help="generator/backend option (repeatable), e.g. --option n_samples=1")
    p.add_argument("--variants", default=None,
                   help="comma-separated instruction variants (default: all of offline/llm/prompt_file.py)")
    p.add_argument("--shots", default="0,3,5", help="comma-separated shot counts to try (default 0,3,5)")
    p.add_argument("--max-held", type=int, default=30,
                   help="held-out retired ads scored per fold (bounds the LLM cost; default 30)")
    p.add_argument("--k", type=int, default=20, help="reference ads retrieved per ad (default 20)")
    p.add_argument("--embedder", default="minilm", help="'minilm' or 'openclip:MODEL[:PRETRAINED]'")
    p.add_argument("--work-dir", default=".llmhyper-work", help="caches (embeddings, warm weights, LLM answers)")
    p.add_argument("--out", required=True, help="prompt file to write (JSON)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.add_argument("--json", action="store_true", help="print the search table as JSON")


@command("optimize-prompt", "search prompt variants x shots on retired ads only; write a versioned prompt file",
         _args)
def _optimize(args: argparse.Namespace) -> int:
    from pathlib import Path

    from offline.errors import InputError
    from offline.generators.prompt_search import candidates, optimize_prompt
    from offline.llm import BACKEND_KEYS, make_backend
    from offline.pipeline import BuildConfig, BuildError, load_source, prepare

    opts = parse_kv_options(args.option, "--option")
    if args.model:
        opts["model"] = args.model
    if args.base_url:
        opts["base_url"] = args.base_url
    try:
        shots = tuple(int(s) for s in args.shots.split(",") if s.strip())
    except ValueError:
        raise CLIError(f"--shots must be comma-separated integers, got {args.shots!r}") from None
    variants = [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants else None
    if args.max_held is not None and args.max_held < 2:
        raise CLIError(f"--max-held must be >= 2, got {args.max_held}")
    try:
        candidates(variants, shots)
        backend = make_backend(args.generator, {k: opts.pop(k) for k in list(opts) if k in BACKEND_KEYS})
        cfg = BuildConfig(dataset=args.dataset, k=args.k, embedder=args.embedder, work_dir=args.work_dir)
    except ValueError as e:
        raise CLIError(str(e)) from None
    opts.setdefault("cache_dir", str(Path(args.work_dir) / "llm-cache"))
    try:
        prep = prepare(load_source(cfg.dataset), cfg, quiet=args.quiet)
        pf = optimize_prompt(prep, backend, opts, variants=variants, shots=shots, max_held=args.max_held,
                             quiet=args.quiet)
    except InputError as e:
        raise CLIError(f"bad input: {e}") from None
    except TypeError as e:  # an unknown generator option
        raise CLIError(f"bad --option: {e}") from None
    except (BuildError, ValueError) as e:
        raise RuntimeFailure(f"optimize-prompt failed: {e}") from None
    out = pf.save(args.out)
    if args.json:
        print(json.dumps({"file": str(out), **pf.to_dict()}, indent=1))
    else:
        rows = sorted(pf.search["candidates"].items(), key=lambda kv: -(kv[1]["objective"] or float("-inf")))
        for name, m in rows:
            print(f"  {name:<22} objective {m['objective']:.4f}  (failed ads: {m['failed_ads']})")
        print(f"best: {pf.search['best']} -> wrote {out} (version {pf.version})")
    return 0
