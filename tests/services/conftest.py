"""Shared by the DPUService tests: a Helm chart repository on loopback HTTPS and condition helpers."""

from __future__ import annotations

import functools
import http.server
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dpf.controller.helm import find_helm
from dpf.controller.kube.rest import Obj, Rest
from dpf.controller.reconcilers.dpuservice import DPU_SERVICE

CHART = Path(__file__).parent / "charts" / "tiny"  # version 0.1.0
BROKEN = Path(__file__).parent / "charts" / "tiny-broken"  # version 0.2.0: a Deployment the apiserver refuses
SLOW = 120.0  # a helm upgrade --wait plus the DaemonSet controller's first status on a shared 2-core machine


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def chart_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """`helm package` + `helm repo index` served over loopback HTTPS; yields the repository URL."""
    repo, cert, key = tmp_path / "repo", tmp_path / "repo.crt", tmp_path / "repo.key"
    repo.mkdir()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-addext", "basicConstraints=critical,CA:TRUE"],
                   check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(repo)))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    url = f"https://127.0.0.1:{server.server_address[1]}"
    helm = find_helm()
    for chart in (CHART, BROKEN):
        subprocess.run([helm, "package", str(chart), "--destination", str(repo)], check=True, capture_output=True)
    subprocess.run([helm, "repo", "index", str(repo), "--url", url], check=True, capture_output=True)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    thread = threading.Thread(target=server.serve_forever, name="chart-repo", daemon=True)
    thread.start()
    try:
        yield url
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def condition(obj: Obj | None, type_: str) -> dict[str, Any]:
    return next((c for c in ((obj or {}).get("status") or {}).get("conditions") or () if c["type"] == type_), {})


async def ready(rest: Rest, namespace: str, name: str) -> Obj | None:
    obj = await rest.get(DPU_SERVICE, name, namespace)
    generation = (obj or {}).get("metadata", {}).get("generation")
    fresh = ((obj or {}).get("status") or {}).get("observedGeneration") == generation
    return obj if fresh and condition(obj, "Ready").get("status") == "True" else None


