"""Generate the Python gRPC stubs in ``llmhyper/_proto/`` from ``protos/``.

Usage::

    python -m llmhyper.genproto            # regenerate the checked-in stubs
    python -m llmhyper.genproto --check    # exit 1 if the checked-in stubs are stale
    python -m llmhyper.genproto --out DIR  # write into another directory

protoc (from grpcio-tools) runs with ``protos/`` as the include root, so the
descriptor keeps its canonical name ``llmhyper/v1/ranker.proto`` (what server
reflection shows). The generated files are then flattened into one package and
the grpc module's absolute import is made relative, so the stubs work as
``llmhyper._proto.ranker_pb2`` without a top-level ``llmhyper.v1`` package.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_PROTO_ROOT = PACKAGE_DIR.parent / "protos"
DEFAULT_OUT = PACKAGE_DIR / "_proto"
PROTO_FILES = ("llmhyper/v1/ranker.proto",)

INIT_TEXT = '''"""Generated gRPC stubs for llmhyper.v1 (do not edit; run `python -m llmhyper.genproto`)."""
'''

# Lines that only record which protoc/grpcio-tools produced a file. The
# staleness check ignores them so a patch-level tool upgrade is not "stale".
_VERSION_STAMPS = (
    re.compile(r"^# Protobuf Python Version: .*$", re.M),
    re.compile(r"^GRPC_GENERATED_VERSION = .*$", re.M),
    re.compile(r"(ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,)\s*\d+,\s*\d+,\s*\d+,"),
)


def generate(out_dir: Path | str, proto_root: Path | str = DEFAULT_PROTO_ROOT) -> list[Path]:
    """Run protoc on every file in PROTO_FILES and write the flattened stubs to ``out_dir``.

    Returns the written paths. Raises RuntimeError if protoc fails.
    """
    from grpc_tools import protoc  # imported lazily: only needed to generate

    out_dir = Path(out_dir)
    proto_root = Path(proto_root)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="llmhyper-genproto-") as tmp:
        well_known = Path(protoc.__file__).resolve().parent / "_proto"
        args = [
            "grpc_tools.protoc",
            f"-I{proto_root}",
            f"-I{well_known}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *[str(proto_root / p) for p in PROTO_FILES],
        ]
        rc = protoc.main(args)
        if rc != 0:
            raise RuntimeError(f"protoc failed with exit code {rc} for {list(PROTO_FILES)}")
        for proto in PROTO_FILES:
            rel = Path(proto)
            stem = rel.stem
            module_path = ".".join(rel.with_suffix("").parts)  # llmhyper.v1.ranker
            for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
                src = Path(tmp) / rel.parent / f"{stem}{suffix}"
                text = src.read_text()
                # `from llmhyper.v1 import ranker_pb2 as ...` -> `from . import ranker_pb2 as ...`
                pkg = module_path.rsplit(".", 1)[0]
                text = text.replace(f"from {pkg} import {stem}_pb2", f"from . import {stem}_pb2")
                dst = out_dir / f"{stem}{suffix}"
                dst.write_text(text)
                written.append(dst)
    init = out_dir / "__init__.py"
    init.write_text(INIT_TEXT)
    written.append(init)
    return sorted(written)


def _normalise(text: str) -> str:
    for pattern in _VERSION_STAMPS:
        text = pattern.sub(lambda m: m.group(1) if m.groups() else "", text)
    return text


def stale_files(checked_in: Path | str = DEFAULT_OUT, proto_root: Path | str = DEFAULT_PROTO_ROOT) -> list[str]:
    """Regenerate into a temp dir and return the names of checked-in stubs that differ or are missing.

    An empty list means the checked-in stubs match ``protos/``.
    """
    checked_in = Path(checked_in)
    with tempfile.TemporaryDirectory(prefix="llmhyper-genproto-check-") as tmp:
        fresh = generate(tmp, proto_root)
        bad = []
        for path in fresh:
            old = checked_in / path.name
            if not old.exists() or _normalise(old.read_text()) != _normalise(path.read_text()):
                bad.append(path.name)
        return bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmhyper.genproto", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default: llmhyper/_proto)")
    parser.add_argument("--proto-root", type=Path, default=DEFAULT_PROTO_ROOT, help="include root holding llmhyper/v1/*.proto")
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 if the stubs in --out are stale")
    args = parser.parse_args(argv)
    if not (args.proto_root / PROTO_FILES[0]).exists():
        parser.error(f"proto file not found: {args.proto_root / PROTO_FILES[0]}")
    if args.check:
        bad = stale_files(args.out, args.proto_root)
        if bad:
            print(f"stale gRPC stubs in {args.out}: {', '.join(bad)}; run `python -m llmhyper.genproto`", file=sys.stderr)
            return 1
        print(f"gRPC stubs in {args.out} are up to date")
        return 0
    if args.out.exists() and args.out == DEFAULT_OUT:
        shutil.rmtree(args.out)
    for path in generate(args.out, args.proto_root):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
