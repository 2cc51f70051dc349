"""ArgoCD for real on loopback: Redis, `argocd-repo-server` and `argocd-application-controller` as children.

What the DPUService `argocd` backend needs ArgoCD for (controller/argocd.py): watch Applications in the operator
namespace, render their Helm charts (the repo server runs the install step's `helm`, v4, which ArgoCD 3.6 supports),
sync them into the clusters named by Argo cluster Secrets, write sync/health status, and delete what it deployed
when an Application with `resources-finalizer.argocd.argoproj.io` is deleted. No API server, UI, Dex,
ApplicationSet or notifications controller: nothing here talks to them.

The binary is ArgoCD's multi-call `argocd` (packaging/upstream/argocd, v3.6.2; ARGOCD_BINARY_NAME picks the
component). `start()` installs ArgoCD's own Application and AppProject CRDs (the module's `manifests/crds`, which
the install step keeps beside the binary: `files.json` there) and the settings the application controller reads
(`argocd-cm` and `argocd-secret`, labelled `app.kubernetes.io/part-of: argocd`, which is how ArgoCD's settings
informer finds them) into `namespace` of the host cluster, then the three processes. The application controller's
namespace is `--namespace`: only Applications, AppProjects and cluster Secrets there are seen. Redis keeps nothing
on disk.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import shutil
import socket
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from dpf.controller.helm import find_helm
from dpf.lab.bed.kube import ControlPlane
from dpf.lab.bed.process import Child, free_port, wait_until
from dpf.lab.bed.tools import tool, tools_dir

# Each component's own start: redis in well under a second; the repo server and the application controller
# (a 300 MB binary, and the controller's informers listing the host cluster) take a few seconds on a loaded
# 2-core machine.
START_TIMEOUT = 60.0
PART_OF = {"app.kubernetes.io/part-of": "argocd"}


class ArgoCDMissing(RuntimeError):
    pass


def crd_dir() -> Path:
    """ArgoCD's CRDs, which the install step copies out of the pinned argo-cd module beside the binary
    (packaging/upstream/argocd/files.json) and links into the tools directory."""
    directory = tools_dir() / "argocd-crds"
    if not directory.is_dir():
        raise ArgoCDMissing(f"{directory} not found: run `./dev setup` (copies ArgoCD's CRDs from its module)")
    return directory


def settings_objects(namespace: str) -> list[dict[str, object]]:
    """The namespace, argocd-cm (defaults: nothing to set) and argocd-secret (the server signature key ArgoCD's settings
    require even without an API server)."""
    key = base64.b64encode(secrets.token_bytes(32)).decode()
    meta = {"namespace": namespace, "labels": PART_OF}
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "argocd-cm", **meta}, "data": {}},
        {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": {"name": "argocd-secret", **meta},
         "data": {"server.secretkey": base64.b64encode(key.encode()).decode()}},
    ]


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as reply:
        return bool(reply.status == 200)


def _redis_pong(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
        conn.sendall(b"PING\r\n")
        return conn.recv(16).startswith(b"+PONG")


class ArgoCD:
    """`ArgoCD(directory, host, namespace, env)`: `env` adds to the components' environment (SSL_CERT_FILE for a
    chart repository's CA: the repo server's Go HTTP client and its `helm` both honour it)."""

    def __init__(self, directory: Path, host: ControlPlane, namespace: str,
                 env: Mapping[str, str] | None = None) -> None:
        self.directory = directory
        self.host = host
        self.namespace = namespace
        self.extra_env = dict(env or {})
        self.redis_port, self.repo_port = free_port(), free_port()
        self.repo_metrics_port, self.controller_metrics_port = free_port(), free_port()
        self.children: list[Child] = []

    def _env(self, component: str) -> dict[str, str]:
        home, tmp = self.directory / "home", self.directory / "tmp" / component
        for path in (home, tmp, self.directory / "tls", self.directory / "ssh"):
            path.mkdir(parents=True, exist_ok=True)
        helm_dir = str(Path(find_helm()).parent)
        return {
            "PATH": f"{helm_dir}:/usr/local/bin:/usr/bin:/bin",  # the repo server runs `helm` from PATH
            "HOME": str(home), "TMPDIR": str(tmp),  # helm homes and chart caches: under our directory
            "ARGOCD_BINARY_NAME": component,
            "ARGOCD_TLS_DATA_PATH": str(self.directory / "tls"), "ARGOCD_SSH_DATA_PATH": str(self.directory / "ssh"),
            "ARGOCD_ASK_PASS_SOCK": str(self.directory / f"{component}-askpass.sock"),  # default: a fixed /tmp path
            "ARGOCD_GPG_ENABLED": "false",
            **self.extra_env,
        }

    def start(self) -> ArgoCD:
        binary = Path(tool("argocd"))
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            # Application and AppProject only: the module's directory also holds a kustomization.yaml, and the
            # ApplicationSet CRD (1.5 MB, ~10 s to apply here) is for a controller not run here.
            crds = self.directory / "crds"
            crds.mkdir(exist_ok=True)
            for name in ("application", "appproject"):
                shutil.copyfile(crd_dir() / f"{name}-crd.yaml", crds / f"{name}-crd.yaml")
            self.crds = self.host.install_crds(crds)
            self.host.kubectl("apply", "--server-side", "-f", "-",
                              input="\n---\n".join(json.dumps(o) for o in settings_objects(self.namespace)))
            redis = self._child("redis", [
                tool("redis-server"), "--bind", "127.0.0.1", "--port", str(self.redis_port),
                "--save", "", "--appendonly", "no", "--dir", str(self.directory), "--logfile", ""], argo=False)
            wait_until(lambda: _redis_pong(self.redis_port), START_TIMEOUT, f"redis on 127.0.0.1:{self.redis_port}",
                       interval=0.05, while_alive=[redis])
            redis_addr = f"127.0.0.1:{self.redis_port}"
            repo = self._child("argocd-repo-server", [
                # `--client-ca-path ""`: its default (a pod's mount path) is non-empty, and v3.6.2 refuses to start
                # with --disable-tls and any client CA path ("cannot be used when --disable-tls is enabled").
                str(binary), "--address", "127.0.0.1", "--port", str(self.repo_port), "--disable-tls",
                "--client-ca-path", "",
                "--metrics-address", "127.0.0.1", "--metrics-port", str(self.repo_metrics_port),
                "--redis", redis_addr, "--logformat", "text", "--loglevel", "info"])
            controller = self._child("argocd-application-controller", [
                str(binary), "--kubeconfig", str(self.host.kubeconfig), "--namespace", self.namespace,
                "--redis", redis_addr, "--repo-server", f"127.0.0.1:{self.repo_port}", "--repo-server-plaintext",
                "--metrics-port", str(self.controller_metrics_port), "--logformat", "text", "--loglevel", "info"],
                # Argo's `in-cluster` (deployInCluster) is the host cluster: its kubeconfig, as upstream's Procfile
                # runs the controller outside a pod. One replica, as upstream's install manifests set it. (Its
                # metrics and /healthz listen on 0.0.0.0: v3.6.2 has no flag for the address.)
                extra={"ARGOCD_FAKE_IN_CLUSTER": "true", "KUBECONFIG": str(self.host.kubeconfig),
                       "ARGOCD_CONTROLLER_REPLICAS": "1"})
            # ?full=true: the repo server dials its own gRPC endpoint, so "up" means it serves manifests.
            wait_until(lambda: _http_ok(f"http://127.0.0.1:{self.repo_metrics_port}/healthz?full=true"),
                       START_TIMEOUT, "argocd-repo-server's /healthz?full=true", interval=0.2, while_alive=[repo])
            wait_until(lambda: _http_ok(f"http://127.0.0.1:{self.controller_metrics_port}/healthz"),
                       START_TIMEOUT, "argocd-application-controller's /healthz", interval=0.2,
                       while_alive=[controller])
        except BaseException:
            self.stop()
            raise
        return self

    def _child(self, component: str, argv: list[str], argo: bool = True,
               extra: Mapping[str, str] | None = None) -> Child:
        env = {**self._env(component), **(extra or {})} if argo else {"PATH": "/usr/bin:/bin"}
        child = Child(component, argv, self.directory / f"{component}.log", env)
        self.children.append(child)
        return child

    def rss_mb(self) -> dict[str, float]:
        """Resident memory of each running component, in MB (what running ArgoCD here costs)."""
        out = {}
        for child in self.children:
            if child.alive():
                status = Path(f"/proc/{child.pid}/status").read_text()
                found = re.search(r"^VmRSS:\s+(\d+)", status, re.M)
                if found:
                    out[child.name] = int(found.group(1)) / 1024
        return out

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()
        self.children.clear()

    def __enter__(self) -> ArgoCD:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
