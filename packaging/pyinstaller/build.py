#!/usr/bin/env python3
"""Build the SFC CNI binary (onedir) once per content hash, into a cache outside the repository.

    python packaging/pyinstaller/build.py        # prints the path of the dpf-sfc-cni executable

The key covers the shim's sources, the spec, and the PyInstaller and Python versions, so an
unchanged tree is a cache hit (the tests and bench/cni call `ensure_binary`). The result is
published with a rename, so a half-built directory is never mistaken for a hit.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SPEC = HERE / "dpf-sfc-cni.spec"
NAME = "dpf-sfc-cni"
SOURCES = [REPO / "dpf" / "__init__.py", REPO / "cni" / "__init__.py", REPO / "cni" / "shim.py",
           REPO / "cni" / "wire.py", SPEC, HERE / "dpf_sfc_cni.py"]


def cache_root() -> Path:
    return Path(os.environ.get("DPF_CACHE", Path.home() / ".cache" / "dpf")) / "cni-build"


def build_key() -> str:
    import PyInstaller

    h = hashlib.sha256(f"{PyInstaller.__version__} {sys.version}".encode())
    for path in SOURCES:
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()[:16]


def ensure_binary() -> Path:
    out = cache_root() / build_key()
    exe = out / "dist" / NAME / NAME
    if exe.exists():
        os.utime(out)  # in use: packaging/install.py prunes builds nothing has used for weeks
        return exe
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent sessions build once
        if not exe.exists():
            tmp = out.with_name(out.name + ".partial")
            shutil.rmtree(tmp, ignore_errors=True)
            result = subprocess.run([sys.executable, "-m", "PyInstaller", "--noconfirm", "--log-level", "WARN",
                                     "--distpath", str(tmp / "dist"), "--workpath", str(tmp / "work"), str(SPEC)],
                                    capture_output=True, text=True, timeout=600)
            if result.returncode != 0:
                raise RuntimeError(f"PyInstaller failed:\n{result.stderr[-3000:]}")
            shutil.rmtree(tmp / "work", ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                os.rename(tmp, out)
    return exe


if __name__ == "__main__":
    print(ensure_binary())
