"""The ``llmhyper`` command line. ``main`` builds one subparser per registered command.

Command modules (one per group) register themselves with :func:`llmhyper.cli.registry.command`
when imported; ``build_parser`` imports them all. Heavy imports (numpy, grpc, offline code)
happen inside the subcommands, so ``llmhyper serve`` never loads torch, faiss or LLM clients.
Exit codes come from one mapping (:func:`llmhyper.cli.registry.exit_code`).
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from llmhyper.cli.registry import COMMANDS, exit_code

__all__ = ["main", "build_parser"]


def _register_commands() -> None:
    """Import every command module so each registers its subcommands (none imports offline code at import)."""
    import llmhyper.cli.build_cmds  # noqa: F401
    import llmhyper.cli.client_cmds  # noqa: F401
    import llmhyper.cli.evaluate_cmd  # noqa: F401
    import llmhyper.cli.launch_cmd  # noqa: F401
    import llmhyper.cli.loadtest_cmd  # noqa: F401
    import llmhyper.cli.local_cmd  # noqa: F401
    import llmhyper.cli.optimize_cmd  # noqa: F401
    import llmhyper.cli.refresh_cmd  # noqa: F401
    import llmhyper.cli.replay_cmd  # noqa: F401
    import llmhyper.cli.robustness_cmd  # noqa: F401
    import llmhyper.cli.score_cmd  # noqa: F401
    import llmhyper.cli.serve_cmd  # noqa: F401
    import llmhyper.cli.store_cmds  # noqa: F401


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subparser per registered command."""
    _register_commands()
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
    except (Exception, KeyboardInterrupt) as e:
        code = exit_code(e)
        if code is None:
            raise
        if code == 2:
            args._parser.print_usage(sys.stderr)
            print(f"{args._parser.prog}: error: {e}", file=sys.stderr)
        elif code == 1:
            print(f"{args._parser.prog}: {e}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
