"""An OCI registry on loopback HTTPS: CNCF Distribution's `registry` (built from packaging/upstream/distribution),
the reference implementation of the OCI distribution spec that Helm pushes charts to and pulls them from.

`OciRegistry` writes a self-signed certificate for 127.0.0.1 and a configuration with filesystem storage under its
directory, starts the registry, and waits until `/v2/` answers. `push_chart` packages a chart directory and pushes
it with `helm push`, as a site publishing its charts to a registry would. Helm (and the controller's Helm) trust the
certificate through SSL_CERT_FILE: the caller points it at `ca_file`.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import urllib.request
from pathlib import Path

from dpf.lab.bed.process import Child, free_port, wait_until
from dpf.lab.bed.tools import tools_dir

START_TIMEOUT = 60.0


def self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    """(certificate, key) for 127.0.0.1, also a CA (clients trust it directly)."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-addext", "basicConstraints=critical,CA:TRUE"],
                   check=True, capture_output=True)
    return cert, key


class OciRegistry:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self._child: Child | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> Path:
        return self.directory / "registry.crt"

    def url(self, repository: str) -> str:
        """The oci:// URL of a repository path in this registry, as a DPUService's repoURL names it."""
        return f"oci://{self.host}/{repository.strip('/')}"

    def start(self) -> OciRegistry:
        binary = tools_dir() / "registry"
        if not binary.exists():
            raise FileNotFoundError(f"{binary} not found: run `./dev setup` (builds it from "
                                    "packaging/upstream/distribution)")
        self.directory.mkdir(parents=True, exist_ok=True)
        cert, key = self_signed(self.directory, "registry")
        config = self.directory / "config.json"  # JSON is YAML, which the registry reads
        config.write_text(json.dumps({
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(self.directory / "storage")},
                        "delete": {"enabled": True}},
            "http": {"addr": self.host, "tls": {"certificate": str(cert), "key": str(key)}},
        }))
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OTEL_TRACES_EXPORTER": "none"}
        self._child = Child("oci-registry", [str(binary), "serve", str(config)], self.directory / "registry.log", env)
        context = ssl.create_default_context(cafile=str(cert))

        def answers() -> bool:
            with urllib.request.urlopen(f"https://{self.host}/v2/", timeout=2, context=context) as reply:
                return bool(reply.status == 200)
        wait_until(answers, START_TIMEOUT, f"the OCI registry on {self.host}", interval=0.1,
                   while_alive=[self._child])
        return self

    def push_chart(self, helm: str, chart_dir: Path, repository: str) -> None:
        """`helm package` + `helm push` of one chart into `repository` (e.g. "nvidia/doca")."""
        packaged = self.directory / "packaged"
        packaged.mkdir(exist_ok=True)
        env = {**os.environ, "SSL_CERT_FILE": str(self.ca_file), "HOME": str(self.directory),
               "HELM_CONFIG_HOME": str(self.directory / "helm-config"),
               "HELM_CACHE_HOME": str(self.directory / "helm-cache")}
        out = subprocess.run([helm, "package", str(chart_dir), "--destination", str(packaged)], check=True,
                             capture_output=True, text=True, env=env).stdout
        archive = out.strip().rsplit(":", 1)[-1].strip()  # "Successfully packaged chart and saved it to: <path>"
        subprocess.run([helm, "push", archive, self.url(repository)], check=True, capture_output=True, env=env)

    def stop(self) -> None:
        if self._child is not None:
            self._child.stop()
            self._child = None

    def __enter__(self) -> OciRegistry:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
