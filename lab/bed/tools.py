"""Locate the binaries the bed runs: upstream Go builds in `.venv/tools`, Debian's in /usr."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Built from the pinned wrapper modules in packaging/upstream/ by packaging/install.py.
GO_TOOLS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kubelet", "etcd", "cnitool",
            "multus", "argocd")


class ToolMissing(RuntimeError):
    pass


def tools_dir() -> Path:
    return Path(os.environ.get("DPF_TOOLS_DIR", REPO / ".venv" / "tools"))


def tool(name: str) -> str:
    """Absolute path of `name`; a clear error naming the fix when it is absent."""
    if name in GO_TOOLS:
        path = tools_dir() / name
        if path.exists():
            return str(path)
        raise ToolMissing(f"{name} not found in {tools_dir()}: run `./dev setup` (builds it from packaging/upstream/)")
    found = shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin:/usr/lib/cni")
    if found:
        return found
    raise ToolMissing(f"{name} not found on PATH: run `./dev setup` (installs the Debian packages the bed needs)")
