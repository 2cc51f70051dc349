"""Charts from git repositories (a DPUService whose `helmChart.source` has `path` and no `chart`, as ArgoCD reads
upstream's Applications): the revision is resolved to a commit and that commit checked out once into a cache, so
Helm installs the chart directory `<checkout>/<path>`.

Every reconcile resolves the revision again (`git ls-remote`: one round trip, nothing downloaded), so a branch that
moves rolls the DPUService at its next look, and a tag or a commit stays put. A checkout is made once per commit
(a shallow fetch of that ref; a full fetch if the server refuses a commit id) into a temporary directory that is
renamed into place, so a half-made checkout is never used. Git runs without a terminal, without the user's or
the system's git config, and with a timeout; messages never show the credentials a URL may carry.

Only network transports are used (https, http, git, ssh; `check_url` and GIT_ALLOW_PROTOCOL, which also binds
redirects): whoever may create a DPUService must not make the controller read a repository on its own disk
(a local path, file://) or run a command (git's ext:: transport).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger(__name__)

GIT_TIMEOUT = 120.0  # one git command: a fetch of a chart repository over a slow link
KEEP_PER_REPO = 5  # checkouts kept per repository (the newest used); older commits are removed
STDERR_LIMIT = 800
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
PASSED_ENV = ("SSL_CERT_FILE", "SSL_CERT_DIR", "HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "https_proxy", "http_proxy",
              "no_proxy")


ALLOWED_PROTOCOLS = ("https", "http", "git", "ssh")
_SCP_LIKE = re.compile(r"^(?:[^@/\s]+@)?[A-Za-z0-9][A-Za-z0-9.-]*:")  # [user@]host:path, read by git as ssh


class GitError(RuntimeError):
    """A git source could not be resolved or checked out; the message names the repository (credentials removed),
    the revision and git's own error."""


def redacted(url: str) -> str:
    """`url` without the user and password it may carry (https://user:token@host/...). Pure."""
    try:
        parts = urlsplit(url)
    except ValueError:  # not parseable as a URL (e.g. an unclosed IPv6 bracket): drop any userinfo by hand
        return re.sub(r"//[^/]*@", "//", url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def check_url(url: str) -> None:
    """Refuse a repository URL that is not a network transport git is allowed to use here. Pure."""
    if not _network_url(url):
        raise GitError(f"spec.helmChart.source.repoURL {redacted(url)!r} is not a git URL the controller may "
                       "fetch: use https://, http://, ssh://, git:// or user@host:path (local paths, file:// and "
                       "git's other transports are refused)")


def _network_url(url: str) -> bool:
    if "://" not in url:  # scp-like; <transport>::<address> would run a remote helper
        return bool(_SCP_LIKE.match(url)) and "::" not in url
    try:
        parts = urlsplit(url)
    except ValueError:  # not a URL at all, e.g. an unclosed IPv6 bracket
        return False
    return parts.scheme in ALLOWED_PROTOCOLS and bool(parts.hostname)


def chart_dir(checkout: Path, path: str) -> Path:
    """`path` inside `checkout`, refused when it leaves the checkout (`..`, absolute). Pure."""
    relative = PurePosixPath(path.strip("/"))
    if not path.strip("/") or ".." in relative.parts:
        raise GitError(f"spec.helmChart.source.path {path!r} must name a directory inside the repository")
    return checkout / relative


@dataclass(frozen=True)
class Checkout:
    commit: str
    directory: Path


class GitCharts:
    def __init__(self, cache: Path | None = None) -> None:
        self.cache = cache or Path(tempfile.gettempdir()) / f"dpf-git-charts-{os.getuid()}"
        self._locks: dict[Path, asyncio.Lock] = {}

    async def resolve(self, url: str, revision: str) -> str:
        """The commit `revision` (a branch, a tag or a commit id) names in `url` now."""
        check_url(url)
        if _COMMIT.match(revision):
            return revision
        out = await _git(["ls-remote", "--", url, revision, f"{revision}^{{}}"], None, url, revision)
        refs: dict[str, str] = {}
        for line in out.splitlines():
            commit, _, ref = line.partition("\t")
            refs[ref] = commit
        # An annotated tag's own object is not a commit: its peeled form (`^{}`) is.
        for ref in (f"refs/tags/{revision}^{{}}", f"refs/heads/{revision}", f"refs/tags/{revision}", revision):
            if ref in refs:
                return refs[ref]
        if refs:
            return refs[sorted(refs)[0]]
        raise GitError(f"git repository {redacted(url)} has no branch or tag {revision!r} "
                       "(spec.helmChart.source.version)")

    async def checkout(self, url: str, revision: str) -> Checkout:
        """The repository at `revision`, checked out (once per commit) in the cache."""
        commit = await self.resolve(url, revision)
        repo_dir = self.cache / hashlib.sha256(url.encode()).hexdigest()[:16]
        target = repo_dir / commit
        lock = self._locks.setdefault(target, asyncio.Lock())
        async with lock:
            if not target.is_dir():
                await self._fetch(url, revision, commit, repo_dir, target)
            os.utime(target)  # the newest used are kept
        self._prune(repo_dir)
        return Checkout(commit, target)

    async def _fetch(self, url: str, revision: str, commit: str, repo_dir: Path, target: Path) -> None:
        work = await asyncio.to_thread(_workdir, repo_dir, commit)
        try:
            await _git(["init", "--quiet", str(work)], None, url, revision)
            wanted = revision if not _COMMIT.match(revision) else commit
            try:
                await _git(["fetch", "--quiet", "--depth", "1", "--", url, wanted], work, url, revision)
            except GitError:
                # A server may refuse a commit id it does not advertise: take everything, then pick the commit.
                await _git(["fetch", "--quiet", "--", url, "+refs/heads/*:refs/remotes/origin/*",
                            "+refs/tags/*:refs/tags/*"], work, url, revision)
                wanted = commit
            await _git(["-c", "advice.detachedHead=false", "checkout", "--quiet",
                        wanted if wanted == commit else "FETCH_HEAD"], work, url, revision)
            got = (await _git(["rev-parse", "HEAD"], work, url, revision)).strip()
            if got != commit:  # the ref moved between ls-remote and fetch: resolved again at the next reconcile
                raise GitError(f"git repository {redacted(url)}: {revision!r} moved while it was fetched "
                               f"({commit[:12]} then {got[:12]}); trying again")
            await asyncio.to_thread(_publish, work, target)
            log.info("git: %s at %s (%s) checked out", redacted(url), revision, commit[:12])
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _prune(self, repo_dir: Path) -> None:
        """Keep the newest KEEP_PER_REPO checkouts; remove partial ones a killed controller left (older than any
        fetch in progress can be)."""
        entries = [p for p in repo_dir.iterdir() if p.is_dir()]
        checkouts = sorted((p for p in entries if not p.name.startswith(".")), key=lambda p: p.stat().st_mtime,
                           reverse=True)
        stale = [p for p in entries if p.name.startswith(".") and time.time() - p.stat().st_mtime > 4 * GIT_TIMEOUT]
        for old in [*checkouts[KEEP_PER_REPO:], *stale]:
            shutil.rmtree(old, ignore_errors=True)


def _workdir(repo_dir: Path, commit: str) -> Path:
    repo_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    return Path(tempfile.mkdtemp(prefix=f".{commit[:12]}-", dir=repo_dir))


def _publish(work: Path, target: Path) -> None:
    shutil.rmtree(work / ".git")  # the chart's files only: Helm reads nothing else
    work.rename(target)  # atomic: a checkout in place is whole


async def _git(args: list[str], cwd: Path | None, url: str, revision: str) -> str:
    with tempfile.TemporaryDirectory(prefix="dpf-git-home-") as home:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home, "GIT_TERMINAL_PROMPT": "0",
               "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "LC_ALL": "C",
               "GIT_ALLOW_PROTOCOL": ":".join(ALLOWED_PROTOCOLS)}
        env.update({k: v for k, v in os.environ.items() if k in PASSED_ENV})
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            "git", *args, cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), GIT_TIMEOUT)
        except TimeoutError:
            raise GitError(f"git {args[0]} of {redacted(url)} at {revision!r} took over {GIT_TIMEOUT:.0f} s") \
                from None
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    if proc.returncode != 0:
        stderr = err.decode(errors="replace").replace(url, redacted(url)).strip()[-STDERR_LIMIT:]
        raise GitError(f"git {args[0]} of {redacted(url)} at {revision!r} failed: {stderr}")
    log.debug("git %s took %.2fs", args[0], time.monotonic() - started)
    return out.decode(errors="replace")
