"""Build ovs-cni on demand from packaging/upstream/ovs-cni (a wrapper module, no build.json).

The binary lands in ~/.cache/dpf/bin/ovs-cni-<hash>/ovs, keyed by the wrapper's go.mod/go.sum and
the Go version, like packaging/install.py does for the tools every user needs.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "packaging" / "upstream" / "ovs-cni"
PACKAGE = "github.com/k8snetworkplumbingwg/ovs-cni/cmd/plugin"


def ensure_ovs_cni() -> Path:
    go = shutil.which("go")
    if go is None:
        raise SystemExit("bench/cni: `go` is not on PATH; it is needed once to build ovs-cni")
    version = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True, check=True).stdout.strip()
    h = hashlib.sha256(version.encode())
    for name in ("go.mod", "go.sum"):
        h.update((MODULE / name).read_bytes())
    cache = Path(os.environ.get("DPF_CACHE", Path.home() / ".cache" / "dpf")) / "bin"
    out = cache / f"ovs-cni-{h.hexdigest()[:16]}"
    exe = out / "ovs"
    if exe.exists():
        return exe
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    env = {**os.environ, "GOTOOLCHAIN": "local", "CGO_ENABLED": "0", "GOFLAGS": "-mod=readonly -buildvcs=false"}
    print(f"bench/cni: building ovs-cni from {PACKAGE} (first time only)", flush=True)
    subprocess.run([go, "build", "-trimpath", "-ldflags", "-s -w", "-o", str(tmp / "ovs"), PACKAGE], cwd=MODULE,
                   env=env, check=True)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return exe
