"""``llmhyper serve``: run the Ranker gRPC server over a weight store."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from llmhyper.cli.registry import CLIError, RuntimeFailure, command


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
    p.add_argument("--explore", action="store_true",
                   help="rank by a Thompson sample when a request leaves `explore` unset (versions need sigma)")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="serve Prometheus /metrics over HTTP on this port (0 picks one; default: off)")
    p.add_argument("--metrics-host", default="127.0.0.1", help="bind address of /metrics (default 127.0.0.1)")
    p.add_argument("--processes", type=int, default=1,
                   help="server processes sharing the port with SO_REUSEPORT, supervised by this one (default 1)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # set by --processes for its children
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


@command("serve", "serve the Ranker gRPC API from a weight store", _serve_args)
def _serve(args: argparse.Namespace) -> int:
    import logging

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if not Path(args.store).exists():
        raise CLIError(f"store not found: {args.store}")
    if not 0 <= args.port <= 65535:
        raise CLIError(f"--port must be in [0, 65535], got {args.port}")
    if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535:
        raise CLIError(f"--metrics-port must be in [0, 65535], got {args.metrics_port}")
    if args.processes < 1:
        raise CLIError(f"--processes must be >= 1, got {args.processes}")
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

    from llmhyper.server.config import ServerConfig
    from llmhyper.server import serve

    options = dict(
        workers=args.workers, max_concurrent_rpcs=args.max_concurrent, max_receive_message_bytes=args.max_message_bytes,
        max_top_k=args.max_top_k, poll_interval_s=args.poll_interval, grace_s=args.grace, drain_s=args.drain,
        reflection=args.reflection, debug_handler_delay_s=args.debug_handler_delay,
        tls_cert=args.tls_cert, tls_key=args.tls_key, tls_client_ca=args.tls_client_ca, tokens=tuple(tokens),
        auth_health=args.auth_health, explore_default=args.explore, reuse_port=args.child,
        metrics_port=None if args.child else args.metrics_port, metrics_host=args.metrics_host,
    )
    try:
        ServerConfig.from_options(**options)
    except ValueError as e:
        raise CLIError(str(e)) from None

    scheme = "tls" if args.tls_cert else "plaintext"
    if args.processes > 1 and not args.child:
        from llmhyper.server import prefork

        def forked(port: int, metrics_port: int | None) -> None:
            extra = f", metrics on {args.metrics_host}:{metrics_port}" if metrics_port is not None else ""
            print(f"llmhyper: listening on {args.host}:{port} ({scheme}, {args.processes} processes x "
                  f"{args.workers} workers{extra})", flush=True)

        try:
            return prefork.supervise(prefork.child_args(sys.argv[1:]), host=args.host, port=args.port,
                                     processes=args.processes, store_path=args.store,
                                     metrics_port=args.metrics_port, metrics_host=args.metrics_host,
                                     on_started=forked)
        except OSError as e:
            raise RuntimeFailure(str(e)) from None

    def started(server: Any, port: int) -> None:
        extra = f", metrics on {args.metrics_host}:{server.metrics_port}" if server.metrics_port is not None else ""
        print(f"llmhyper: listening on {args.host}:{port} ({scheme}, {args.workers} workers{extra})", flush=True)

    if args.child:
        # compile the kernels before binding the shared port: a replacement child must not take
        # connections (SO_REUSEPORT hands it new ones at once) while it is still warming up
        import scoring

        scoring.set_threads(1)
        scoring.warmup()
    address = f"[{args.host}]:{args.port}" if ":" in args.host else f"{args.host}:{args.port}"
    try:
        return serve(address, args.store, on_started=started, exit_hard_after_grace=True, **options)
    except OSError as e:
        raise RuntimeFailure(str(e)) from None


