"""``llmhyper`` command line: serve, rank, explain, info, publish, store ls|show|rollback|prune.

Subcommands live in a registry: a module adds one with::

    @command("build", "run the offline pipeline", configure=_build_args)
    def _build(args: argparse.Namespace) -> int: ...

``configure(parser)`` adds the subcommand's arguments; the function returns the exit code.
Raise :class:`CLIError` for a bad argument found after parsing (missing store, bad
feature list...): it prints ``llmhyper <cmd>: error: <message>`` and exits 2, like
argparse does for syntax errors. Heavy imports (numpy, grpc, offline code) happen
inside the subcommands, so ``llmhyper serve`` never loads torch, faiss or LLM clients.

Exit codes: 0 ok; 1 runtime failure (server unreachable, store error); 2 bad input
(argparse errors, CLIError, INVALID_ARGUMENT / NOT_FOUND answers from the server).
"""

import os

# Pin every numeric library to one thread BEFORE numpy/numba are imported (server
# processes use one core each; parallelism comes from processes). setdefault: an
# explicit environment setting still wins.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable, Sequence  # noqa: E402

__all__ = ["main", "command", "CLIError", "COMMANDS", "build_parser"]


class CLIError(Exception):
    """A semantic argument error: printed as ``llmhyper <cmd>: error: ...`` with exit code 2."""


class RuntimeFailure(Exception):
    """A failure that is not the caller's input (unreachable server, I/O): exit code 1."""


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, Command] = {}


def command(name: str, help: str, configure: Callable[[argparse.ArgumentParser], None] | None = None):
    """Register ``fn(args) -> exit code`` as subcommand ``name`` (decorator)."""

    def register(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        COMMANDS[name] = Command(name, help, configure or (lambda p: None), fn)
        return fn

    return register


# ---------------------------------------------------------------------- shared helpers
def _add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")


def _add_client(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("connection")
    g.add_argument("--target", default=os.environ.get("LLMHYPER_TARGET", "127.0.0.1:50051"),
                   help="server HOST:PORT (default: $LLMHYPER_TARGET or 127.0.0.1:50051)")
    g.add_argument("--token", default=None, help="bearer token (default: $LLMHYPER_TOKEN)")
    g.add_argument("--tls-ca", default=None, help="PEM CA that signed the server certificate (enables TLS)")
    g.add_argument("--tls-cert", default=None, help="PEM client certificate for mutual TLS")
    g.add_argument("--tls-key", default=None, help="PEM client key for mutual TLS")
    g.add_argument("--tls-server-name", default=None, help="expected server certificate name (override)")
    g.add_argument("--timeout", type=float, default=10.0, help="per-call deadline in seconds (default 10)")


def _client(args: argparse.Namespace):
    from llmhyper.client import ClientTLS, RankerClient

    tls = None
    if args.tls_ca or args.tls_cert or args.tls_key or args.tls_server_name:
        if bool(args.tls_cert) != bool(args.tls_key):
            raise CLIError("--tls-cert and --tls-key must be given together")
        for flag, path in (("--tls-ca", args.tls_ca), ("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key)):
            if path and not Path(path).is_file():
                raise CLIError(f"{flag}: file not found: {path}")
        tls = ClientTLS(ca_file=args.tls_ca, cert_file=args.tls_cert, key_file=args.tls_key, server_name=args.tls_server_name)
    token = args.token or os.environ.get("LLMHYPER_TOKEN") or None
    return RankerClient(args.target, token=token, tls=tls, timeout=args.timeout)


def _rpc(fn: Callable[[], Any]) -> Any:
    """Run a client call; map RankerError to CLIError (caller's input) or RuntimeFailure."""
    import grpc

    from llmhyper.client import RankerError

    try:
        return fn()
    except RankerError as e:
        if e.code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.OUT_OF_RANGE):
            raise CLIError(f"server refused the request ({e.code.name}): {e.details}") from None
        raise RuntimeFailure(f"{e.method} failed ({e.code.name}): {e.details}") from None


def _open_store(path: str, readonly: bool = True):
    if not path:
        raise CLIError("--store PATH is required")
    p = Path(path)
    if readonly and not p.exists():
        raise CLIError(f"store not found: {path}")
    from llmhyper.store import StoreError, WeightStore

    try:
        return WeightStore(p, readonly=readonly)
    except StoreError as e:
        raise CLIError(f"cannot open store {path}: {e}") from None


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    cells = [[str(c) for c in header]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=False, default=_json_default))


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def _parse_features(text: str) -> list[float] | dict[str, float]:
    """'0.1,0.2,...' -> dense list; 'name=v,name=v' -> map. '@file.json' reads a JSON list/object."""
    text = text.strip()
    if text.startswith("@"):
        try:
            obj = json.loads(Path(text[1:]).read_text())
        except (OSError, ValueError) as e:
            raise CLIError(f"--features: cannot read JSON from {text[1:]}: {e}") from None
        if isinstance(obj, dict):
            return {str(k): _num(v, str(k)) for k, v in obj.items()}
        if isinstance(obj, list):
            return [_num(v, f"#{i}") for i, v in enumerate(obj)]
        raise CLIError("--features JSON must be a list of numbers or an object name -> number")
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise CLIError("--features is empty")
    if all("=" in p for p in parts):
        out: dict[str, float] = {}
        for p in parts:
            name, _, value = p.partition("=")
            out[name.strip()] = _num(value, name.strip())
        return out
    if any("=" in p for p in parts):
        raise CLIError("--features mixes name=value and bare values; use one form")
    return [_num(p, f"#{i}") for i, p in enumerate(parts)]


def _num(v: Any, what: str) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        raise CLIError(f"--features: value for {what} is not a number: {v!r}") from None


def _ids(text: str | None) -> list[str] | None:
    return [s.strip() for s in text.split(",") if s.strip()] if text else None


# ---------------------------------------------------------------------- serve
def _serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", required=True, help="path of the LMDB weight store")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=50051, help="port (default 50051; 0 picks a free one)")
    p.add_argument("--workers", type=int, default=4, help="handler threads (default 4)")
    p.add_argument("--max-concurrent", type=int, default=None, help="max concurrent RPCs; excess get RESOURCE_EXHAUSTED")
    p.add_argument("--max-message-bytes", type=int, default=4 * 1024 * 1024, help="largest request accepted (default 4 MiB)")
    p.add_argument("--max-top-k", type=int, default=1000, help="largest top_k a request may ask for (default 1000)")
    p.add_argument("--poll-interval", type=float, default=0.1, help="hot-swap poll interval in seconds (default 0.1)")
    p.add_argument("--grace", type=float, default=5.0, help="seconds in-flight calls get on SIGTERM (default 5)")
    p.add_argument("--drain", type=float, default=0.0,
                   help="seconds to keep serving after reporting NOT_SERVING on SIGTERM (default 0)")
    p.add_argument("--reflection", action="store_true", help="enable gRPC server reflection (off by default)")
    p.add_argument("--debug-handler-delay", type=float, default=0.0, help=argparse.SUPPRESS)  # test hook
    p.add_argument("--tls-cert", default=None, help="PEM server certificate chain (enables TLS)")
    p.add_argument("--tls-key", default=None, help="PEM server private key")
    p.add_argument("--tls-client-ca", default=None, help="PEM CA for client certificates (enables mutual TLS)")
    p.add_argument("--token", action="append", default=None,
                   help="accepted bearer token (repeatable; default: $LLMHYPER_TOKEN if set, else no token check)")
    p.add_argument("--token-file", default=None, help="file with one accepted bearer token per line")
    p.add_argument("--auth-health", action="store_true", help="require the token for health checks too")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


@command("serve", "serve the Ranker gRPC API from a weight store", _serve_args)
def _serve(args: argparse.Namespace) -> int:
    import logging

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if not Path(args.store).exists():
        raise CLIError(f"store not found: {args.store}")
    if not 0 <= args.port <= 65535:
        raise CLIError(f"--port must be in [0, 65535], got {args.port}")
    for flag, path in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key), ("--tls-client-ca", args.tls_client_ca)):
        if path and not Path(path).is_file():
            raise CLIError(f"{flag}: file not found: {path}")
    tokens = list(args.token or [])
    if args.token_file:
        try:
            tokens += [t.strip() for t in Path(args.token_file).read_text().splitlines() if t.strip()]
        except OSError as e:
            raise CLIError(f"--token-file: {e}") from None
    if not tokens and os.environ.get("LLMHYPER_TOKEN"):
        tokens = [os.environ["LLMHYPER_TOKEN"]]

    from llmhyper.config import ServerConfig
    from llmhyper.server import serve

    options = dict(
        workers=args.workers, max_concurrent_rpcs=args.max_concurrent, max_receive_message_bytes=args.max_message_bytes,
        max_top_k=args.max_top_k, poll_interval_s=args.poll_interval, grace_s=args.grace, drain_s=args.drain,
        reflection=args.reflection, debug_handler_delay_s=args.debug_handler_delay,
        tls_cert=args.tls_cert, tls_key=args.tls_key, tls_client_ca=args.tls_client_ca, tokens=tuple(tokens),
        auth_health=args.auth_health,
    )
    try:
        ServerConfig.from_options(**options)
    except ValueError as e:
        raise CLIError(str(e)) from None

    def started(server: Any, port: int) -> None:
        scheme = "tls" if args.tls_cert else "plaintext"
        print(f"llmhyper: listening on {args.host}:{port} ({scheme}, {args.workers} workers)", flush=True)

    address = f"[{args.host}]:{args.port}" if ":" in args.host else f"{args.host}:{args.port}"
    try:
        return serve(address, args.store, on_started=started, exit_hard_after_grace=True, **options)
    except OSError as e:
        raise RuntimeFailure(str(e)) from None


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
    _add_client(p)
    _add_json(p)


@command("rank", "rank ads for one user (client)", _rank_args)
def _rank(args: argparse.Namespace) -> int:
    if args.top_k < 1:
        raise CLIError(f"--top-k must be >= 1, got {args.top_k}")
    features = _parse_features(args.features) if args.features is not None else None
    with _client(args) as c:
        res = _rpc(lambda: c.rank(args.user, features=features, top_k=args.top_k, allow=_ids(args.allow),
                                  deny=_ids(args.deny), with_contributions=args.contributions, version=args.version))
    if args.json:
        out: dict[str, Any] = {"version": res.version, "ads": []}
        for a in res.ads:
            d: dict[str, Any] = {"ad_id": a.ad_id, "ctr": a.ctr, "logit": a.logit, "ad_index": a.ad_index}
            if a.contributions is not None:
                d["contributions"] = dict(zip(res.feature_names or (), a.contributions.tolist()))
            out["ads"].append(d)
        _print_json(out)
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
    print(_table(rows, header))
    return 0


# ---------------------------------------------------------------------- explain
def _explain_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ad", required=True, help="ad id to explain")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="user id in the store's user table")
    who.add_argument("--features", help="inline features: 'v0,v1,...', 'name=v,...', or @file.json")
    p.add_argument("--version", default=None, help="pin a weight version (default: current)")
    p.add_argument("--limit", type=int, default=20, help="features to show in the table (default 20; JSON shows all)")
    _add_client(p)
    _add_json(p)


@command("explain", "explain one ad's score for one user: contributions and stored rationale", _explain_args)
def _explain(args: argparse.Namespace) -> int:
    features = _parse_features(args.features) if args.features is not None else None
    with _client(args) as c:
        ex = _rpc(lambda: c.explain(args.ad, args.user, features=features, version=args.version))
    if args.json:
        _print_json({
            "version": ex.version, "ad_id": ex.ad_id, "logit": ex.logit, "ctr": ex.ctr,
            "contributions": [c.__dict__ for c in ex.contributions],
            "rationale": ex.rationale, "provenance": ex.provenance,
        })
        return 0
    print(f"ad {ex.ad_id} (version {ex.version}): logit {ex.logit:+.4f}, ctr {ex.ctr:.4f}")
    rows = [[c.name, c.value, c.weight, c.contribution, c.rationale[:60]] for c in ex.contributions[: args.limit]]
    print(_table(rows, ["feature", "value", "weight", "contribution", "rationale"]))
    if len(ex.contributions) > args.limit:
        print(f"... {len(ex.contributions) - args.limit} more features (use --limit or --json)")
    if ex.provenance:
        print("provenance: " + json.dumps(ex.provenance, default=str)[:400])
    return 0


# ---------------------------------------------------------------------- info
def _info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--version", default=None, help="describe this version (default: current)")
    p.add_argument("--health", action="store_true", help="also print the health status")
    _add_client(p)
    _add_json(p)


@command("info", "show the served model: version, ads, feature schema, manifest, versions", _info_args)
def _info(args: argparse.Namespace) -> int:
    with _client(args) as c:
        info = _rpc(lambda: c.model_info(version=args.version))
        status = _rpc(lambda: c.health()) if args.health else None
    if args.json:
        out = {
            "version": info.version, "created_at": info.created_at, "n_ads": info.n_ads, "ad_ids": list(info.ad_ids),
            "features": [{"name": n, "description": d} for n, d in info.features], "manifest": info.manifest,
            "n_users": info.n_users, "versions": [v.__dict__ for v in info.versions],
        }
        if status is not None:
            out["health"] = status
        _print_json(out)
        return 0
    print(f"version {info.version} (published {_when(info.created_at)}): {info.n_ads} ads, "
          f"{len(info.features)} features, {info.n_users} users")
    if status is not None:
        print(f"health: {status}")
    shown = ", ".join(info.ad_ids[:10]) + (f", ... ({info.n_ads - 10} more)" if info.n_ads > 10 else "")
    print(f"ads: {shown}")
    print(_table([[i, n, d] for i, (n, d) in enumerate(info.features)], ["#", "feature", "description"]))
    print("manifest: " + json.dumps(info.manifest, default=str, sort_keys=True)[:400])
    print(_table([["*" if v.current else "", v.version, _when(v.created_at), v.n_ads, v.n_features, v.generator]
                  for v in info.versions], ["", "version", "created", "ads", "features", "generator"]))
    return 0


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
        _add_json(sp)


@command("store", "inspect and manage the weight store: ls, show, rollback, prune", _store_args)
def _store(args: argparse.Namespace) -> int:
    from llmhyper.store import StoreError, VersionNotFound

    readonly = args.store_cmd in ("ls", "show")
    if not Path(args.store).exists():  # a writable open would create an empty store at a typo'd path
        raise CLIError(f"store not found: {args.store}")
    store = _open_store(args.store, readonly=readonly)
    try:
        if args.store_cmd == "ls":
            versions = store.list_versions()
            if args.json:
                _print_json(versions)
            elif not versions:
                print("no versions published")
            else:
                print(_table([["*" if v.get("current") else "", v.get("version"), _when(v.get("created_at") or 0),
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
                _print_json({"version": view.version, "created_at": view.created_at, "n_ads": len(view.ad_ids),
                             "ad_ids": list(view.ad_ids), "features": [list(f) for f in view.features],
                             "manifest": view.manifest, "current": view.version == store.current_version()})
                return 0
            M, F = view.theta.shape
            print(f"version {view.version} (published {_when(view.created_at)}): {M} ads x {F} features"
                  + (" [current]" if view.version == store.current_version() else ""))
            print("ads: " + ", ".join(view.ad_ids[:10]) + (f", ... ({M - 10} more)" if M > 10 else ""))
            print(_table([[i, n, d] for i, (n, d) in enumerate(view.features)], ["#", "feature", "description"]))
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
                _print_json({"previous": before, "current": now})
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
                _print_json({"removed": removed})
            else:
                print(f"removed {len(removed)} version(s)" + (": " + ", ".join(removed) if removed else ""))
            return 0
        raise CLIError(f"unknown store command {args.store_cmd!r}")
    finally:
        store.close()


# ---------------------------------------------------------------------- publish
def _publish_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("weights", help="weights file (.npz written by offline.artifact.WeightArtifact.save)")
    p.add_argument("--store", required=True, help="path of the LMDB weight store (created if missing)")
    p.add_argument("--users", default=None, help="user table (.npz written by offline.artifact.UserTable.save)")
    _add_json(p)


@command("publish", "publish a weights file (and optionally a user table) as a new store version", _publish_args)
def _publish(args: argparse.Namespace) -> int:
    for what, path in (("weights file", args.weights), ("--users", args.users)):
        if path and not Path(path).is_file():
            raise CLIError(f"{what} not found: {path}")
    from offline.artifact import UserTable, WeightArtifact  # offline code only inside this subcommand

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
    from llmhyper.store import StoreError

    store = _open_store(args.store, readonly=False)
    try:
        try:
            # One transaction: weights, user table and the current pointer change together or not at all.
            version = store.publish(art.ad_ids, art.theta, art.features, manifest=art.manifest, ad_records=art.ad_records,
                                    users=None if users is None else (users.user_ids, users.X, users.features))
        except ValueError as e:  # invalid data (store_validate.InvalidWeights is a ValueError)
            raise CLIError(f"publish failed, nothing written: {e}") from None
        except StoreError as e:  # map full, I/O: not the caller's input
            raise RuntimeFailure(f"publish failed (the previous version still serves): {e}") from None
    finally:
        store.close()
    M, F = art.theta.shape
    if args.json:
        _print_json({"version": version, "n_ads": M, "n_features": F, "n_users": len(users.user_ids) if users else None})
    else:
        print(f"published {version}: {M} ads x {F} features" + (f", {len(users.user_ids)} users" if users else ""))
    return 0


# ---------------------------------------------------------------------- entry point
def _register_offline_commands() -> None:
    """Register build/demo/evaluate/robustness (their modules import offline code only when they run)."""
    import llmhyper.build_cmds  # noqa: F401
    import llmhyper.robustness_cmd  # noqa: F401
    from llmhyper import evaluate_cmd

    if "evaluate" not in COMMANDS:
        evaluate_cmd.register(command)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subparser per registered command."""
    _register_offline_commands()
    parser = argparse.ArgumentParser(prog="llmhyper", description="LLM-HYPER cold-start ad ranking service")
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}", required=True)
    for cmd in COMMANDS.values():
        sp = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        cmd.configure(sp)
        sp.set_defaults(_run=cmd.run, _parser=sp)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the subcommand; returns the exit code (0, 1 or 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except CLIError as e:
        args._parser.print_usage(sys.stderr)
        print(f"{args._parser.prog}: error: {e}", file=sys.stderr)
        return 2
    except RuntimeFailure as e:
        print(f"{args._parser.prog}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
