"""A Helm chart repository on loopback HTTPS: `helm package` + `helm repo index` of local charts, served by a
thread with a certificate from a CA of its own (`pki.py`). DPUService sources must be https:// or oci:// (the CRD
admits nothing else), so whoever runs Helm against it trusts that CA as a deployment trusts its registry's: the
controller (and the Helm it runs) through `SSL_CERT_FILE` = `ca_file`.

Used by the DPUService tests and by the lab, whose controller maps upstream's public repository onto it with
`--chart-mirror`, so the manifests name the public repository unchanged.
"""

from __future__ import annotations

import functools
import http.server
import ssl
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dpf.controller.helm import find_helm
from dpf.lab.bed.pki import Authority


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class ChartRepo:
    def __init__(self, workdir: Path, charts: Sequence[Path]) -> None:
        self.workdir = workdir
        self.charts = tuple(charts)
        self.url = ""
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def ca_file(self) -> Path:
        """The CA that signed the server's certificate: what SSL_CERT_FILE must name for Helm to trust it."""
        return self.workdir / "pki" / "ca.crt"

    def start(self) -> ChartRepo:
        repo = self.workdir / "charts"
        repo.mkdir(parents=True, exist_ok=True)
        authority = Authority(self.workdir / "pki", common_name="dpf-chart-repo-ca")
        served = authority.issue("server", "127.0.0.1", ips=("127.0.0.1",), server=True)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(served.cert, served.key)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(repo)))
        server.socket = context.wrap_socket(server.socket, server_side=True)
        self._server = server
        self.url = f"https://127.0.0.1:{server.server_address[1]}"
        try:
            helm = find_helm()
            for chart in self.charts:
                _run([helm, "package", str(chart), "--destination", str(repo)])
            _run([helm, "repo", "index", str(repo), "--url", self.url])
        except BaseException:
            self.stop()
            raise
        self._thread = threading.Thread(target=server.serve_forever, name="chart-repo", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()
        self._server = None

    def __enter__(self) -> ChartRepo:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _run(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[1:3])} failed: {result.stderr.strip()}")
