"""``llmhyper score``: batch-score a user list into a Parquet/CSV file (resumable, optionally on Dask)."""
from __future__ import annotations

import argparse
from pathlib import Path

from llmhyper.cli.common import add_client, add_json, make_client, print_json
from llmhyper.cli.registry import CLIError, RuntimeFailure, command


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="user list: .parquet, .csv or .jsonl with a user_id column or feature columns")
    p.add_argument("--out", required=True, help="output file (.parquet, or .csv); parts and manifest go to OUT.parts/")
    src = p.add_argument_group("where to score (one of)")
    src.add_argument("--store", default=None, help="score locally from this LMDB weight store (memory map)")
    add_client(p)  # --target HOST:PORT and its TLS/token flags: score through RankBatch
    p.set_defaults(target=None)
    d = p.add_argument_group("Dask (with --store)")
    d.add_argument("--scheduler", default=None, help="score the parts on a Dask cluster (tcp://HOST:PORT)")
    d.add_argument("--workers", type=int, default=None, help="start a local Dask cluster of N processes (1 thread each)")
    d.add_argument("--shared-fs", action="store_true",
                   help="with --scheduler: the workers see the input, the store and --out at the same paths, "
                        "so each reads and writes its own Parquet partitions (always so with --workers)")
    p.add_argument("--top-k", type=int, default=10, help="ads per user (default 10)")
    p.add_argument("--allow", default=None, help="only these ad ids: 'a,b,c' or @FILE (one per line)")
    p.add_argument("--deny", default=None, help="never these ad ids: 'a,b,c' or @FILE (one per line)")
    p.add_argument("--version", default=None, help="weight version (default: current when the job starts; kept on resume)")
    p.add_argument("--format", choices=("parquet", "csv"), default=None,
                   help="output format (default: csv when --out ends in .csv, else parquet)")
    p.add_argument("--wide", action="store_true", help="one row per user (ad_id_r, ctr_r, logit_r) instead of one per rank")
    p.add_argument("--chunk-size", type=int, default=100_000, help="users per part; bounds memory (default 100000)")
    p.add_argument("--on-unknown", choices=("error", "skip"), default="error",
                   help="unknown user ids: stop with an error (default) or skip them into the rejects file")
    p.add_argument("--rejects", default=None, help="rejects file for --on-unknown skip (default OUT.rejects.csv)")
    p.add_argument("--concurrency", type=int, default=4, help="RankBatch calls in flight with --target (default 4)")
    p.add_argument("--batch-size", type=int, default=1024, help="users per RankBatch call with --target (default 1024)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_json(p)


def _ids(text: str | None, flag: str) -> list[str]:
    if not text:
        return []
    if text.startswith("@"):
        path = Path(text[1:])
        try:
            raw = path.read_text()
        except OSError as e:
            raise CLIError(f"{flag}: cannot read {path}: {e}") from None
        return [s.strip() for line in raw.splitlines() for s in line.split(",") if s.strip()]
    return [s.strip() for s in text.split(",") if s.strip()]


@command("score", "batch-score a user list (Parquet/CSV/JSONL) into Parquet or CSV; resumable", _args)
def _score(args: argparse.Namespace) -> int:
    from llmhyper.batch import BatchInputError, BatchRuntimeError
    from llmhyper.batch.runner import Job, run_job

    if bool(args.store) == bool(args.target):
        raise CLIError("give exactly one of --store PATH (local) or --target HOST:PORT (a server fleet)")
    if (args.scheduler or args.workers) and not args.store:
        raise CLIError("--scheduler / --workers score from the weights of a local --store")
    if args.scheduler and args.workers:
        raise CLIError("give --scheduler or --workers, not both")
    if args.shared_fs and not args.scheduler:
        raise CLIError("--shared-fs goes with --scheduler (--workers always shares this machine's files)")
    if args.workers is not None and args.workers < 1:
        raise CLIError(f"--workers must be >= 1, got {args.workers}")
    if args.store and not Path(args.store).exists():
        raise CLIError(f"store not found: {args.store}")
    fmt = args.format or ("csv" if args.out.lower().endswith(".csv") else "parquet")
    job = Job(input=args.input, out=args.out, store=args.store, top_k=args.top_k,
              allow=tuple(_ids(args.allow, "--allow")), deny=tuple(_ids(args.deny, "--deny")),
              version=args.version, fmt=fmt, wide=args.wide, chunk_size=args.chunk_size,
              on_unknown=args.on_unknown, rejects=args.rejects, progress=not args.no_progress,
              concurrency=max(1, args.concurrency), batch_size=max(1, args.batch_size),
              dask_shared_fs=bool(args.workers) or args.shared_fs)
    if args.target:
        job.target, job.target_name = (lambda: make_client(args)), args.target
    cluster = None
    try:
        if args.scheduler or args.workers:
            from llmhyper.batch.dask_run import local_cluster

            if args.scheduler:
                from distributed import Client

                try:
                    job.dask_client = Client(args.scheduler, timeout=30)
                except OSError as e:
                    raise RuntimeFailure(f"cannot reach the Dask scheduler {args.scheduler}: {e}") from None
            else:
                cluster, job.dask_client = local_cluster(args.workers)
        summary = run_job(job)
    except BatchInputError as e:
        raise CLIError(str(e)) from None
    except BatchRuntimeError as e:
        raise RuntimeFailure(str(e)) from None
    finally:
        if job.dask_client is not None:
            job.dask_client.close()
        if cluster is not None:
            cluster.close()
    result = {"out": args.out, "format": fmt, "version": summary["version"], "parts": summary.get("n_parts"),
              "users": summary.get("users_out"), "rejected": summary.get("rejects", 0)}
    if args.json:
        print_json(result)
    else:
        print(f"wrote {args.out}: {result['users']} users, version {result['version']}, "
              f"{result['parts']} parts, {result['rejected']} rejected")
    return 0
