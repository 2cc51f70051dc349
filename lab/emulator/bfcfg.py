"""Read what an emulated DPU needs from the bf.cfg it received: hostname, files to write, OVS script, join command.

The bf.cfg DPF renders is a bash fragment sourced by the BFB installer: `KEY=value` parameter lines, then
`bfb_modify_os()`, which writes cloud-init user-data with a heredoc. The user-data's `write_files` are the
config files (path, permissions, content, append), `runcmd` sets the hostname (`hostnamectl set-hostname`),
`/opt/dpf/ovs.sh` is the flavor's OVS script and `/opt/dpf/join_k8s_cluster.sh` holds the kubeadm join command.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

USER_DATA = "/var/lib/cloud/seed/nocloud-net/user-data"
OVS_SCRIPT = "/opt/dpf/ovs.sh"
JOIN_SCRIPT = "/opt/dpf/join_k8s_cluster.sh"
_PARAM = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
_HEREDOC = re.compile(r"^cat\s+<<\s*\\?'?\"?(\w+)'?\"?\s*>\s*(\S+)\s*$")


@dataclass(frozen=True)
class ConfigFile:
    path: str
    permissions: str
    content: str
    append: bool = False


@dataclass(frozen=True)
class BfCfg:
    text: str
    parameters: dict[str, str] = field(default_factory=dict)
    hostname: str | None = None
    files: tuple[ConfigFile, ...] = ()
    runcmd: tuple[str, ...] = ()

    def write_files(self, root: Path) -> list[Path]:
        """Write every file under `root` (the DPU's filesystem) as cloud-init would: mode, append."""
        written = []
        for f in self.files:
            target = root / f.path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "a" if f.append else "w") as out:
                out.write(f.content)
            target.chmod(int(f.permissions, 8))
            written.append(target)
        return written

    def file(self, path: str) -> ConfigFile | None:
        return next((f for f in self.files if f.path == path), None)

    @property
    def ovs_script(self) -> str | None:
        found = self.file(OVS_SCRIPT)
        return found.content if found else None

    @property
    def join_command(self) -> str | None:
        found = self.file(JOIN_SCRIPT)
        if not found:
            return None
        return next((line.strip().split(" && ")[0] for line in found.content.splitlines()
                     if "kubeadm join" in line), None)


def _heredocs(text: str) -> dict[str, str]:
    """Target path (as written, e.g. `/mnt/var/...`) -> body of each `cat << EOF > path` heredoc."""
    docs: dict[str, str] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _HEREDOC.match(lines[i].strip())
        i += 1
        if not m:
            continue
        marker, target = m.groups()
        body = []
        while i < len(lines) and lines[i].strip() != marker:
            body.append(lines[i])
            i += 1
        i += 1
        docs[target] = "\n".join(body) + "\n"
    return docs


def _command(entry: object) -> str:
    return " ".join(str(part) for part in entry) if isinstance(entry, list) else str(entry)


def parse_bfcfg(text: str) -> BfCfg:
    """Parse `text`; a bf.cfg without cloud-init user-data gives its parameters only (hostname None)."""
    parameters: dict[str, str] = {}
    for line in text.splitlines():
        if line.strip().endswith("()") or line.startswith(("bfb_", "{", "}")):
            break  # parameters precede the first function
        m = _PARAM.match(line.strip())
        if m:
            parameters[m[1]] = m[2].strip().strip('"')
    user_data = next((body for target, body in _heredocs(text).items() if target.endswith(USER_DATA)), None)
    if user_data is None:
        return BfCfg(text=text, parameters=parameters)
    doc = yaml.safe_load(user_data) or {}
    files = tuple(
        ConfigFile(path=str(item["path"]), permissions=str(item.get("permissions", "0644")),
                   content=str(item.get("content", "")), append=bool(item.get("append", False)))
        for item in doc.get("write_files") or [] if isinstance(item, dict) and "path" in item)
    runcmd = tuple(_command(entry) for entry in doc.get("runcmd") or [])
    hostname = None
    for command in runcmd:
        parts = command.split()
        if parts[:2] == ["hostnamectl", "set-hostname"] and len(parts) > 2:
            hostname = parts[2]
    return BfCfg(text=text, parameters=parameters, hostname=hostname, files=files, runcmd=runcmd)
