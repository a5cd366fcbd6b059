"""``llmhyper simulate-launch``: greedy versus Thompson ranking of cold ads on the synthetic world.

The world's true click model is known, so clicks are drawn from it; both policies start from
the default generator's build output and its spread and refit after every step with the
refresh code (protocol: offline/warm/launch.py). Offline code is imported inside the handler.

Example::

    llmhyper simulate-launch --seeds 3 --steps 30 --users-per-step 100 --top-k 5 --out reports/launch
"""
from __future__ import annotations

import argparse

from llmhyper.cli.common import add_json, print_json
from llmhyper.cli.registry import CLIError, command


def _sample_scale(v: str) -> float | None:
    """``auto`` (None: chosen on retired launches) or a number (checked by LaunchConfig)."""
    if v.strip().lower() == "auto":
        return None
    try:
        return float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number >= 0 or 'auto', got {v!r}") from None


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seeds", type=int, default=3, help="independent launches (default 3)")
    p.add_argument("--steps", type=int, default=30, help="refresh rounds (default 30)")
    p.add_argument("--users-per-step", type=int, default=100, help="requests per step (default 100)")
    p.add_argument("--top-k", type=int, default=5, help="ads shown per request (default 5)")
    p.add_argument("--world-seed", type=int, default=0, help="the synthetic world (default 0, as `make run`)")
    p.add_argument("--n-ads", type=int, default=200, help="ads in that world, retired and cold (default 200, at least 40)")
    p.add_argument("--n-users", type=int, default=2000,
                   help="users in that world (default 2000); fewer users are fewer distinct contexts")
    p.add_argument("--prior-scale", type=float, default=None,
                   help="prior std multiplier of the user weights (default: chosen on retired ads)")
    p.add_argument("--intercept-scale", type=float, default=None, help="that of the intercept (default: --prior-scale)")
    p.add_argument("--laplace", choices=("diag", "full"), default="diag", help="posterior spread after a refresh")
    p.add_argument("--sample-scale", type=_sample_scale, default=None, metavar="S|auto",
                   help="multiplier on the std Thompson samples with (0 = greedy; default auto: the scale "
                        "with the lowest regret in the same launch played on retired ads)")
    p.add_argument("--spread", choices=("generator", "calibrated"), default="generator",
                   help="prior std: the generator's spread x the scales (default), or that x the z-score std "
                        "measured on retired ads")
    p.add_argument("--work-dir", default=".llmhyper-work", help="caches (embeddings, warm weights)")
    p.add_argument("--out", default="launch-report", help="report directory (launch.md, launch.json, launch.png)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    add_json(p)


def run(args: argparse.Namespace) -> int:
    from offline.warm.launch import LaunchConfig, run_launch
    from offline.warm.launch_report import write_launch_reports

    cfg = LaunchConfig(seeds=args.seeds, steps=args.steps, users_per_step=args.users_per_step, top_k=args.top_k,
                       world_seed=args.world_seed, n_ads=args.n_ads, n_users=args.n_users,
                       prior_scale=args.prior_scale,
                       intercept_scale=args.intercept_scale, laplace=args.laplace, sample_scale=args.sample_scale,
                       spread=args.spread, work_dir=args.work_dir, quiet=args.quiet)
    try:
        cfg.validate()
    except ValueError as e:
        raise CLIError(f"--{e}") from None
    from offline.pipeline import BuildError

    try:
        result = run_launch(cfg)
    except BuildError as e:  # e.g. a world too small to split into retired and cold ads
        raise CLIError(f"cannot build this world: {e}") from None
    files = write_launch_reports(result, args.out)
    if args.json:
        print_json({"summary": result["summary"], "checks": result["checks"], "files": files})
    else:
        print(open(files[0]).read())
        print("wrote " + ", ".join(files))
    return 0


HELP = "simulate a launch on the synthetic world: greedy vs Thompson, cumulative clicks and regret"
command("simulate-launch", HELP, configure=configure)(run)
