"""The lab's BFB step: upstream's `bf-bundle` BFB object, downloaded by the dpf controller into its BFB directory.

The lab cannot reach NVIDIA's content server, so it serves a stand-in BFB file (random bytes, the real name) from
a small HTTP server on loopback and points the BFB's `spec.url` at it; everything after that is the controller's
real download path: phases Initializing → Downloading → Ready, a `SuccessfulDownload` Event, and the file under
the BFB directory with the name the BFB's `fileName` default gives (`<namespace>-<name>.bfb`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import threading
import time
from collections.abc import Callable
from pathlib import Path

from dpf.lab.bed.kube import ControlPlane
from dpf.lab.bed.process import wait_until

BFB_NAME = "bf-bundle"
SERVED_FILE = "bf-bundle-2.9.1-30_24.11_ubuntu-22.04_prod.bfb"  # upstream's example URL's file name
SIZE = 64 * 1024 * 1024
READY_TIMEOUT = 60.0


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def _phase(host: ControlPlane, namespace: str) -> str:
    return host.kubectl("get", "bfb", BFB_NAME, "-n", namespace, "-o", "jsonpath={.status.phase}").stdout.strip()


def bfb_manifest(namespace: str, url: str) -> str:
    """Upstream's hbn_only `04-dpuservice-installation/bfb.yaml` with `$BLUEFIELD_BITSTREAM` = `url`."""
    return (f"apiVersion: provisioning.dpu.nvidia.com/v1alpha1\nkind: BFB\nmetadata:\n  name: {BFB_NAME}\n"
            f"  namespace: {namespace}\nspec:\n  url: {url}\n")


class BfbDemo:
    def __init__(self, host: ControlPlane, workdir: Path, namespace: str, stack: contextlib.ExitStack,
                 say: Callable[[str], None]) -> None:
        self.host = host
        self.namespace = namespace
        self.served = workdir / "bfb-server"
        self.bfb_dir = workdir / "bfb"
        self.stack = stack
        self.say = say
        self.file: Path | None = None

    def prepare(self) -> Path:
        """The controller's BFB directory (it must exist before the controller starts)."""
        self.bfb_dir.mkdir(parents=True, exist_ok=True)
        return self.bfb_dir

    def start(self) -> None:
        url, digest = self._serve()
        self.say(f"applying BFB {BFB_NAME} (upstream's bfb.yaml) with spec.url = {url}")
        started = time.monotonic()
        self.host.kubectl("apply", "-f", "-", input=bfb_manifest(self.namespace, url))
        seen: list[str] = []

        def ready() -> bool:
            phase = _phase(self.host, self.namespace)
            if phase and (not seen or seen[-1] != phase):
                seen.append(phase)
            return phase == "Ready"

        wait_until(ready, READY_TIMEOUT, f"BFB {BFB_NAME} to reach phase Ready", interval=0.1)
        self.file = self.bfb_dir / f"{self.namespace}-{BFB_NAME}.bfb"
        got = hashlib.sha256(self.file.read_bytes()).hexdigest()
        if got != digest:
            raise RuntimeError(f"{self.file}: sha256 {got} differs from the served file's {digest}")
        self.say(f"BFB {BFB_NAME}: phases {' -> '.join(seen)} in {time.monotonic() - started:.1f}s; "
                 f"{SIZE // 2**20} MiB cached as {self.file} (sha256 matches the served file)")

    def usage(self) -> str:
        return (f"BFB {BFB_NAME} is cached at {self.file}; delete it and the controller downloads it again:\n"
                f"  rm {self.file}    # then: kubectl get bfb -n {self.namespace} -w")

    def _serve(self) -> tuple[str, str]:
        self.served.mkdir(parents=True, exist_ok=True)
        path = self.served / SERVED_FILE
        data = hashlib.shake_256(b"dpf lab bfb").digest(SIZE)  # deterministic stand-in, no entropy needed
        path.write_bytes(data)
        handler = functools.partial(_QuietHandler, directory=str(self.served))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        thread = threading.Thread(target=server.serve_forever, name="lab-bfb-http", daemon=True)
        thread.start()
        self.stack.callback(server.server_close)
        self.stack.callback(server.shutdown)
        return f"http://127.0.0.1:{server.server_port}/{SERVED_FILE}", hashlib.sha256(data).hexdigest()
