#!/usr/bin/env python3
"""The one install step shared by `./dev lab` and `./dev test`.

Idempotent and fast when nothing changed:
  1. Debian packages the lab and tests run for real (OVS, CNI plugins, iproute2, ...).
  2. A virtualenv in `.venv` with this project installed in editable mode.
  3. Upstream Go components (kube-apiserver, kubectl, etcd, cnitool, multus), each built from a
     pinned wrapper module under `packaging/upstream/` into a cache outside the repository,
     keyed by the module's content and the Go version, then linked into `.venv/tools/`.

Standard library only: it runs before the virtualenv exists.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".venv"
TOOLS_DIR = VENV / "tools"
UPSTREAM = REPO / "packaging" / "upstream"
CACHE = Path(os.environ.get("DPF_CACHE", Path.home() / ".cache" / "dpf"))
STALE_DAYS = 14  # cache entries unused this long are removed
MIN_GO = (1, 26)
MIN_PYTHON = (3, 11)

# Debian packages the lab and the tests run for real.
DEBIAN_PACKAGES = (
    "openvswitch-switch",  # ovsdb-server, ovs-vswitchd, ovs-vsctl/ofctl (userspace datapath)
    "containernetworking-plugins",  # /usr/lib/cni reference plugins
    "iproute2",
    "ethtool",  # TX checksum offload off on pod veths (TCP through the netdev datapath)
    "iputils-ping",
    "iperf3",
    "tcpdump",
    "python3-venv",  # Debian's python3 cannot create a virtualenv without it
    "git",  # DPUService charts from git repositories (controller/gitcharts.py); git daemon in their test
    # A real kubelet per emulated DPU (lab/bed/kubelet.py):
    "containerd",
    "runc",
    "busybox-static",  # rootfs of the local pod and sandbox image (lab/bed/images.py)
    "conntrack",  # kubelet and kube-proxy expect these on a node
    "socat",
    "redis-server",  # ArgoCD's cache (lab/bed/argocd.py: the DPUService argocd backend run against real ArgoCD)
)


class InstallError(SystemExit):
    """Printed as one clear line naming what is missing and how to get it."""

    def __init__(self, message: str) -> None:
        super().__init__(f"install: error: {message}")


def say(message: str) -> None:
    print(f"install: {message}", flush=True)


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, **kwargs)


# -- 1. Debian packages ---------------------------------------------------------------------------


def missing_debian_packages() -> list[str]:
    if shutil.which("dpkg-query") is None:
        raise InstallError("this install step supports Debian (dpkg/apt); install the equivalents of "
                           + ", ".join(DEBIAN_PACKAGES) + " by hand and rerun with --skip-apt")
    result = subprocess.run(["dpkg-query", "-W", "-f=${Package} ${db:Status-Abbrev}\n", *DEBIAN_PACKAGES],
                            capture_output=True, text=True)
    installed = {line.split()[0] for line in result.stdout.splitlines() if line.split()[1:2] == ["ii"]}
    return [pkg for pkg in DEBIAN_PACKAGES if pkg not in installed]


def ensure_debian_packages() -> None:
    missing = missing_debian_packages()
    if not missing:
        say(f"debian packages: {len(DEBIAN_PACKAGES)} present (cache hit)")
        return
    if os.geteuid() != 0:
        raise InstallError(f"missing {', '.join(missing)}: run as root, or `sudo apt-get install {' '.join(missing)}`")
    say(f"debian packages: installing {', '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    started = time.monotonic()
    run(["apt-get", "update", "-qq"], env=env)
    # policy-rc.d in these images keeps the packaged OVS services from starting: the lab and the
    # tests run their own ovsdb-server/ovs-vswitchd in private run directories.
    run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env=env, stdout=subprocess.DEVNULL)
    still = missing_debian_packages()
    if still:
        raise InstallError(f"apt-get finished but {', '.join(still)} is still missing")
    say(f"debian packages: installed in {time.monotonic() - started:.1f}s")


# -- 2. virtualenv ----------------------------------------------------------------------------------


def digest(paths: list[Path], extra: str = "") -> str:
    h = hashlib.sha256(extra.encode())
    for path in paths:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def ensure_venv() -> None:
    if sys.version_info < MIN_PYTHON:
        raise InstallError(f"Python {'.'.join(map(str, MIN_PYTHON))}+ is required, this is {sys.version.split()[0]}")
    python = VENV / "bin" / "python"
    if not python.exists():
        say(f"virtualenv: creating {VENV.relative_to(REPO)} with {sys.executable}")
        run([sys.executable, "-m", "venv", str(VENV)])
    key = digest([REPO / "pyproject.toml", REPO / "setup.py"], extra=sys.version)
    stamp = VENV / ".dpf-installed"
    if stamp.exists() and stamp.read_text() == key:
        say("virtualenv: up to date (cache hit)")
        return
    say("virtualenv: installing dpf and its test dependencies (pip)")
    started = time.monotonic()
    run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-e", f"{REPO}[test]"])
    stamp.write_text(key)
    say(f"virtualenv: ready in {time.monotonic() - started:.1f}s")


# -- 3. upstream Go components ---------------------------------------------------------------------


def go_version() -> tuple[str, tuple[int, int]]:
    go = shutil.which("go")
    if go is None:
        raise InstallError(
            f"Go {MIN_GO[0]}.{MIN_GO[1]}+ is needed to build the upstream components once; `go` is not on PATH")
    out = subprocess.run([go, "env", "GOVERSION"], check=True, capture_output=True, text=True).stdout.strip()
    parts = out.removeprefix("go").split(".")
    return out, (int(parts[0]), int(parts[1]))


def module_cache_dir(module: Path) -> Path:
    # Keyed by what pins the build (not the Go version), so a warm cache needs no Go toolchain.
    key = digest([module / "go.mod", module / "go.sum", module / "build.json"])
    return CACHE / "bin" / f"{module.name}-{key}"


def build_module(module: Path, out: Path) -> None:
    """Build `module` into `out`, once for every checkout on this machine: concurrent installs (worktrees, CI
    beside a developer) wait for the one that builds, instead of each building into the same staging directory."""
    spec = json.loads((module / "build.json").read_text())
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_name(out.name + ".lock"), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"go: {module.name}: another install is building it; waiting for that build")
            fcntl.flock(lock, fcntl.LOCK_EX)
        if all((out / name).exists() for name in spec["binaries"]):
            return  # the other install built it meanwhile
        _build_module(module, spec, out)


def _build_module(module: Path, spec: dict[str, Any], out: Path) -> None:
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # The local Go unless build.json pins a newer "toolchain" (argo-cd needs Go 1.27), which `go` then fetches once
    # through the module proxy (GOPROXY) into the module cache.
    toolchain = spec.get("toolchain", "local")
    env = {**os.environ, "GOTOOLCHAIN": toolchain, "CGO_ENABLED": "0", "GOFLAGS": "-mod=readonly -buildvcs=false"}
    started = time.monotonic()
    say(f"go: {module.name}: not cached, building {', '.join(spec['binaries'])} (once; kube-apiserver takes minutes)")
    for name, package in spec["binaries"].items():
        say(f"go: building {name} from {package}")
        cmd = ["go", "build", "-trimpath", "-ldflags", spec.get("ldflags", ""), "-o", str(tmp / name), package]
        result = subprocess.run(cmd, cwd=module, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise InstallError(f"building {name} in {module.relative_to(REPO)} failed:\n{result.stderr[-4000:]}")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)  # atomic publish: a half-built directory is never mistaken for a cache hit
    say(f"go: {module.name} built in {time.monotonic() - started:.0f}s -> {out}")


def prune_stale(parent: Path, keep: set[Path], pattern: str = "*") -> None:
    """Remove cache entries under `parent` matching `pattern` that nothing has used for STALE_DAYS.

    Entries in use are touched on every hit, so only builds of pins that moved on age out; another
    checkout on this machine still at an old pin within that window keeps its build.
    """
    if not parent.is_dir():
        return
    cutoff = time.time() - STALE_DAYS * 86400
    for entry in parent.glob(pattern):
        if entry.is_dir() and entry not in keep and entry.stat().st_mtime < cutoff:
            size = sum(f.stat().st_size for f in entry.rglob("*") if f.is_file() and not f.is_symlink())
            shutil.rmtree(entry, ignore_errors=True)
            say(f"cache: removed {entry} (unused for {STALE_DAYS}+ days, {size / 1e6:.0f} MB)")


def ensure_module_files(module: Path, spec: dict[str, Any], out: Path) -> list[str]:
    """Copy the files `files.json` names out of the pinned upstream module into the build cache beside its binaries
    (once), so that the bed reads them from the tools directory, never from the Go module cache. Returns the
    top-level names to link into the tools directory."""
    listing = module / "files.json"
    if not listing.exists():
        return []
    wanted: dict[str, str] = json.loads(listing.read_text())["files"]
    missing = {dest: source for dest, source in wanted.items() if not (out / dest).exists()}
    if missing:
        env = {**os.environ, "GOTOOLCHAIN": spec.get("toolchain", "local"), "GOFLAGS": "-mod=readonly"}
        name = json.loads(listing.read_text())["module"]
        result = subprocess.run(["go", "mod", "download", "-json", name], cwd=module, env=env, capture_output=True,
                                text=True)
        if result.returncode != 0:
            raise InstallError(f"go mod download {name} (for {listing.relative_to(REPO)}) failed:\n"
                               f"{(result.stderr or result.stdout)[-2000:]}")
        source_dir = Path(json.loads(result.stdout)["Dir"])
        for dest, source in missing.items():
            target = out / dest
            target.parent.mkdir(parents=True, exist_ok=True)
            staged = target.with_name(target.name + ".partial")
            shutil.copyfile(source_dir / source, staged)
            staged.replace(target)  # atomic: a half-copied file is never taken for a present one
        say(f"go: {module.name}: {len(missing)} file(s) of {name} kept beside the binaries")
    return sorted({dest.split("/", 1)[0] for dest in wanted})


def ensure_go_components(only: str | None = None) -> None:
    """Build (or take from the cache) and link every upstream module, or just `only`. Modules whose build.json
    says `"on_demand": true` (kwok, for the provisioning bench) are built only when named."""
    TOOLS_DIR.mkdir(parents=True, exist_ok=True)
    for module in sorted(p for p in UPSTREAM.iterdir() if (p / "build.json").exists()):
        spec = json.loads((module / "build.json").read_text())
        if (module.name != only) if only else spec.get("on_demand", False):
            continue
        out = module_cache_dir(module)
        if all((out / name).exists() for name in spec["binaries"]):
            os.utime(out)  # in use: keeps prune_stale away
            say(f"go: {module.name}: {', '.join(spec['binaries'])} (cache hit)")
        else:
            found, version = go_version()
            if version < MIN_GO and "toolchain" not in spec:
                raise InstallError(f"Go {MIN_GO[0]}.{MIN_GO[1]}+ is required to build {module.name}, found {found}")
            build_module(module, out)
        linked = list(spec["binaries"]) + ensure_module_files(module, spec, out)
        for name in linked:
            staged = TOOLS_DIR / f".{name}.new"
            staged.unlink(missing_ok=True)
            staged.symlink_to(out / name)
            staged.replace(TOOLS_DIR / name)  # atomic: a running test never sees the tool missing
        prune_stale(out.parent, {out}, f"{module.name}-*")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-apt", action="store_true", help="do not check or install Debian packages")
    parser.add_argument("--module", help="only build (or link from the cache) this upstream module, e.g. kwok")
    args = parser.parse_args()
    started = time.monotonic()
    if args.module:
        if not (UPSTREAM / args.module / "build.json").exists():
            raise InstallError(f"no upstream module {args.module!r} under {UPSTREAM.relative_to(REPO)}")
        ensure_go_components(args.module)
        say(f"done in {time.monotonic() - started:.1f}s")
        return 0
    if not args.skip_apt:
        ensure_debian_packages()
    ensure_venv()
    ensure_go_components()
    prune_stale(CACHE / "cni-build", set())  # PyInstaller builds of the CNI shim (packaging/pyinstaller/build.py)
    say(f"done in {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
