"""``llmhyper replay``: walk a dataset's active period and compare warm-up policies.

Every step refreshes a real LMDB store per policy through :func:`llmhyper.cli.refresh_cmd.refresh_store`
(the code behind ``llmhyper refresh``) and scores the next step from the store's zero-copy view
with the scoring kernels (protocol: offline/warm/replay.py). Offline code is imported inside
the handler.

Examples::

    llmhyper replay --dataset movielens-100k --seeds 3 --out reports/replay/movielens
    llmhyper replay --dataset synthetic --seeds 3 --min-clicks 10 --out reports/replay/synthetic
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

from llmhyper.cli.common import add_json, print_json
from llmhyper.cli.registry import CLIError, RuntimeFailure, command


class StoreReplayOps:
    """The replay's store side: one WeightStore per (policy, seed) under ``root``; each refresh
    publishes a version and prunes all but the newest two."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.stores: dict[str, Any] = {}
        self.loaded: dict[str, Any] = {}

    def start(self, key, ad_ids, theta, features, records, manifest, users):
        from llmhyper.store.weight_store import WeightStore

        old = self.stores.pop(key, None)
        if old is not None:
            old.close()
        path = self.root / key
        if path.exists():
            shutil.rmtree(path)
        store = WeightStore(path, map_size=16 << 20, durable=False)
        self.stores[key] = store
        v = store.publish(ad_ids, theta, [list(f) for f in features], manifest=manifest, ad_records=records,
                          users=(users[0], users[1], [list(f) for f in features]))
        return store.view(v).theta

    def refresh(self, key, policy, min_clicks, logs, X, until):
        from llmhyper.cli.refresh_cmd import refresh_store

        store = self.stores[key]
        version, _ = refresh_store(store, logs, X, policy=policy, min_clicks=min_clicks, until=until)
        store.prune(2)
        return store.view(version).theta

    def close(self) -> None:
        for s in self.stores.values():
            s.close()
        self.stores.clear()


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="movielens-100k",
                   help="dataset layout directory, movielens-100k[:PATH] or synthetic[:SEED] (default movielens-100k)")
    p.add_argument("--seeds", type=int, default=3, help="random 80/20 user splits (default 3)")
    p.add_argument("--step-days", type=float, default=1.0, help="step length in days (default 1: daily)")
    p.add_argument("--min-clicks", type=int, default=10, help="the hard switch's click threshold (default 10)")
    p.add_argument("--prior-scale", type=float, default=None,
                   help="global prior std (default: chosen on retired ads by replaying their early days)")
    p.add_argument("--intercept-scale", type=float, default=None,
                   help="prior std of the intercept (default: --prior-scale, or chosen with it on retired ads)")
    p.add_argument("--laplace", choices=("diag", "full"), default="diag")
    p.add_argument("--rolling", type=int, default=7, help="steps pooled in the rolling AUC (default 7)")
    p.add_argument("--band", type=float, default=0.02, help="AUC distance to the ceiling ending the cold start")
    p.add_argument("--delay-weighting", choices=("auto", "on", "off"), default="auto",
                   help="implicit negatives: weigh each non-click by the retired ads' click-delay distribution "
                        "(on), count it fully (off), or let the retired-ad replay decide (auto, default)")
    p.add_argument("--min-pos", type=int, default=20,
                   help="rolling windows with fewer clicks among the scored pairs are not scored (default 20)")
    p.add_argument("--resamples", type=int, default=1000,
                   help="bootstrap draws of the paired AUC intervals (users resampled; default 1000)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    p.add_argument("--work-dir", default=".llmhyper-work", help="caches, replay stores, finished seeds (resume)")
    p.add_argument("--out", default="replay-report", help="report directory (replay.md, replay.json, replay.png)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    add_json(p)


def run(args: argparse.Namespace) -> int:
    from offline.warm.replay import ReplayConfig, run_replay
    from offline.warm.report import write_replay_reports

    cfg = ReplayConfig(dataset=args.dataset, seeds=args.seeds, step_days=args.step_days, min_clicks=args.min_clicks,
                       prior_scale=args.prior_scale, intercept_scale=args.intercept_scale, laplace=args.laplace, rolling=args.rolling, band=args.band,
                       max_steps=args.max_steps, delay_weighting=args.delay_weighting, min_pos=args.min_pos,
                       resamples=args.resamples,
                       work_dir=args.work_dir, out_dir=args.out, quiet=args.quiet)
    try:
        cfg.validate()
    except ValueError as e:
        raise CLIError(str(e)) from None
    ops = StoreReplayOps(Path(args.work_dir) / "replay-stores")
    try:
        result = run_replay(cfg, ops)
    except FileNotFoundError as e:
        raise CLIError(f"dataset not found: {e}") from None
    except (CLIError, RuntimeFailure):
        raise
    finally:
        ops.close()
    files = write_replay_reports(result, args.out)
    if args.json:
        print_json({"summary": result["summary"], "checks": result["checks"], "files": files})
    else:
        print(open(files[0]).read())
        print("wrote " + ", ".join(files))
    return 0


HELP = "replay a dataset's active period: frozen vs hard switch vs prior-updated vs ceiling"
command("replay", HELP, configure=configure)(run)
