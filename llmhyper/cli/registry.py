"""The command registry and the one mapping from errors to exit codes.

A command module adds a subcommand with::

    @command("build", "run the offline pipeline", configure=_build_args)
    def _build(args: argparse.Namespace) -> int: ...

``configure(parser)`` adds the subcommand's arguments; the function returns the exit code.

Exit codes: 0 ok; 1 runtime failure (server unreachable, store error, I/O); 2 bad input
(argparse errors, :class:`CLIError`, any offline input error such as a malformed dataset or
config, INVALID_ARGUMENT / NOT_FOUND answers from the server).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Callable

__all__ = ["CLIError", "RuntimeFailure", "Command", "COMMANDS", "command", "exit_code"]


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


def _is_offline_input_error(e: BaseException) -> bool:
    # offline.errors is only loaded by commands that ran offline code; an error from there
    # cannot exist otherwise, so there is nothing to import here.
    errors = sys.modules.get("offline.errors")
    return errors is not None and isinstance(e, errors.InputError)


def exit_code(e: BaseException) -> int | None:
    """The exit code for an exception raised by a command, or None to let it propagate."""
    if isinstance(e, CLIError) or _is_offline_input_error(e):
        return 2
    if isinstance(e, RuntimeFailure):
        return 1
    if isinstance(e, KeyboardInterrupt):
        return 130
    return None
