"""``llmhyper build`` (offline pipeline -> store) and ``llmhyper demo`` (synthetic world, served).

Both compose offline code with a publish into the store, so they import ``offline`` inside
their handlers only; ``llmhyper serve`` never pays for torch, faiss or LLM clients.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from llmhyper.cli.common import GENERATOR_HELP, load_rules_arg
from llmhyper.cli.registry import CLIError, RuntimeFailure, command


# ---------------------------------------------------------------------- build
def _build_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="JSON build config (keys of offline.pipeline.BuildConfig)")
    p.add_argument("--dataset", default=None,
                   help="dataset directory in the documented layout, 'synthetic[:SEED]' or 'movielens-100k[:PATH]' "
                        "(overrides the config)")
    p.add_argument("--generator", default=None,
                   help=f"weight generator: {GENERATOR_HELP} (default: the config's, else knn-content)")
    p.add_argument("--model", default=None, help="LLM model name (gemini / openai generators)")
    p.add_argument("--base-url", default=None, help="LLM endpoint base URL (OpenAI-compatible server, or a Gemini proxy)")
    p.add_argument("--judge", choices=("off", "flag", "regenerate"), default=None,
                   help="LLM-as-judge review of the written weights (LLM generators; default off)")
    p.add_argument("--prompt", default=None, metavar="FILE",
                   help="versioned prompt file from 'llmhyper optimize-prompt' (LLM generators)")
    p.add_argument("--embedder", default=None, help="'minilm' or 'openclip:MODEL[:PRETRAINED_TAG_OR_CHECKPOINT]'")
    p.add_argument("--k", type=int, default=None, help="reference ads per cold ad")
    p.add_argument("--limit", type=int, default=None, dest="limit_cold",
                   help="generate only the first N cold ads (to try an LLM configuration cheaply)")
    p.add_argument("--work-dir", default=None, help="cache directory (warm weights, embeddings, LLM responses)")
    p.add_argument("--store", default=None, help="LMDB weight store to publish into (created if missing)")
    p.add_argument("--out", default=None, help="also write the weights file (.npz) and user table (<out>.users.npz)")
    p.add_argument("--no-publish", action="store_true", help="build and write --out only; publish nothing")
    p.add_argument("--rules", default=None,
                   help="content rules file stored with the published version (CSV or .json of ad_id, feature, "
                        "threshold); checked against the built ads before anything is published")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--json", action="store_true", help="print the run report as JSON")


def _config_from_args(args: argparse.Namespace):
    from offline.pipeline import BuildConfig

    try:
        cfg = BuildConfig.from_file(args.config) if args.config else BuildConfig()
        overrides: dict[str, Any] = {}
        for key in ("dataset", "generator", "embedder", "k", "limit_cold"):
            if getattr(args, key, None) is not None:
                overrides[key] = getattr(args, key)
        if getattr(args, "work_dir", None):
            overrides["work_dir"] = args.work_dir
        opts = dict(cfg.generator_options)
        if getattr(args, "model", None):
            opts["model"] = args.model
        if getattr(args, "base_url", None):
            opts["base_url"] = args.base_url
        _llm_flags(args, opts)
        merged = {**cfg.to_dict(), **overrides, "generator_options": opts}
        out = BuildConfig.from_dict(merged)
        from offline.generators.registry import spec

        if (opts.get("judge", "off") != "off" or opts.get("prompt_file")) and not spec(out.generator).uses_llm:
            raise ValueError(f"--judge / --prompt need an LLM generator (gemini, openai), not {out.generator!r}")
        return out
    except ValueError as e:
        raise CLIError(str(e)) from None


def _llm_flags(args: argparse.Namespace, opts: dict[str, Any]) -> None:
    """--judge and --prompt into the LLM generator's options (the prompt file is checked here: exit 2)."""
    if getattr(args, "judge", None):
        opts["judge"] = args.judge
    if getattr(args, "prompt", None):
        from offline.llm.prompt_file import load_prompt_file

        load_prompt_file(args.prompt)  # ValueError naming the file
        opts["prompt_file"] = str(Path(args.prompt).resolve())


def publish_result(result, store_path: str, rules_path: str | None = None) -> str:
    """Publish a BuildResult's weights, its user table and (optionally) the content rules of
    ``rules_path`` in one transaction; returns the new version id."""
    from llmhyper.store.weight_store import StoreError, WeightStore

    art = result.artifact
    rules = load_rules_arg(rules_path, art.ad_ids, [n for n, _ in art.features])
    store = WeightStore(store_path, readonly=False)
    try:
        try:
            art = result.artifact
            users = result.users
            version = store.publish(art.ad_ids, art.theta, art.features, manifest=art.manifest,
                                    ad_records=art.ad_records, users=(users.user_ids, users.X, users.features),
                                    rules=rules)
        except ValueError as e:
            raise CLIError(f"publish failed, nothing written: {e}") from None
        except StoreError as e:
            raise RuntimeFailure(f"publish failed (the previous version still serves): {e}") from None
    finally:
        store.close()
    return version


@command("build", "run the offline pipeline (train, embed, retrieve, generate, calibrate) and publish", _build_args)
def _build(args: argparse.Namespace) -> int:
    if not args.store and not args.no_publish:
        raise CLIError("give --store PATH to publish into, or --no-publish (with --out) to only build")
    if args.no_publish and not args.out:
        raise CLIError("--no-publish needs --out FILE, or the build result would be thrown away")
    if args.rules:
        if args.no_publish:
            raise CLIError("--rules are stored with a published version; with --no-publish, publish the --out "
                           "file later with `llmhyper publish --rules`")
        if not Path(args.rules).is_file():
            raise CLIError(f"--rules: file not found: {args.rules}")
        from llmhyper.store.rules_file import RulesFileError, read_rules_file

        try:  # a malformed file fails now, not after a long build
            read_rules_file(args.rules)
        except RulesFileError as e:
            raise CLIError(f"invalid rules file {args.rules}: {e}") from None
    cfg = _config_from_args(args)
    from offline.errors import InputError
    from offline.pipeline import BuildError, build

    try:
        result = build(cfg, quiet=args.quiet)
    except InputError as e:  # malformed dataset or missing path: the caller's input, exit 2
        raise CLIError(f"bad input, nothing published: {e}") from None
    except (BuildError, ValueError) as e:
        raise RuntimeFailure(f"build failed, nothing published: {e}") from None
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        result.artifact.save(out)
        result.users.save(out.with_suffix(".users.npz"))
        if (cfg.generator_options.get("judge") or "off") != "off":  # the judge's content rules, for publish --rules
            from offline.llm.judge import rules_from_records, write_rules_file

            write_rules_file(out.with_suffix(".rules.json"), rules_from_records(result.artifact.ad_records))
    version = None if args.no_publish else publish_result(result, args.store, args.rules)
    report = {"version": version, **result.report}
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        t = result.report["timings"]
        print(f"built {result.report['n_published']} ads ({result.report['n_failed']} failed) in "
              f"{t.get('total_s', 0):.1f}s" + (f"; published {version} to {args.store}" if version else ""))
        for ad_id, reason in result.report["failed"][:10]:
            print(f"  failed: {ad_id}: {reason}")
        for ad_id, flags in list(result.report["flagged"].items())[:10]:
            print(f"  flagged: {ad_id}: {', '.join(map(str, flags))}")
    return 0


# ---------------------------------------------------------------------- demo
def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", default=".demo", help="where the demo dataset, caches and store go (default .demo)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=50051, help="port to serve on (default 50051; 0 = any free port)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic world (default 0)")
    p.add_argument("--embedder", default="minilm", help="embedder spec (default: the bundled MiniLM)")
    p.add_argument("--users", type=int, default=3, help="users whose rankings are printed (default 3)")
    p.add_argument("--exit-after", type=float, default=None,
                   help="stop serving after this many seconds (default: serve until Ctrl-C)")
    p.add_argument("--no-serve", action="store_true", help="build and publish only")


def _wait_serving(target: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    from llmhyper.client import RankerClient

    deadline = time.monotonic() + timeout
    with RankerClient(target, timeout=2.0) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeFailure(f"the server exited with code {proc.returncode} before serving")
            try:
                if client.health() == "SERVING":
                    return
            except Exception:  # not listening yet
                pass
            time.sleep(0.2)
    raise RuntimeFailure(f"the server did not report SERVING within {timeout:.0f}s")


def _free_port(host: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@command("demo", "build a synthetic ads world, publish its cold-start weights and serve them", _demo_args)
def _demo(args: argparse.Namespace) -> int:
    import numpy as np

    from offline.data.adapters.synthetic import make_synthetic
    from offline.data.writer import save_dataset
    from offline.pipeline import BuildConfig, build

    root = Path(args.dir).resolve()
    data_dir = root / "dataset"
    world, truth = make_synthetic(seed=args.seed)
    save_dataset(world, data_dir)  # the demo reads its world back through the documented layout
    print(f"demo: synthetic world with {world.n_ads} ads, {world.n_users} users, "
          f"{len(world.features)} features written to {data_dir}", flush=True)
    cfg = BuildConfig(dataset=str(data_dir), embedder=args.embedder, work_dir=str(root / "work"),
                      generator="knn-content", seed=args.seed)
    result = build(cfg, quiet=False)
    version = publish_result(result, str(root / "store"))
    art = result.artifact

    # How good are the cold-start weights? Compare with the ground truth the world was drawn from.
    from offline.metrics import auc

    ds_ids = {a.ad_id: i for i, a in enumerate(world.ads)}
    rows = np.array([ds_ids[a] for a in art.ad_ids])
    X = world.X.astype(np.float64)
    true_p = 1.0 / (1.0 + np.exp(-(X @ truth[rows].T.astype(np.float64))))
    rng = np.random.default_rng(args.seed)
    clicks = (rng.random(true_p.shape) < true_p).astype(np.uint8)
    pred = X @ art.theta.T.astype(np.float64)
    print(f"demo: published {version}: {len(art.ad_ids)} cold ads; AUC of the generated weights on fresh clicks "
          f"drawn from the true model: {auc(clicks.ravel(), pred.ravel()):.3f} "
          f"(true model: {auc(clicks.ravel(), (X @ truth[rows].T).ravel()):.3f})", flush=True)
    if args.no_serve:
        return 0

    port = args.port or _free_port(args.host)
    target = f"{args.host}:{port}"
    cmd = [sys.executable, "-m", "llmhyper", "serve", "--store", str(root / "store"), "--host", args.host,
           "--port", str(port)]
    proc = subprocess.Popen(cmd)
    try:
        _wait_serving(target, proc)
        from llmhyper.client import RankerClient

        with RankerClient(target) as client:
            info = client.model_info()
            print(f"\ndemo: serving {info.version} on {target}: {info.n_ads} ads, {len(info.features)} features")
            for uid in world.user_ids[: args.users]:
                res = client.rank(uid, top_k=5)
                print(f"\n  top 5 for user {uid} (version {res.version}):")
                for a in res.ads:
                    title = world.ads[ds_ids[a.ad_id]].title
                    print(f"    {a.ad_id:>8}  ctr={a.ctr:.4f}  {title}")
        print(f"\ndemo: try  .venv/bin/llmhyper rank --target {target} --user {world.user_ids[0]} --top-k 5"
              f"\n      or   .venv/bin/llmhyper explain --target {target} --user {world.user_ids[0]} "
              f"--ad {art.ad_ids[0]}\n(Ctrl-C stops the server)", flush=True)
        if args.exit_after is not None:
            try:
                proc.wait(timeout=args.exit_after)
            except subprocess.TimeoutExpired:
                pass
        else:
            proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
    return 0 if proc.returncode in (0, -signal.SIGTERM, None) else 1
