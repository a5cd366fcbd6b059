"""Client commands against a running server: ``rank``, ``explain``, ``info``."""
from __future__ import annotations

import argparse
import json
from typing import Any

from llmhyper.cli.common import (
    add_client,
    add_json,
    make_client,
    parse_features,
    parse_ids,
    print_json,
    rpc,
    table,
    when,
)
from llmhyper.cli.registry import CLIError, command


# ---------------------------------------------------------------------- rank
def _rank_args(p: argparse.ArgumentParser) -> None:
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="user id in the store's user table")
    who.add_argument("--features", help="inline features: 'v0,v1,...' (schema order), 'name=v,...', or @file.json")
    p.add_argument("--top-k", type=int, default=10, help="ads to return (default 10)")
    p.add_argument("--allow", default=None, help="comma-separated candidate ad ids")
    p.add_argument("--deny", default=None, help="comma-separated ad ids never returned")
    p.add_argument("--contributions", action="store_true", help="also print each ad's top feature contributions")
    p.add_argument("--version", default=None, help="pin a weight version (default: current)")
    add_client(p)
    add_json(p)


@command("rank", "rank ads for one user (client)", _rank_args)
def _rank(args: argparse.Namespace) -> int:
    if args.top_k < 1:
        raise CLIError(f"--top-k must be >= 1, got {args.top_k}")
    features = parse_features(args.features) if args.features is not None else None
    with make_client(args) as c:
        res = rpc(lambda: c.rank(args.user, features=features, top_k=args.top_k, allow=parse_ids(args.allow),
                                  deny=parse_ids(args.deny), with_contributions=args.contributions, version=args.version))
    if args.json:
        out: dict[str, Any] = {"version": res.version, "ads": []}
        for a in res.ads:
            d: dict[str, Any] = {"ad_id": a.ad_id, "ctr": a.ctr, "logit": a.logit, "ad_index": a.ad_index}
            if a.contributions is not None:
                d["contributions"] = dict(zip(res.feature_names or (), a.contributions.tolist()))
            out["ads"].append(d)
        print_json(out)
        return 0
    print(f"version {res.version}, {len(res.ads)} ads")
    rows = []
    for rank, a in enumerate(res.ads, 1):
        row: list[Any] = [rank, a.ad_id, a.ctr, a.logit]
        if a.contributions is not None and res.feature_names:
            top = sorted(zip(res.feature_names, a.contributions.tolist()), key=lambda t: -abs(t[1]))[:3]
            row.append(", ".join(f"{n}={v:+.3g}" for n, v in top))
        rows.append(row)
    header = ["rank", "ad_id", "ctr", "logit"] + (["top contributions"] if args.contributions else [])
    print(table(rows, header))
    return 0


# ---------------------------------------------------------------------- explain
def _explain_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ad", required=True, help="ad id to explain")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="user id in the store's user table")
    who.add_argument("--features", help="inline features: 'v0,v1,...', 'name=v,...', or @file.json")
    p.add_argument("--version", default=None, help="pin a weight version (default: current)")
    p.add_argument("--limit", type=int, default=20, help="features to show in the table (default 20; JSON shows all)")
    add_client(p)
    add_json(p)


@command("explain", "explain one ad's score for one user: contributions and stored rationale", _explain_args)
def _explain(args: argparse.Namespace) -> int:
    features = parse_features(args.features) if args.features is not None else None
    with make_client(args) as c:
        ex = rpc(lambda: c.explain(args.ad, args.user, features=features, version=args.version))
    if args.json:
        print_json({
            "version": ex.version, "ad_id": ex.ad_id, "logit": ex.logit, "ctr": ex.ctr,
            "contributions": [c.__dict__ for c in ex.contributions],
            "rationale": ex.rationale, "provenance": ex.provenance,
        })
        return 0
    print(f"ad {ex.ad_id} (version {ex.version}): logit {ex.logit:+.4f}, ctr {ex.ctr:.4f}")
    rows = [[c.name, c.value, c.weight, c.contribution, c.rationale[:60]] for c in ex.contributions[: args.limit]]
    print(table(rows, ["feature", "value", "weight", "contribution", "rationale"]))
    if len(ex.contributions) > args.limit:
        print(f"... {len(ex.contributions) - args.limit} more features (use --limit or --json)")
    if ex.provenance:
        print("provenance: " + json.dumps(ex.provenance, default=str)[:400])
    return 0


# ---------------------------------------------------------------------- info
def _info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--version", default=None, help="describe this version (default: current)")
    p.add_argument("--health", action="store_true", help="also print the health status")
    add_client(p)
    add_json(p)


@command("info", "show the served model: version, ads, feature schema, manifest, versions", _info_args)
def _info(args: argparse.Namespace) -> int:
    with make_client(args) as c:
        info = rpc(lambda: c.model_info(version=args.version))
        status = rpc(lambda: c.health()) if args.health else None
    if args.json:
        out = {
            "version": info.version, "created_at": info.created_at, "n_ads": info.n_ads, "ad_ids": list(info.ad_ids),
            "features": [{"name": n, "description": d} for n, d in info.features], "manifest": info.manifest,
            "n_users": info.n_users, "versions": [v.__dict__ for v in info.versions],
        }
        if status is not None:
            out["health"] = status
        print_json(out)
        return 0
    print(f"version {info.version} (published {when(info.created_at)}): {info.n_ads} ads, "
          f"{len(info.features)} features, {info.n_users} users")
    if status is not None:
        print(f"health: {status}")
    shown = ", ".join(info.ad_ids[:10]) + (f", ... ({info.n_ads - 10} more)" if info.n_ads > 10 else "")
    print(f"ads: {shown}")
    print(table([[i, n, d] for i, (n, d) in enumerate(info.features)], ["#", "feature", "description"]))
    print("manifest: " + json.dumps(info.manifest, default=str, sort_keys=True)[:400])
    print(table([["*" if v.current else "", v.version, when(v.created_at), v.n_ads, v.n_features, v.generator]
                  for v in info.versions], ["", "version", "created", "ads", "features", "generator"]))
    return 0


