"""``llmhyper loadtest``: drive a deployed Ranker server with open- or closed-loop load from
several processes and report latency percentiles, throughput and status codes."""
from __future__ import annotations

import argparse
import os
from typing import Any

from llmhyper.cli.common import add_client, add_json, make_client, parse_features, print_json, table
from llmhyper.cli.registry import CLIError, RuntimeFailure, command

_METHODS = {"rank": "Rank", "rankbatch": "RankBatch", "explain": "Explain"}


def _method(text: str) -> str:
    m = _METHODS.get(text.replace("-", "").replace("_", "").lower())
    if m is None:
        raise argparse.ArgumentTypeError(f"unknown method {text!r} (choose Rank, RankBatch or Explain)")
    return m


def _loadtest_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", type=_method, default="Rank", help="Rank (default), RankBatch or Explain")
    shape = p.add_argument_group("load shape (give --rate or --concurrency)")
    shape.add_argument("--rate", type=float, default=None,
                       help="open loop: calls per second over all processes; latency counts from the scheduled send")
    shape.add_argument("--concurrency", type=int, default=None, help="closed loop: callers over all processes")
    shape.add_argument("--procs", type=int, default=1, help="load-generator processes (default 1)")
    shape.add_argument("--connections", type=int, default=1, help="gRPC connections per process (default 1)")
    shape.add_argument("--max-inflight", type=int, default=64,
                       help="open loop: most calls in flight per process (sender threads; default 64)")
    shape.add_argument("--duration", type=float, default=None, help="measured seconds (default 10 unless --calls)")
    shape.add_argument("--calls", type=int, default=None, help="measured calls (instead of --duration)")
    shape.add_argument("--warmup", type=float, default=0.0, help="seconds of unmeasured load first (default 0)")
    req = p.add_argument_group("requests")
    req.add_argument("--top-k", type=int, default=10, help="ads per user (default 10)")
    req.add_argument("--batch-size", type=int, default=None, help="users per RankBatch call (default 16)")
    req.add_argument("--ad", default=None, help="ad id for Explain (default: the served version's first ad)")
    who = req.add_mutually_exclusive_group(required=True)
    who.add_argument("--store", help="cycle through the users of this store's user table")
    who.add_argument("--users-file", help="cycle through user ids from a file (one per line, or a .csv user_id column)")
    who.add_argument("--features", help="send this one inline feature vector: 'v0,v1,..', 'name=v,..' or @file.json")
    req.add_argument("--send", choices=("id", "features"), default="id",
                     help="with --store: send user ids (default) or their feature rows inline")
    req.add_argument("--limit-users", type=int, default=None, help="use at most this many users")
    p.add_argument("--out", default=None, help="directory for report.json and latency.png")
    add_client(p)
    add_json(p)


def _spec(args: argparse.Namespace, ad: str | None = None) -> Any:
    from pydantic import ValidationError

    from llmhyper.loadtest.spec import LoadSpec, option_error

    fields = {
        "target": args.target, "method": args.method, "rate": args.rate, "concurrency": args.concurrency,
        "procs": args.procs, "connections": args.connections, "max_inflight": args.max_inflight,
        "duration": args.duration, "calls": args.calls, "warmup": args.warmup, "timeout": args.timeout,
        "top_k": args.top_k, "batch_size": args.batch_size, "ad": ad if ad is not None else args.ad,
        "send": args.send, "tls_ca": args.tls_ca, "tls_cert": args.tls_cert, "tls_key": args.tls_key,
        "tls_server_name": args.tls_server_name, "token": args.token or os.environ.get("LLMHYPER_TOKEN") or None,
    }
    try:
        return LoadSpec(**fields)
    except ValidationError as e:
        raise CLIError(option_error(e)) from None


def _users(args: argparse.Namespace) -> Any:
    from llmhyper.loadtest import users as U

    if args.limit_users is not None and args.limit_users < 1:
        raise CLIError(f"--limit-users must be >= 1, got {args.limit_users}")
    if args.send == "features" and not args.store:
        raise CLIError("--send features needs --store (the feature rows come from its user table)")
    try:
        if args.store:
            return U.from_store(args.store, with_features=args.send == "features", limit=args.limit_users)
        if args.users_file:
            return U.from_file(args.users_file, limit=args.limit_users)
    except U.UserSourceError as e:
        raise CLIError(str(e)) from None
    users = U.from_features(parse_features(args.features))
    if users.feature_map is not None and args.method == "RankBatch":
        raise CLIError("--features: RankBatch takes a dense vector 'v0,v1,..', not name=value pairs")
    return users


@command("loadtest", "load-test a running server (open or closed loop, several processes, HDR latency report)",
         _loadtest_args)
def _loadtest(args: argparse.Namespace) -> int:
    from llmhyper.client import RankerError
    from llmhyper.loadtest import report as R
    from llmhyper.loadtest import runner

    spec = _spec(args)
    users = _users(args)
    # One call before the load: an unreachable server is a runtime failure, not a report of
    # UNAVAILABLE; Explain without --ad learns the first served ad id.
    with make_client(args) as c:
        try:
            c.ping(timeout=min(args.timeout, 10.0))
        except RankerError as e:
            if e.code.name in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
                raise RuntimeFailure(f"cannot reach {args.target} ({e.code.name}): {e.details}") from None
        if spec.method == "Explain" and spec.ad is None:
            try:
                ad_ids = c.model_info(timeout=min(args.timeout, 10.0)).ad_ids
            except RankerError as e:
                raise RuntimeFailure(f"--ad not given and GetModelInfo failed ({e.code.name}): {e.details}") from None
            if not ad_ids:
                raise RuntimeFailure("--ad not given and the served version has no ads")
            spec = _spec(args, ad=ad_ids[0])
    try:
        results, started_at = runner.run(spec, users)
    except runner.LoadError as e:
        raise RuntimeFailure(str(e)) from None
    rep = R.build(spec, users, results, started_at)
    if args.out:
        R.write(rep, args.out)
    if args.json:
        print_json(rep)
    else:
        print(_format(rep))
    return 0


def _format(r: dict[str, Any]) -> str:
    """The report as a few readable lines and two tables."""
    head = (f"{r['method']} -> {r['target']}: {r['mode']} loop, {r['procs']} process(es), "
            f"users {r['users']['source']} ({r['users']['count']}, sent as {r['users']['sent_as']})")
    lines = [head]
    rate = f"{r['throughput_per_s']:.1f} calls/s"
    if r["target_rate_per_s"]:
        rate += f" (target {r['target_rate_per_s']:g}/s, {100 * r['rate_ratio']:.1f}%)"
    if r["batch_size"] > 1:
        rate += f", {r['users_per_s']:.0f} users/s"
    lines.append(f"{r['calls']} calls in {r['elapsed_s']:.2f} s: {rate}; warm-up {r['warmup']['calls']} calls")
    rows = []
    for name, key in (("latency", "latency_ms"), ("latency (OK)", "latency_ok_ms"), ("service", "service_ms"),
                      ("send lag", "send_lag_ms")):
        s = r[key]
        rows.append([name, s["count"]] + [_ms(s[k]) for k in ("p50", "p90", "p99", "p99_9", "max", "mean")])
    lines += ["", table(rows, ["ms", "count", "p50", "p90", "p99", "p99.9", "max", "mean"]), ""]
    lines.append(table([[c, n] for c, n in r["status_codes"].items()], ["status", "calls"]))
    for code, msgs in r["error_messages"].items():
        for msg, n in list(msgs.items())[:3]:
            lines.append(f"  {code} x{n}: {msg[:160]}")
    files = r.get("files") or {}
    if files:
        png = files.get("png") or "(not drawn: pip install 'llmhyper[loadtest]' for matplotlib)"
        lines += ["", f"report: {files['json']}  plot: {png}"]
    return "\n".join(lines)


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"
