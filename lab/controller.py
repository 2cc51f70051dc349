"""The dpf controller as the lab (and the end-to-end tests) run it: `dpf controller run` as a supervised
process with mTLS on a unix socket, and node certificates issued from the controller's CA Secret by the same
functions `dpf controller issue-node-cert` runs (in this process: a fleet of DPUs appearing at once on a loaded
machine started as many interpreters, which timed out).

The NodeState socket is a unix socket because the DPU agents run inside the emulated DPUs' network
namespaces, where the host's loopback is not reachable; TLS, client certificates and the node identity
check work over it exactly as over TCP (the agents expect the server name `localhost`).
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from dpf.controller.kube import clients
from dpf.controller.pki import CertificateAuthority, ensure_ca, write_agent_files
from dpf.controller.settings import TLSSettings
from dpf.lab.bed.process import Child, wait_until
from dpf.lab.dpus import AgentTLS

DPF = [sys.executable, "-m", "dpf.cli"]


@dataclass
class ControllerProcess:
    kubeconfig: Path
    namespace: str
    """Namespace of the controller's Lease and CA Secret, and of the host objects it watches."""
    workdir: Path
    bfb_dir: Path | None = None
    """The controller's BFB directory (`--bfb-dir`); None keeps the controller's default."""
    chart_mirrors: tuple[tuple[str, str], ...] = ()
    """`--chart-mirror FROM=TO` pairs: DPUService chart repositories installed from a mirror instead."""
    ca_file: Path | None = None
    """The CA bundle the controller and its Helm trust (SSL_CERT_FILE, replacing the system's), e.g. a loopback
    chart mirror's CA."""
    child: Child | None = None
    _ca: CertificateAuthority | None = field(default=None, init=False, repr=False)
    _ca_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @property
    def socket(self) -> Path:
        return self.workdir / "nodestate.sock"

    @property
    def endpoint(self) -> str:
        return f"unix:{self.socket}"

    def start(self, log_level: str = "info", resync_period: float = 600.0,
              startup_timeout: float = 30.0) -> ControllerProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.socket.unlink(missing_ok=True)  # a restart waits for the new server's socket, not the old one's
        argv = [*DPF, "controller", "run", "--kubeconfig", str(self.kubeconfig), "--namespace", self.namespace,
                "--watch-namespace", self.namespace, "--listen", self.endpoint, "--health-listen", "127.0.0.1:0",
                "--no-leader-elect", "--resync-period", str(resync_period), "--log-level", log_level,
                *(["--bfb-dir", str(self.bfb_dir)] if self.bfb_dir else []),
                *(arg for public, mirror in self.chart_mirrors for arg in ("--chart-mirror", f"{public}={mirror}"))]
        env = {**os.environ, "SSL_CERT_FILE": str(self.ca_file)} if self.ca_file else None
        self.child = Child("dpf-controller", argv, self.workdir / "controller.log", env=env)
        wait_until(self.socket.exists, startup_timeout, "the controller's NodeState socket", while_alive=[self.child])
        return self

    def issue_node_cert(self, node: str, out: Path, role: str = "dpu") -> AgentTLS:
        """`node`'s agent files in `out`, as `dpf controller issue-node-cert` writes them. Thread-safe: the CA is
        read (or made) once, on a thread of its own so that a caller inside an event loop may call this too."""
        with self._ca_lock:
            if self._ca is None:
                with ThreadPoolExecutor(1) as pool:
                    self._ca = pool.submit(asyncio.run, _load_ca(self.kubeconfig, self.namespace)).result(60)
            ca = self._ca
        write_agent_files(out, ca, ca.issue_node(node, role, validity_days=TLSSettings.cert_validity_days))
        return AgentTLS(out)

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()
            self.child = None


async def _load_ca(kubeconfig: Path, namespace: str) -> CertificateAuthority:
    rest = await clients.from_kubeconfig_file(kubeconfig)
    try:
        return await ensure_ca(rest, namespace, TLSSettings.ca_secret)
    finally:
        await rest.close()
