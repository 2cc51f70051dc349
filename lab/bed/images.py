"""Container images without a registry: a busybox OCI image built by hand and imported into a containerd.

The rootfs is Debian's static busybox with a link per applet and a minimal /etc/passwd, in one deterministic layer
(sorted, mtime 0, owner 0, gzip without a timestamp), so the same machine always builds the same digest. The
image serves both as the kubelet's sandbox ("pause") image and as a pod image with `imagePullPolicy: Never`.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import platform
import subprocess
import tarfile
from pathlib import Path

from dpf.lab.bed.tools import tool

BUSYBOX_IMAGE = "dpf.local/busybox:1"
BUSYBOX_BINARY = Path("/bin/busybox")  # busybox-static
# What a container runs when its pod says nothing: sleep (a sandbox's only job), for as long as a signed int allows.
DEFAULT_CMD = ("/bin/sleep", "2147483647")
_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}
_ETC = {
    "etc/passwd": b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    "etc/group": b"root:x:0:\nnogroup:x:65534:\n",
}


def _member(name: str, kind: bytes, mode: int, size: int = 0, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.linkname = kind, mode, size, link
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    return info


def _layer(busybox: Path) -> bytes:
    applets = subprocess.run([str(busybox), "--list"], check=True, capture_output=True, text=True).stdout.split()
    binary = busybox.read_bytes()
    entries: list[tuple[tarfile.TarInfo, bytes | None]] = [
        (_member(d, tarfile.DIRTYPE, 0o755 if d != "tmp" else 0o1777), None)
        for d in ("bin", "dev", "etc", "proc", "root", "sys", "tmp", "var")]
    entries.append((_member("bin/busybox", tarfile.REGTYPE, 0o755, len(binary)), binary))
    entries += [(_member(f"bin/{a}", tarfile.SYMTYPE, 0o777, link="busybox"), None)
                for a in applets if a != "busybox"]
    entries += [(_member(path, tarfile.REGTYPE, 0o644, len(data)), data) for path, data in _ETC.items()]
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in sorted(entries, key=lambda e: e[0].name):
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def _blob(blobs: dict[str, bytes], data: bytes) -> dict[str, object]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs[digest] = data
    return {"digest": digest, "size": len(data)}


def build_busybox_image(directory: Path, name: str = BUSYBOX_IMAGE, busybox: Path = BUSYBOX_BINARY) -> Path:
    """Write `<directory>/busybox-oci.tar` (an OCI image layout named `name`) and return its path."""
    if not busybox.exists():
        raise FileNotFoundError(f"{busybox} not found: run `./dev setup` (installs busybox-static)")
    arch = _ARCH.get(platform.machine(), platform.machine())
    layer = _layer(busybox)
    compressed = gzip.compress(layer, mtime=0)
    blobs: dict[str, bytes] = {}
    config = {
        "architecture": arch, "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": list(DEFAULT_CMD), "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]},
    }
    manifest = {
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   **_blob(blobs, json.dumps(config, sort_keys=True).encode())},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **_blob(blobs, compressed)}],
    }
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        **_blob(blobs, json.dumps(manifest, sort_keys=True).encode()),
        "platform": {"architecture": arch, "os": "linux"},
        "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1]},
    }]}
    files = {"oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
             "index.json": json.dumps(index, sort_keys=True).encode(),
             **{f"blobs/sha256/{d.removeprefix('sha256:')}": data for d, data in blobs.items()}}
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "busybox-oci.tar"
    partial = path.with_suffix(".partial")
    with tarfile.open(partial, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for d in ("blobs", "blobs/sha256"):
            tar.addfile(_member(d, tarfile.DIRTYPE, 0o755))
        for member_name, data in sorted(files.items()):
            tar.addfile(_member(member_name, tarfile.REGTYPE, 0o644, len(data)), io.BytesIO(data))
    partial.rename(path)
    return path


def import_image(containerd_socket: Path, image_tar: Path, namespace: str = "k8s.io") -> None:
    """Import (and unpack) `image_tar` into the containerd listening on `containerd_socket` (CRI uses `k8s.io`)."""
    result = subprocess.run([tool("ctr"), "-a", str(containerd_socket), "-n", namespace, "images", "import",
                             str(image_tar)], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"ctr images import {image_tar} failed: {result.stderr.strip()[-2000:]}")
