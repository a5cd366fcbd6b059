"""Offline store management: ``store ls|show|rollback|prune`` and ``publish``."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from llmhyper.cli.common import (
    add_json,
    load_rules_arg,
    open_store,
    print_json,
    table,
    when,
)
from llmhyper.cli.registry import CLIError, RuntimeFailure, command


# ---------------------------------------------------------------------- store ...
def _store_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="store_cmd", metavar="{ls,show,rollback,prune}", required=True)
    ls = sub.add_parser("ls", help="list versions (newest last; * marks current)")
    show = sub.add_parser("show", help="show one version: manifest, schema, ads")
    show.add_argument("version", nargs="?", default=None, help="version id (default: current)")
    rb = sub.add_parser("rollback", help="move current back (default: to the version before current)")
    rb.add_argument("--to", dest="to_version", default=None, help="version to make current")
    pr = sub.add_parser("prune", help="delete old versions, keeping the newest N (never the current one)")
    pr.add_argument("--keep", type=int, required=True, help="versions to keep (>= 1)")
    for sp in (ls, show, rb, pr):
        sp.add_argument("--store", required=True, help="path of the LMDB weight store")
        add_json(sp)


@command("store", "inspect and manage the weight store: ls, show, rollback, prune", _store_args)
def _store(args: argparse.Namespace) -> int:
    from llmhyper.store.weight_store import StoreError, VersionNotFound

    readonly = args.store_cmd in ("ls", "show")
    if not Path(args.store).exists():  # a writable open would create an empty store at a typo'd path
        raise CLIError(f"store not found: {args.store}")
    store = open_store(args.store, readonly=readonly)
    try:
        if args.store_cmd == "ls":
            versions = store.list_versions()
            if args.json:
                print_json(versions)
            elif not versions:
                print("no versions published")
            else:
                print(table([["*" if v.get("current") else "", v.get("version"), when(v.get("created_at") or 0),
                               v.get("n_ads"), v.get("n_features"), v.get("generator") or ""] for v in versions],
                             ["", "version", "created", "ads", "features", "generator"]))
            return 0
        if args.store_cmd == "show":
            if args.version is None and store.current_version() is None:
                raise CLIError(f"store {args.store} has no published version")
            try:
                view = store.view(args.version)
            except VersionNotFound:
                raise CLIError(f"unknown version {args.version!r} in {args.store}") from None
            if args.json:
                print_json({"version": view.version, "created_at": view.created_at, "n_ads": len(view.ad_ids),
                             "ad_ids": list(view.ad_ids), "features": [list(f) for f in view.features],
                             "manifest": view.manifest, "current": view.version == store.current_version()})
                return 0
            M, F = view.theta.shape
            print(f"version {view.version} (published {when(view.created_at)}): {M} ads x {F} features"
                  + (" [current]" if view.version == store.current_version() else ""))
            print("ads: " + ", ".join(view.ad_ids[:10]) + (f", ... ({M - 10} more)" if M > 10 else ""))
            print(table([[i, n, d] for i, (n, d) in enumerate(view.features)], ["#", "feature", "description"]))
            print("manifest: " + json.dumps(view.manifest, default=str, sort_keys=True, indent=2))
            return 0
        if args.store_cmd == "rollback":
            before = store.current_version()
            try:
                now = store.rollback(args.to_version)
            except VersionNotFound as e:
                if args.to_version is None:  # nothing older to go back to
                    raise CLIError(str(e)) from None
                raise CLIError(f"unknown version {args.to_version!r} in {args.store}") from None
            except StoreError as e:
                raise CLIError(f"cannot roll back: {e}") from None
            if args.json:
                print_json({"previous": before, "current": now})
            else:
                print(f"current: {before} -> {now}")
            return 0
        if args.store_cmd == "prune":
            if args.keep < 1:
                raise CLIError(f"--keep must be >= 1, got {args.keep}")
            try:
                removed = store.prune(args.keep)
            except StoreError as e:
                raise CLIError(f"cannot prune: {e}") from None
            if args.json:
                print_json({"removed": removed})
            else:
                print(f"removed {len(removed)} version(s)" + (": " + ", ".join(removed) if removed else ""))
            return 0
        raise CLIError(f"unknown store command {args.store_cmd!r}")
    finally:
        store.close()


# ---------------------------------------------------------------------- publish
def _publish_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("weights", help="weights file (.npz written by offline.data.artifact.WeightArtifact.save)")
    p.add_argument("--store", required=True, help="path of the LMDB weight store (created if missing)")
    p.add_argument("--users", default=None, help="user table (.npz written by offline.data.artifact.UserTable.save)")
    p.add_argument("--rules", default=None,
                   help="content rules file (CSV or .json of ad_id, feature, threshold; see llmhyper.store.rules_file)")
    p.add_argument("--sigma", default=None,
                   help="posterior spread for exploration: .npy float32 [M, F] (>= 0), row order of the weights")
    add_json(p)


@command("publish", "publish a weights file (and optionally a user table) as a new store version", _publish_args)
def _publish(args: argparse.Namespace) -> int:
    for what, path in (("weights file", args.weights), ("--users", args.users), ("--rules", args.rules),
                       ("--sigma", args.sigma)):
        if path and not Path(path).is_file():
            raise CLIError(f"{what} not found: {path}")
    from offline.data.artifact import UserTable, WeightArtifact  # offline code only inside this subcommand

    try:
        art = WeightArtifact.load(args.weights)
    except ValueError as e:
        raise CLIError(f"invalid weights file {args.weights}: {e}") from None
    users = None
    if args.users:
        try:
            users = UserTable.load(args.users)
        except ValueError as e:
            raise CLIError(f"invalid user table {args.users}: {e}") from None
        w_names = [n for n, _ in art.features]
        u_names = [n for n, _ in users.features]
        if w_names != u_names:
            raise CLIError(f"user table features ({len(u_names)}) do not match the weights' features ({len(w_names)}); "
                           f"first difference: {next((a, b) for a, b in zip(w_names + [None], u_names + [None]) if a != b)}")
    rules = load_rules_arg(args.rules, art.ad_ids, [n for n, _ in art.features])
    sigma = None
    if args.sigma:
        import numpy as np

        try:
            sigma = np.load(args.sigma, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise CLIError(f"--sigma: cannot read {args.sigma} as .npy: {e}") from None
    from llmhyper.store.weight_store import StoreError

    store = open_store(args.store, readonly=False)
    try:
        try:
            # One transaction: weights, user table and the current pointer change together or not at all.
            version = store.publish(art.ad_ids, art.theta, art.features, manifest=art.manifest, ad_records=art.ad_records,
                                    users=None if users is None else (users.user_ids, users.X, users.features),
                                    rules=rules, sigma=sigma)
        except ValueError as e:  # invalid data (store_validate.InvalidWeights is a ValueError)
            raise CLIError(f"publish failed, nothing written: {e}") from None
        except StoreError as e:  # map full, I/O: not the caller's input
            raise RuntimeFailure(f"publish failed (the previous version still serves): {e}") from None
    finally:
        store.close()
    M, F = art.theta.shape
    if args.json:
        out = {"version": version, "n_ads": M, "n_features": F, "n_users": len(users.user_ids) if users else None}
        if rules is not None:
            out["n_rules"] = rules.n_rules
        if sigma is not None:
            out["sigma"] = True
        print_json(out)
    else:
        print(f"published {version}: {M} ads x {F} features" + (f", {len(users.user_ids)} users" if users else "")
              + (f", {rules.n_rules} content rules" if rules is not None else "")
              + (", posterior spread" if sigma is not None else ""))
    return 0


