"""``llmhyper evaluate``: the cold-start evaluation protocol (offline/evaluation) from the command line.

Offline code is imported only inside the handler.

Examples::

    llmhyper evaluate --dataset movielens-100k                       # 10 seeds, report in ./eval-report
    llmhyper evaluate --dataset path/to/layout-dir --seeds 3 --out r/
    llmhyper evaluate --generator gemini --model gemini-2.5-flash --shots 0,3,5 --captions on,off
    llmhyper evaluate --generator openai --base-url http://127.0.0.1:8000/v1 --model m --shots 5
"""

from __future__ import annotations

import argparse
import json
import sys

from llmhyper.cli.common import parse_kv_options
from llmhyper.cli.registry import command


def _bool_list(text: str) -> tuple[bool, ...]:
    vals = []
    for t in text.split(","):
        t = t.strip().lower()
        if t in ("on", "true", "1", "yes"):
            vals.append(True)
        elif t in ("off", "false", "0", "no"):
            vals.append(False)
        else:
            raise argparse.ArgumentTypeError(f"expected on/off values, got {t!r}")
    return tuple(vals)


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def configure(p: argparse.ArgumentParser) -> None:
    """Add the evaluate arguments to ``p``."""
    p.add_argument("--dataset", default="movielens-100k",
                   help="dataset layout directory, movielens-100k[:PATH] or synthetic[:SEED] (default movielens-100k)")
    p.add_argument("--seeds", type=int, default=10, help="random 80/20 user splits (default 10)")
    p.add_argument("--test-frac", type=float, default=0.2, help="held-out user share (default 0.2)")
    p.add_argument("-k", type=int, default=20, help="neighbours retrieved per cold ad (default 20)")
    p.add_argument("--methods", default=None,
                   help="comma-separated subset of lrwarm,lrcold,popularity,embedding,knn-raw,knn-raw+cal,default")
    p.add_argument("--generator", choices=("gemini", "openai"), default=None,
                   help="also evaluate LLM-HYPER variants over this backend")
    p.add_argument("--model", default=None, help="LLM model name")
    p.add_argument("--base-url", default=None, help="LLM endpoint (openai-compatible, or a Gemini REST proxy)")
    p.add_argument("--shots", type=_int_list, default=(0, 3, 5), help="LLM shots values (default 0,3,5)")
    p.add_argument("--captions", type=_bool_list, default=(True, False), help="caption settings (default on,off)")
    p.add_argument("--samples", type=int, default=None, help="LLM samples averaged per feature batch")
    p.add_argument("--prompt", default=None, metavar="FILE",
                   help="versioned prompt file from 'llmhyper optimize-prompt' (sets the LLM shots too)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=JSON",
                   help="extra generator option (repeatable), e.g. --option batch_size=8")
    p.add_argument("--default-option", action="append", default=[], metavar="KEY=JSON",
                   help="option of the default generator (repeatable), e.g. --default-option stack_frac=0.1"
                        " to score a variant of it through the same harness")
    p.add_argument("--latency-users", type=int, default=200,
                   help="held-out users sent as gRPC Rank calls per method (0 = skip)")
    p.add_argument("--work-dir", default=".llmhyper-work", help="caches and the evaluation store")
    p.add_argument("--out", default="eval-report", help="report directory (results.md, results.json, *.png)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args: argparse.Namespace) -> int:
    """Handler: run the evaluation and write the report; exit 0, 2 on bad input, 1 on failure."""
    from llmhyper.evaluation import StoreServing
    from offline.evaluation.protocol import BASE_METHODS, EvalConfig, evaluate

    def bad(msg: str) -> int:
        print(f"llmhyper evaluate: error: {msg}", file=sys.stderr)
        return 2

    opts = parse_kv_options(args.option, "--option")  # CLIError: exit 2 naming the flag
    default_opts = parse_kv_options(args.default_option, "--default-option")
    if args.model:
        opts["model"] = args.model
    if args.base_url:
        opts["base_url"] = args.base_url
    if args.samples is not None:
        opts["n_samples"] = args.samples
    shots = tuple(args.shots)
    if args.prompt:
        from offline.llm.prompt_file import load_prompt_file

        try:
            shots = (load_prompt_file(args.prompt).shots,)
        except ValueError as e:
            return bad(str(e))
        opts["prompt_file"] = args.prompt
    methods = BASE_METHODS if args.methods is None else tuple(m.strip() for m in args.methods.split(",") if m.strip())
    try:
        cfg = EvalConfig(dataset=args.dataset, seeds=args.seeds, test_frac=args.test_frac, k=args.k,
                         methods=methods, generator=args.generator, generator_options=opts,
                         llm_shots=shots, llm_captions=tuple(args.captions),
                         default_options=default_opts,
                         latency_users=args.latency_users, work_dir=args.work_dir, out_dir=args.out,
                         quiet=args.quiet)
        if args.generator == "openai" and not args.base_url:
            return bad("--generator openai needs --base-url")
    except ValueError as e:
        return bad(str(e))
    try:
        result = evaluate(cfg, serving=StoreServing(cfg.work_dir))
    except FileNotFoundError as e:
        return bad(f"dataset not found: {e}")
    except ValueError as e:
        return bad(str(e))
    except Exception as e:  # a stage failed (LLM quota, store I/O): not the caller's input
        print(f"llmhyper evaluate: failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"summary": {n: {k: v["mean"] for k, v in m.items() if isinstance(v, dict)}
                                      for n, m in result["summary"].items()},
                          "gap_closed": result["gap_closed"], "files": result["files"]}, indent=1, default=str))
    else:
        print(open(result["files"][0]).read())
        print("wrote " + ", ".join(result["files"]))
    return 0


HELP = "evaluate cold-start methods on a dataset (docs/EVALUATION.md protocol)"
command("evaluate", HELP, configure=configure)(run)
