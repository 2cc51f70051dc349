"""Generate the checked-in Python stubs from the .proto files: `python -m dpf.proto.build [--check]`.

Stubs are checked in (not generated at install) so that running dpf needs no protoc, and diffs of the
contract are reviewable; `--check` (and tests/controlplane/test_proto.py) fails when they are stale.
protoc runs with the include root arranged as `dpf/proto/v1/*.proto`, so the generated `_grpc.py`
imports `from dpf.proto.v1 import nodestate_pb2`. grpcio-tools is pinned in pyproject.toml because its
output embeds the protobuf version.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

HERE = Path(__file__).resolve().parent
VERSIONS = ("v1",)
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generate(into: Path) -> dict[str, bytes]:
    """Run protoc over every .proto under proto/<version>/; return generated relative path -> content."""
    root = into / "include"
    out = into / "out"
    out.mkdir(parents=True)
    protos: list[str] = []
    for version in VERSIONS:
        target = root / "dpf" / "proto" / version
        target.mkdir(parents=True)
        for proto in sorted((HERE / version).glob("*.proto")):
            shutil.copy(proto, target / proto.name)
            protos.append(f"dpf/proto/{version}/{proto.name}")
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    argv = ["protoc", f"-I{root}", f"-I{well_known}", f"--python_out={out}", f"--pyi_out={out}",
            f"--grpc_python_out={out}", *protos]
    if protoc.main(argv) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(argv)}")
    generated = {}
    for path in sorted((out / "dpf" / "proto").rglob("*")):
        if path.is_file() and path.name.endswith(SUFFIXES):
            generated[str(path.relative_to(out / "dpf" / "proto"))] = path.read_bytes()
    return generated


def stale() -> list[str]:
    """Relative paths whose checked-in content differs from a fresh generation (or that are missing/extra)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
    present = {str(p.relative_to(HERE)): p.read_bytes() for version in VERSIONS
               for p in (HERE / version).iterdir() if p.name.endswith(SUFFIXES)}
    return sorted(name for name in fresh.keys() | present.keys() if fresh.get(name) != present.get(name))


def write() -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
    for version in VERSIONS:
        for old in (HERE / version).iterdir():
            if old.name.endswith(SUFFIXES) and str(old.relative_to(HERE)) not in fresh:
                old.unlink()
    for name, content in fresh.items():
        (HERE / name).write_bytes(content)
    return sorted(fresh)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dpf.proto.build", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the checked-in stubs are stale")
    args = parser.parse_args(argv)
    if args.check:
        names = stale()
        if names:
            print(f"stale generated stubs: {', '.join(names)}; run: python -m dpf.proto.build", file=sys.stderr)
            return 1
        print("generated stubs are fresh")
        return 0
    for name in write():
        print(f"wrote proto/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
