"""Helpers shared by the command modules: connection flags, client, store, tables, JSON, parsing."""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from llmhyper.cli.registry import CLIError, RuntimeFailure

def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")


def add_client(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("connection")
    g.add_argument("--target", default=os.environ.get("LLMHYPER_TARGET", "127.0.0.1:50051"),
                   help="server HOST:PORT (default: $LLMHYPER_TARGET or 127.0.0.1:50051)")
    g.add_argument("--token", default=None, help="bearer token (default: $LLMHYPER_TOKEN)")
    g.add_argument("--tls-ca", default=None, help="PEM CA that signed the server certificate (enables TLS)")
    g.add_argument("--tls-cert", default=None, help="PEM client certificate for mutual TLS")
    g.add_argument("--tls-key", default=None, help="PEM client key for mutual TLS")
    g.add_argument("--tls-server-name", default=None, help="expected server certificate name (override)")
    g.add_argument("--timeout", type=float, default=10.0, help="per-call deadline in seconds (default 10)")


def make_client(args: argparse.Namespace):
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
    # one-shot commands report the first failure as it is (an unreachable server: UNAVAILABLE,
    # not a deadline spent retrying it)
    return RankerClient(args.target, token=token, tls=tls, timeout=args.timeout, retries=False)


def rpc(fn: Callable[[], Any]) -> Any:
    """Run a client call; map RankerError to CLIError (caller's input) or RuntimeFailure."""
    import grpc

    from llmhyper.client import RankerError

    try:
        return fn()
    except RankerError as e:
        if e.code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.OUT_OF_RANGE):
            raise CLIError(f"server refused the request ({e.code.name}): {e.details}") from None
        raise RuntimeFailure(f"{e.method} failed ({e.code.name}): {e.details}") from None


def open_store(path: str, readonly: bool = True):
    if not path:
        raise CLIError("--store PATH is required")
    p = Path(path)
    if readonly and not p.exists():
        raise CLIError(f"store not found: {path}")
    from llmhyper.store.weight_store import StoreError, WeightStore

    try:
        return WeightStore(p, readonly=readonly)
    except StoreError as e:
        raise CLIError(f"cannot open store {path}: {e}") from None


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    cells = [[str(c) for c in header]] + [[fmt_cell(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def fmt_cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=False, default=json_default))


def json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def parse_features(text: str) -> list[float] | dict[str, float]:
    """'0.1,0.2,...' -> dense list; 'name=v,name=v' -> map. '@file.json' reads a JSON list/object."""
    text = text.strip()
    if text.startswith("@"):
        try:
            obj = json.loads(Path(text[1:]).read_text())
        except (OSError, ValueError) as e:
            raise CLIError(f"--features: cannot read JSON from {text[1:]}: {e}") from None
        if isinstance(obj, dict):
            return {str(k): parse_num(v, str(k)) for k, v in obj.items()}
        if isinstance(obj, list):
            return [parse_num(v, f"#{i}") for i, v in enumerate(obj)]
        raise CLIError("--features JSON must be a list of numbers or an object name -> number")
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise CLIError("--features is empty")
    if all("=" in p for p in parts):
        out: dict[str, float] = {}
        for p in parts:
            name, _, value = p.partition("=")
            out[name.strip()] = parse_num(value, name.strip())
        return out
    if any("=" in p for p in parts):
        raise CLIError("--features mixes name=value and bare values; use one form")
    return [parse_num(p, f"#{i}") for i, p in enumerate(parts)]


def parse_num(v: Any, what: str) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        raise CLIError(f"--features: value for {what} is not a number: {v!r}") from None


def parse_ids(text: str | None) -> list[str] | None:
    return [s.strip() for s in text.split(",") if s.strip()] if text else None




# The generator names, for --help only: the CLI must not import offline code to build its parser.
# offline.generators.registry is the source of truth; tests/cli/test_cli.py checks this copy.
GENERATOR_HELP = "knn-content (default; alias knn), knn-raw, gemini, openai"


def load_rules_arg(path: str | None, ad_ids: Sequence[str], feature_names: Sequence[str]):
    """``--rules FILE`` checked against a version's ads and features: ContentRules, or None
    without a path. A malformed file or a rule naming an unknown ad / feature or a non-finite
    threshold is a CLIError (exit 2) naming the file and line."""
    if not path:
        return None
    from llmhyper.store.rules_file import RulesFileError, load_rules_file

    try:
        return load_rules_file(path, ad_ids, feature_names)
    except RulesFileError as e:
        raise CLIError(f"invalid rules file {path}: {e}") from None


def parse_kv_options(items: Sequence[str], flag: str) -> dict[str, Any]:
    """``KEY=JSON`` items (repeatable options) as a dict; a value that is not JSON stays a string.
    Raises CLIError naming ``flag`` for an item without ``=`` or key."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, val = item.partition("=")
        if not sep or not key:
            raise CLIError(f"{flag} must be KEY=JSON, got {item!r}")
        try:
            out[key] = json.loads(val)
        except json.JSONDecodeError:
            out[key] = val
    return out
