"""A small async wrapper around the Helm CLI (v4, built from packaging/upstream/helm by `./dev setup`).

The DPUService reconciler uses it instead of upstream DPF's ArgoCD: `helm upgrade --install` of one release per
target cluster. Each call gets the target cluster's kubeconfig as a file the caller owns (private, 0600) and
values as a private temp file. Failures raise `HelmError` whose message names the release, the chart and Helm's
own stderr (trimmed); the kubeconfig's path and content are never part of a message or a log line.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dpf.controller.gitcharts import redacted

log = logging.getLogger(__name__)

STDERR_LIMIT = 1500  # characters of Helm's stderr kept in an error (conditions are bounded anyway)
PASSED_ENV = ("SSL_CERT_FILE", "SSL_CERT_DIR", "HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "https_proxy", "http_proxy",
              "no_proxy")
DEFAULT_CONCURRENCY = 4  # helm processes at once: each is ~70 MB and a core's worth of YAML work
PENDING = ("pending-install", "pending-upgrade", "pending-rollback")


class HelmError(RuntimeError):
    """A Helm command failed; the message names the release, the chart and Helm's stderr."""


def find_helm() -> str:
    """The helm binary: $DPF_TOOLS_DIR/helm, the virtualenv's tools/helm (`./dev setup`), else PATH."""
    candidates = [Path(os.environ["DPF_TOOLS_DIR"]) / "helm"] if os.environ.get("DPF_TOOLS_DIR") else []
    candidates.append(Path(sys.prefix) / "tools" / "helm")
    for path in candidates:
        if path.exists():
            return str(path)
    found = shutil.which("helm")
    if found:
        return found
    raise HelmError("helm not found: run `./dev setup` (builds it from packaging/upstream/helm)")


@dataclass(frozen=True)
class Chart:
    """Where a chart comes from: an http(s) repository (`--repo`) or an OCI registry (repo_url oci://...)."""

    repo_url: str
    chart: str | None
    version: str
    path: str | None = None
    mirror_of: str | None = None
    """The repository the DPUService names, when `repo_url` is its mirror (`mirrored`)."""
    commit: str | None = None
    """A git source's revision resolved to a commit (`gitcharts`), set with `local`."""
    local: Path | None = None
    """A git source's chart directory in its checkout: what Helm installs."""

    @property
    def is_git(self) -> bool:
        """A git repository: `path` and no `chart` (with `chart` ArgoCD reads the URL as a Helm repository)."""
        return bool(self.path) and not self.chart and not self.repo_url.startswith("oci://")

    def mirrored(self, mirrors: Sequence[tuple[str, str]]) -> Chart:
        """This chart from the mirror of the longest (FROM, TO) prefix its repository starts with, if any."""
        matches = [(source, target) for source, target in mirrors if self.repo_url.startswith(source)]
        if not matches:
            return self
        source, target = max(matches, key=lambda m: len(m[0]))
        return dataclasses.replace(self, repo_url=target + self.repo_url[len(source):], mirror_of=self.repo_url)

    @property
    def ref(self) -> str:
        """The chart argument to `helm upgrade`. For oci:// the reference is the repository URL plus the chart."""
        if self.local is not None:
            return str(self.local)
        if self.is_git:
            raise HelmError(f"chart {self.describe()}: the git source is not checked out")
        if self.repo_url.startswith("oci://"):
            base = self.repo_url.rstrip("/")
            return f"{base}/{self.chart}" if self.chart else base
        if not self.chart:
            raise HelmError(f"chart {self.describe()}: spec.helmChart.source needs `chart` (a Helm repository) or "
                            "`path` (a directory of a git repository)")
        return self.chart

    def source_args(self) -> list[str]:
        """Where Helm takes the chart from: a repository and a version, or nothing for a local directory."""
        if self.local is not None:
            return []
        repo = [] if self.repo_url.startswith("oci://") else ["--repo", self.repo_url]
        return ["--version", self.version, *repo]

    def describe(self) -> str:
        mirror = f" (mirror of {redacted(self.mirror_of)})" if self.mirror_of else ""
        commit = f" (commit {self.commit[:12]})" if self.commit else ""
        return f"{self.chart or self.path or '?'} {self.version}{commit} from {redacted(self.repo_url)}{mirror}"


@contextmanager
def private_file(content: str | bytes, suffix: str) -> Iterator[Path]:
    """A 0600 temp file with `content`, removed on exit (kubeconfigs and values may carry secrets)."""
    fd, name = tempfile.mkstemp(prefix="dpf-helm-", suffix=suffix)  # mkstemp creates it 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content.encode() if isinstance(content, str) else content)
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)


class Helm:
    def __init__(self, binary: str | None = None, concurrency: int = DEFAULT_CONCURRENCY,
                 on_run: Callable[[str, float, bool], None] | None = None) -> None:
        self._binary = binary
        self._slots = asyncio.Semaphore(concurrency)
        self._on_run = on_run
        """Called after every Helm process with (command, seconds it ran, succeeded): the caller's metrics."""

    @property
    def binary(self) -> str:
        if self._binary is None:
            self._binary = find_helm()
        return self._binary

    async def _run(self, args: Sequence[str], kubeconfig: Path | None, what: str, helm_timeout: float) -> str:
        # HOME-like state (repository cache, registry config) goes to a per-call temp dir: nothing shared with the
        # user's ~/.config/helm, and concurrent calls never race on the repository index cache.
        with tempfile.TemporaryDirectory(prefix="dpf-helm-state-") as state:
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": state,
                   "HELM_CACHE_HOME": f"{state}/cache", "HELM_CONFIG_HOME": f"{state}/config",
                   "HELM_DATA_HOME": f"{state}/data"}
            # No kubeconfig: the in-cluster service account (client-go reads these two variables).
            env.update({k: v for k, v in os.environ.items() if k.startswith("KUBERNETES_SERVICE_")})
            # Trust and proxies for chart repositories follow the controller's environment (Go reads these).
            env.update({k: v for k, v in os.environ.items() if k in PASSED_ENV})
            config = ["--kubeconfig", str(kubeconfig)] if kubeconfig is not None else []
            async with self._slots:
                started = time.monotonic()
                proc = await asyncio.create_subprocess_exec(
                    self.binary, *args, *config, env=env,
                    stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE)
                try:
                    out, err = await asyncio.wait_for(proc.communicate(), helm_timeout + 30.0)
                except BaseException:
                    if proc.returncode is None:
                        proc.kill()
                        await proc.wait()
                    raise
                if self._on_run is not None:
                    self._on_run(args[0], time.monotonic() - started, proc.returncode == 0)
        if proc.returncode != 0:
            raise HelmError(f"{what}: {_trim(err.decode(errors='replace'), str(kubeconfig or ''))}")
        return out.decode(errors="replace")

    async def upgrade_install(self, release: str, chart: Chart, namespace: str, values: Mapping[str, Any],
                              kubeconfig: Path | None, helm_timeout: float = 300.0, description: str = "",
                              state: str | None = None) -> str:
        """Install or upgrade `release`; on failure Helm rolls it back (a first install is uninstalled), so
        nothing is left half-applied. Returns what `clear_interrupted` did first ('' most often).

        The caller runs at most one Helm operation per release at a time (the DPUService reconciler cancels and
        awaits an older upgrade before it starts a newer one), so a release found pending here was left by a Helm
        run that was killed (a cancelled upgrade, a controller that stopped or lost its lease): it is cleared first.
        `state`: the release's status as the caller just read it ('' for none), which saves asking Helm again.
        """
        cleared = await self.clear_interrupted(release, namespace, kubeconfig, helm_timeout, state)
        # JSON is YAML: no YAML emitter quirks for values that look like numbers or booleans.
        with private_file(json.dumps(values), ".values.json") as values_file:
            args = ["upgrade", release, chart.ref, "--install", "--namespace", namespace, "--create-namespace",
                    *chart.source_args(), "--values", str(values_file),
                    "--rollback-on-failure", "--wait=watcher", "--timeout", f"{int(helm_timeout)}s",
                    "--history-max", "5", *(["--description", description] if description else [])]
            await self._run(args, kubeconfig, f"helm upgrade --install {release} (chart {chart.describe()})",
                            helm_timeout)
        log.info("helm: release %s/%s at chart %s", namespace, release, chart.describe())
        return cleared

    async def clear_interrupted(self, release: str, namespace: str, kubeconfig: Path | None,
                                helm_timeout: float = 300.0, state: str | None = None) -> str:
        """Undo what a killed Helm run left: Helm marks a release pending-* when an operation starts and only the
        same process moves it on, so after a kill every later upgrade fails with "another operation
        (install/upgrade/rollback) is in progress" until someone intervenes. A first install left pending is
        uninstalled (nothing of it was ever deployed); an upgrade or rollback left pending is rolled back to the
        revision before it. Returns what was done ('' when the release was not pending)."""
        if state is None:
            info = ((await self.status(release, namespace, kubeconfig)) or {}).get("info") or {}
            state = str(info.get("status") or "")
        if state not in PENDING:
            return ""
        if state == "pending-install":
            args = ["uninstall", release, "--namespace", namespace, "--wait", "--timeout", f"{int(helm_timeout)}s"]
            done = "uninstalled"
        else:
            args = ["rollback", release, "--namespace", namespace, "--wait", "--timeout", f"{int(helm_timeout)}s"]
            done = "rolled back to its previous revision"
        await self._run(args, kubeconfig, f"clearing release {release} left {state}", helm_timeout)
        log.warning("helm: release %s/%s was left %s by an interrupted Helm run: %s", namespace, release, state, done)
        return f"release {release} was left {state} by an interrupted Helm run: {done}"

    async def uninstall(self, release: str, namespace: str, kubeconfig: Path | None,
                        helm_timeout: float = 300.0) -> bool:
        """Uninstall `release`; False when there was no such release."""
        args = ["uninstall", release, "--namespace", namespace, "--wait", "--timeout", f"{int(helm_timeout)}s"]
        try:
            await self._run(args, kubeconfig, f"helm uninstall {release}", helm_timeout)
        except HelmError as exc:
            if "release: not found" in str(exc):  # Helm: "uninstall: Release not loaded: <name>: release: not found"
                return False
            raise
        log.info("helm: release %s/%s uninstalled", namespace, release)
        return True

    async def status(self, release: str, namespace: str, kubeconfig: Path | None) -> dict[str, Any] | None:
        """The release's `helm status -o json` document, or None when there is no such release."""
        try:
            out = await self._run(["status", release, "--namespace", namespace, "-o", "json"], kubeconfig,
                                  f"helm status {release}", 60.0)
        except HelmError as exc:
            if "release: not found" in str(exc):
                return None
            raise
        document = json.loads(out)
        return document if isinstance(document, dict) else None

    async def manifest(self, release: str, namespace: str, kubeconfig: Path | None) -> str:
        """The rendered manifest of the release's current revision (YAML documents)."""
        return await self._run(["get", "manifest", release, "--namespace", namespace], kubeconfig,
                               f"helm get manifest {release}", 60.0)


def _trim(stderr: str, kubeconfig: str) -> str:
    text = " ".join((stderr.replace(kubeconfig, "<kubeconfig>") if kubeconfig else stderr).split())
    return text if len(text) <= STDERR_LIMIT else text[:STDERR_LIMIT] + "…"
