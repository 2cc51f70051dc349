"""A real Kubernetes control plane on loopback: etcd, kube-apiserver and kube-controller-manager.

TLS with a generated CA, RBAC, service-account keys and an admin kubeconfig. By default the controller
manager runs only the garbage collector (ownerReference cascades) and the namespace controller
(namespace deletion): no scheduler and no kubelet, since DPF's objects are custom resources and
our own controller reconciles them. A DPU cluster that real kubelets join (`dpucluster.py`) sets the
options for more: listen address, authorization mode, controllers.
"""

from __future__ import annotations

import functools
import json
import os
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from kubernetes.client import ApiClient
from kubernetes.config import new_client_from_config

from dpf.lab.bed.pki import Authority, write_keypair
from dpf.lab.bed.process import Child, free_port, wait_until
from dpf.lab.bed.tools import REPO, tool

CRD_DIR = REPO / "packaging" / "crds"
STARTUP_TIMEOUT = 90.0
SERVICE_CIDR = "10.96.0.0/16"


class KubectlError(subprocess.CalledProcessError):
    """A failed kubectl run whose message carries kubectl's own error (CalledProcessError hides stderr)."""

    def __str__(self) -> str:
        return f"{super().__str__()}: {(self.stderr or '').strip()[-2000:]}"


@dataclass
class ControlPlane:
    """etcd + kube-apiserver under `workdir`; `start()` returns when /readyz is ok."""

    workdir: Path
    name: str = "host"
    address: str = "127.0.0.1"
    """Where kube-apiserver listens and what it advertises (also an IP SAN of its serving certificate): a DPU
    cluster's is a bridge address its nodes' network namespaces reach."""
    authorization_mode: str = "RBAC"
    extra_apiserver_args: list[str] = field(default_factory=list)
    controllers: tuple[str, ...] = ("garbagecollector", "namespace")
    """kube-controller-manager's `--controllers`."""
    extra_controller_manager_args: list[str] = field(default_factory=list)
    crd_dir: Path | None = CRD_DIR
    """CRDs installed by `start()` before kube-controller-manager starts (its garbage collector then knows the
    custom kinds at once instead of at its first 30 s discovery resync); None installs none."""
    crds: list[str] = field(default_factory=list)
    """Names of the CRDs `start()` installed."""
    children: list[Child] = field(default_factory=list)
    server: str = ""
    kubeconfig: Path = field(init=False)
    authority: Authority = field(init=False)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.kubeconfig = self.workdir / "admin.kubeconfig"

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> ControlPlane:
        started = time.monotonic()
        try:
            pki = self._write_pki()
            etcd_url = self._start_etcd()
            self._start_apiserver(pki, etcd_url)
            self._write_kubeconfig(pki)
            wait_until(self._ready, STARTUP_TIMEOUT, f"kube-apiserver ({self.name}) /readyz",
                       interval=0.2, while_alive=self.children)
            if self.crd_dir is not None:
                self.crds = self.install_crds(self.crd_dir)
            self._start_controller_manager()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()
        self.children.clear()

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- pieces --------------------------------------------------------------------------------

    def _write_pki(self) -> dict[str, Path]:
        ca = self.authority = Authority(self.workdir / "pki", common_name=f"dpf-{self.name}-ca")
        serving = ca.issue("apiserver", "kube-apiserver", server=True,
                           dns=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"),
                           ips=tuple(dict.fromkeys(("127.0.0.1", self.address, "10.96.0.1"))))
        admin = ca.issue("admin", "dpf-admin", organizations=("system:masters",), client=True)
        sa = write_keypair(self.workdir / "pki", "sa")
        return {"ca": ca.cert_path, "serving_cert": serving.cert, "serving_key": serving.key,
                "admin_cert": admin.cert, "admin_key": admin.key, "sa_pub": sa.cert, "sa_key": sa.key}

    def _start_etcd(self) -> str:
        client_port, peer_port = free_port(), free_port()
        client_url, peer_url = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
        etcd = Child(f"etcd ({self.name})", [
            tool("etcd"), "--name", "bed", "--data-dir", str(self.workdir / "etcd"),
            "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
            "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"bed={peer_url}", "--log-level", "warn",
            # Loopback only, data in a temp dir: durability is not the point, speed is.
            "--unsafe-no-fsync", "--quota-backend-bytes", str(2 * 1024**3),
        ], self.workdir / "etcd.log")
        self.children.append(etcd)
        wait_until(lambda: _http_ok(f"{client_url}/health"), 30, f"etcd ({self.name}) /health",
                   while_alive=[etcd])
        return client_url

    def _start_apiserver(self, pki: dict[str, Path], etcd_url: str) -> None:
        port = free_port()
        self.server = f"https://{self.address}:{port}"
        apiserver = Child(f"kube-apiserver ({self.name})", [
            tool("kube-apiserver"),
            f"--etcd-servers={etcd_url}",
            f"--bind-address={self.address}", f"--advertise-address={self.address}", f"--secure-port={port}",
            f"--cert-dir={self.workdir / 'pki'}",
            f"--tls-cert-file={pki['serving_cert']}", f"--tls-private-key-file={pki['serving_key']}",
            f"--client-ca-file={pki['ca']}",
            f"--service-account-key-file={pki['sa_pub']}",
            f"--service-account-signing-key-file={pki['sa_key']}",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--authorization-mode={self.authorization_mode}",
            # No kube-controller-manager here: the endpoint reconciler would wait for it in vain.
            "--endpoint-reconciler-type=none",
            "--enable-priority-and-fairness=false",
            "--profiling=false",
            *self.extra_apiserver_args,
        ], self.workdir / "kube-apiserver.log")
        self.children.append(apiserver)

    def _start_controller_manager(self) -> None:
        self.children.append(Child(f"kube-controller-manager ({self.name})", [
            tool("kube-controller-manager"), f"--kubeconfig={self.kubeconfig}",
            f"--controllers={','.join(self.controllers)}", "--leader-elect=false",
            "--bind-address=127.0.0.1", f"--secure-port={free_port()}",
            f"--cert-dir={self.workdir / 'kcm'}",
            *self.extra_controller_manager_args,
        ], self.workdir / "kube-controller-manager.log"))

    def _write_kubeconfig(self, pki: dict[str, Path]) -> None:
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": self.name,
            "clusters": [{"name": self.name, "cluster": {"server": self.server,
                                                         "certificate-authority": str(pki["ca"])}}],
            "users": [{"name": "admin", "user": {"client-certificate": str(pki["admin_cert"]),
                                                 "client-key": str(pki["admin_key"])}}],
            "contexts": [{"name": self.name, "context": {"cluster": self.name, "user": "admin"}}],
        }
        self.kubeconfig.write_text(yaml.safe_dump(config))
        self._tls = ssl.create_default_context(cafile=str(pki["ca"]))
        self._tls.load_cert_chain(str(pki["admin_cert"]), str(pki["admin_key"]))

    def _ready(self) -> bool:
        return _http_ok(f"{self.server}/readyz", self._tls)

    # -- use ------------------------------------------------------------------------------------

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run the kubectl built with this apiserver's version against this cluster."""
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        result = subprocess.run([tool("kubectl"), *args], input=input, capture_output=True, text=True,
                                env=env, timeout=timeout)
        if check and result.returncode != 0:
            raise KubectlError(result.returncode, result.args, result.stdout, result.stderr)
        return result

    def delete_namespace(self, name: str, timeout: float = 120) -> None:
        """Delete a namespace and return once it is gone: the session's cluster outlives a test, and the next
        test that creates the same name is refused while the namespace is still terminating."""
        try:
            self.kubectl("delete", "namespace", name, "--ignore-not-found", "--wait=true",
                         f"--timeout={int(timeout)}s", timeout=timeout + 10)
        except KubectlError as exc:
            # The namespace's conditions name what holds it (content left, finalizers, a failed discovery).
            shown = self.kubectl("get", "namespace", name, "-o", "jsonpath={.status.conditions}", check=False)
            raise KubectlError(exc.returncode, exc.cmd, exc.output,
                               f"{exc.stderr.strip()}; the namespace's conditions: {shown.stdout}") from exc

    def install_crds(self, directory: Path = CRD_DIR, timeout: float = 60) -> list[str]:
        """Apply every CRD manifest in `directory` and wait until each is Established."""
        files = sorted(directory.glob("*.yaml")) if directory.is_dir() else []
        if not files:
            return []
        self.kubectl("apply", "--server-side", "--force-conflicts", *(a for f in files for a in ("-f", str(f))))
        names = [doc["metadata"]["name"] for f in files for doc in yaml.safe_load_all(f.read_text())
                 if doc and doc.get("kind") == "CustomResourceDefinition"]
        if names:
            self.kubectl("wait", "--for=condition=Established", f"--timeout={int(timeout)}s",
                         *(f"crd/{n}" for n in names), timeout=timeout + 10)
        return names

    @functools.cached_property
    def client(self) -> ApiClient:
        """An official-client ApiClient authenticated as the bed's admin."""
        return new_client_from_config(str(self.kubeconfig))

    def version(self) -> str:
        out = self.kubectl("version", "-o", "json").stdout
        return json.loads(out)["serverVersion"]["gitVersion"]


def _http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:
            return response.status == 200
    except OSError:
        return False
