"""A git server on loopback: `git daemon` (git's own server, the git:// protocol) exporting the repositories under
its directory, for DPUServices whose chart is a `path` in a git repository. `commit_tree` makes a commit from a
directory of files on a branch (and optionally a tag), as a site publishing its charts would push them.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

from dpf.lab.bed.process import Child, free_port, wait_until

START_TIMEOUT = 30.0
AUTHOR = ["-c", "user.name=dpf lab", "-c", "user.email=lab@dpf.invalid"]


def git(*args: str, cwd: Path | None = None) -> str:
    result = subprocess.run(["git", *AUTHOR, *args], cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


class GitServer:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self._child: Child | None = None

    def url(self, repository: str) -> str:
        """The git:// URL of a repository under this server's directory."""
        return f"git://127.0.0.1:{self.port}/{repository.strip('/')}"

    def start(self) -> GitServer:
        (self.directory / "repos").mkdir(parents=True, exist_ok=True)
        self._child = Child("git-daemon", [
            "git", "daemon", "--reuseaddr", "--export-all", "--informative-errors", "--listen=127.0.0.1",
            f"--port={self.port}", f"--base-path={self.directory / 'repos'}", str(self.directory / "repos"),
        ], self.directory / "git-daemon.log")

        def listening() -> bool:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        wait_until(listening, START_TIMEOUT, f"git daemon on port {self.port}", interval=0.05,
                   while_alive=[self._child])
        return self

    def stop(self) -> None:
        if self._child is not None:
            self._child.stop()
            self._child = None

    def __enter__(self) -> GitServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def commit_tree(self, repository: str, files: dict[str, Path], branch: str = "main",
                    tag: str | None = None, message: str = "charts") -> str:
        """Commit the directories in `files` (path in the repository → source directory) as the whole content of
        `branch` of `repository` (made if new); returns the commit id."""
        bare = self.directory / "repos" / repository
        if not bare.exists():
            git("init", "--quiet", "--bare", "--initial-branch", branch, str(bare))
        work = self.directory / "work" / repository
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        git("init", "--quiet", "--initial-branch", branch, cwd=work)
        for inside, source in files.items():
            shutil.copytree(source, work / inside)
        git("add", "--all", cwd=work)
        git("commit", "--quiet", "--message", message, cwd=work)
        commit = git("rev-parse", "HEAD", cwd=work).strip()
        git("push", "--quiet", "--force", str(bare), f"HEAD:refs/heads/{branch}", cwd=work)
        if tag is not None:
            git("tag", "--annotate", "--message", tag, tag, cwd=work)
            git("push", "--quiet", "--force", str(bare), f"refs/tags/{tag}", cwd=work)
        return commit
