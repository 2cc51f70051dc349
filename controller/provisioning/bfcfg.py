"""DPUFlavor -> bf.cfg, a pure function as upstream's bf.cfg template (see dpf-upstream.md §5.4).

The bf.cfg is a bash fragment the BFB installer sources: the flavor's `bfcfgParameters` lines verbatim, then
`bfb_modify_os()`, which writes cloud-init user-data through a quoted heredoc (the shell expands nothing in it).
The user-data document is built as data and emitted by PyYAML, so whatever a flavor's strings hold (quotes,
colons, `#`, leading spaces, a line reading `EOF`) reaches the DPU unchanged. `ubuntu_PASSWORD=` is not a
header line: it becomes the cloud-init password of the `ubuntu` user (without it: `ubuntu`, expired).
Absent flavor fields (all optional, as upstream) render nothing.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

import yaml

from dpf.controller.api.provisioning import DPUFlavorSpec

MAX_BFCFG_BYTES = 128 * 1024
USER_DATA = "/mnt/var/lib/cloud/seed/nocloud-net/user-data"
META_DATA = "/mnt/var/lib/cloud/seed/nocloud-net/meta-data"
JOINED_MARKER = "/opt/dpf/joined_cluster_successfully"
SF_DEVICE = "0000:03:00.0"
PASSWORD_PARAMETER = "ubuntu_PASSWORD="
NVCONFIG_SCRIPT = "/opt/dpf/set-nvconfig-params.sh"
OVS_SCRIPT = "/opt/dpf/ovs.sh"
CONTAINERD_SCRIPT = "/opt/dpf/config_containerd.sh"
RESTART_SCRIPT = "/opt/dpf/restart.sh"


class BfCfgTooLarge(ValueError):
    """The rendered bf.cfg exceeds MAX_BFCFG_BYTES; `field` names the flavor field contributing most."""

    def __init__(self, size: int, field: str, field_size: int) -> None:
        super().__init__(f"bf.cfg would be {size} bytes, more than the {MAX_BFCFG_BYTES} allowed; the largest "
                         f"part comes from DPUFlavor {field} ({field_size} bytes)")
        self.size = size
        self.field = field


class _Dumper(yaml.SafeDumper):
    """Multi-line strings as literal blocks where YAML can hold them so (PyYAML quotes the others)."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def _script(*lines: str) -> str:
    return "\n".join(("#!/bin/bash", *lines)) + "\n"


def _file(path: str, content: str, permissions: str = "0644", *, append: bool = False) -> dict[str, Any]:
    entry: dict[str, Any] = {"path": path, "permissions": permissions, "content": content}
    if append:
        entry["append"] = True
    return entry


def _netplan(config: dict[str, Any]) -> str:
    return yaml.safe_dump({"network": {"version": 2, **config}}, sort_keys=False)


def _split_parameters(parameters: list[str]) -> tuple[list[str], str | None]:
    """Header lines, and the ubuntu password when a `ubuntu_PASSWORD=` line gives one (its quotes removed)."""
    header, password = [], None
    for line in parameters:
        if line.startswith(PASSWORD_PARAMETER):
            value = line[len(PASSWORD_PARAMETER):].strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            password = value
        else:
            header.append(line)
    return header, password


def _nvconfig_parameters(flavor: DPUFlavorSpec) -> list[str]:
    return [p for entry in flavor.nvconfig or [] for p in entry.parameters or []]


def _pf_total_sf(parameters: list[str]) -> int:
    for parameter in parameters:
        key, _, value = parameter.partition("=")
        if key.strip() == "PF_TOTAL_SF":
            try:
                return max(0, int(value.strip()))
            except ValueError:
                return 0
    return 0


def _join_script(join_command: str) -> str:
    # The join command stands alone on its line (`<command> && break`): lab/emulator/bfcfg.py reads it there.
    return _script(
        "set -u",
        f"if [ -f {JOINED_MARKER} ]; then",
        "  exit 0",
        "fi",
        "until ip -4 -o addr show br-comm-ch | grep -q inet; do",
        '  echo "waiting for an IPv4 address on br-comm-ch"',
        "  sleep 5",
        "done",
        "systemctl enable kubelet",
        "while true; do",
        f"  {join_command} && break",
        '  echo "joining the DPU cluster failed, retrying in 5s"',
        "  sleep 5",
        "done",
        f"touch {JOINED_MARKER}",
    )


def _containerd_script(endpoint: str) -> str:
    host = endpoint.split("://", 1)[-1].split("/", 1)[0]
    return _script(
        "set -e",
        "CONFIG=/etc/containerd/config.toml",
        f"ENDPOINT={shlex.quote(endpoint)}",
        f"HOST={shlex.quote(host)}",
        "mkdir -p /etc/containerd",
        '[ -s "$CONFIG" ] || containerd config default > "$CONFIG"',
        "# containerd 2.x (config version 3) moved the CRI registry settings to another plugin",
        "if grep -qE '^version *= *3' \"$CONFIG\"; then",
        "  PLUGIN='io.containerd.cri.v1.images'",
        "else",
        "  PLUGIN='io.containerd.grpc.v1.cri'",
        "fi",
        "# idempotent: a second run leaves the mirror already configured alone",
        'if grep -qF "registry.mirrors.\\"nvcr.io\\"]" "$CONFIG"; then',
        "  exit 0",
        "fi",
        'printf \'\\n[plugins."%s".registry.mirrors."nvcr.io"]\\n  endpoint = ["%s"]\\n\' '
        '"$PLUGIN" "$ENDPOINT" >> "$CONFIG"',
        'printf \'\\n[plugins."%s".registry.configs."%s".tls]\\n  insecure_skip_verify = true\\n\' '
        '"$PLUGIN" "$HOST" >> "$CONFIG"',
    )


def _grub_value(parameters: list[str]) -> str:
    """GRUB_CMDLINE_LINUX's value as a double-quoted shell word (grub.d files are sourced by update-grub)."""
    joined = " ".join(parameters)
    return '"' + "".join("\\" + c if c in '"\\$`' else c for c in joined) + '"'


def _fixed_files(join_command: str, pf_total_sf: int) -> list[dict[str, Any]]:
    return [
        _file("/etc/netplan/60-mlnx.yaml", ""),
        _file("/etc/netplan/99-dpf-comm-ch.yaml", _netplan({
            "renderer": "networkd",
            "ethernets": {"pf0vf0": {"mtu": 9000, "dhcp4": False}},
            "bridges": {"br-comm-ch": {"dhcp4": True, "interfaces": ["pf0vf0"]}},
        }), "0600"),
        _file("/etc/netplan/98-oob-tmfifo.yaml", _netplan({
            "renderer": "networkd",
            "ethernets": {
                "oob_net0": {"dhcp4": False},
                "tmfifo_net0": {"dhcp4": False, "addresses": ["192.168.100.2/30"]},
            },
        }), "0600"),
        _file("/etc/modules-load.d/br_netfilter.conf", "br_netfilter\n"),
        _file("/etc/sysctl.d/98-dpf-k8s.conf",
              "net.ipv4.ip_forward = 1\n"
              "net.bridge.bridge-nf-call-iptables = 1\n"
              "net.bridge.bridge-nf-call-ip6tables = 1\n"),
        _file("/opt/dpf/configure-sfs.sh", _script(
            "set -e",
            f"for i in $(seq 0 {pf_total_sf - 1}); do" if pf_total_sf > 0 else "for i in; do",
            f"  mlnx-sf --action create --device {SF_DEVICE} --sfnum $i",
            "done",
        ), "0755"),
        _file("/etc/systemd/system/bootstrap-dpf.service",
              "[Unit]\nDescription=Create the DPU's scalable functions before kubelet starts\n"
              "Before=kubelet.service\n\n"
              "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/opt/dpf/configure-sfs.sh\n\n"
              "[Install]\nWantedBy=multi-user.target\n"),
        _file("/etc/systemd/system/kubelet.service.d/10-bf.conf",
              "[Unit]\nAfter=bootstrap-dpf.service\nRequires=bootstrap-dpf.service\n\n"
              "[Service]\nEnvironment=\"KUBELET_EXTRA_ARGS=--cgroup-driver=systemd\"\n"),
        _file("/opt/dpf/join_k8s_cluster.sh", _join_script(join_command), "0755"),
        _file("/etc/systemd/system/kubeadm-join.service",
              "[Unit]\nDescription=Join the DPU cluster\nAfter=network-online.target containerd.service\n"
              "Wants=network-online.target\n"
              f"ConditionPathExists=!{JOINED_MARKER}\n\n"
              "[Service]\nType=oneshot\nExecStart=/opt/dpf/join_k8s_cluster.sh\n\n"
              "[Install]\nWantedBy=multi-user.target\n"),
        _file("/etc/systemd/resolved.conf.d/dpf.conf", "[Resolve]\nDNSStubListener=no\n"),
        _file("/etc/NetworkManager/conf.d/dpf-dns.conf", "[main]\ndns=none\n"),
        _file("/opt/dpf/cleanup-dns.sh", _script(
            "ln -sf /run/systemd/resolve/resolv.conf /etc/resolv.conf",
            "systemctl restart systemd-resolved || true",
        ), "0755"),
        _file("/opt/dpf/remove-90-kubelet-bluefield.sh", _script(
            "rm -f /etc/systemd/system/kubelet.service.d/90-kubelet-bluefield.conf",
            "systemctl daemon-reload",
        ), "0755"),
    ]


def _flavor_files(flavor: DPUFlavorSpec, reboot_skip: bool) -> tuple[list[dict[str, Any]], list[str]]:
    """The flavor-driven write_files, and the runcmd entries they add (in upstream's order)."""
    files: list[dict[str, Any]] = []
    nvconfig = _nvconfig_parameters(flavor)
    if nvconfig:
        params = " ".join(shlex.quote(p) for p in nvconfig)
        files.append(_file(NVCONFIG_SCRIPT, _script(
            "set -e",
            "for dev in /dev/mst/*; do",
            f'  echo "set mlxconfig parameters on $dev: "{shlex.quote(" ".join(nvconfig))}',
            f'  mlxconfig -d "$dev" -y set {params}',
            "done",
        ), "0755"))
    sysctl = flavor.sysctl.parameters if flavor.sysctl and flavor.sysctl.parameters else []
    if sysctl:
        files.append(_file("/etc/sysctl.d/99-dpf.conf", "\n".join(sysctl) + "\n"))
    grub = flavor.grub.kernel_parameters if flavor.grub and flavor.grub.kernel_parameters else []
    if grub:
        files.append(_file("/etc/default/grub.d/99-dpf.cfg", f"GRUB_CMDLINE_LINUX={_grub_value(grub)}\n"))
    for config in flavor.config_files or []:
        if not config.path:
            continue
        files.append(_file(config.path, config.raw or "", config.permissions or "0644",
                           append=config.operation == "append"))
    ovs = flavor.ovs.raw_config_script if flavor.ovs and flavor.ovs.raw_config_script else None
    if ovs:
        files.append(_file(OVS_SCRIPT, "set -e\n" + ovs + ("" if ovs.endswith("\n") else "\n"), "0755"))
    endpoint = (flavor.containerd_config.registry_endpoint
                if flavor.containerd_config and flavor.containerd_config.registry_endpoint else None)
    if endpoint:
        files.append(_file(CONTAINERD_SCRIPT, _containerd_script(endpoint), "0755"))
    restart = bool(grub or sysctl)
    if restart:
        files.append(_file(RESTART_SCRIPT, _script("set -e", "update-grub", *(["reboot"] if reboot_skip else [])),
                           "0755"))
    # Run through bash: ovs.sh is `set -e` + the flavor's script, with no shebang of its own.
    runcmd = []
    if nvconfig:
        runcmd.append(f"bash {NVCONFIG_SCRIPT}")
    if ovs:
        runcmd.append(f"bash {OVS_SCRIPT}")
    if endpoint:
        runcmd += [f"bash {CONTAINERD_SCRIPT}", "systemctl restart containerd"]
    if restart:
        runcmd.append(f"bash {RESTART_SCRIPT}")
    return files, runcmd


def user_data(flavor: DPUFlavorSpec, dpu_name: str, join_command: str, reboot_skip: bool) -> dict[str, Any]:
    """The cloud-init user-data document (as data) the bf.cfg seeds."""
    _, password = _split_parameters(flavor.bfcfg_parameters or [])
    nvconfig = _nvconfig_parameters(flavor)
    flavor_files, flavor_runcmd = _flavor_files(flavor, reboot_skip)
    return {
        "chpasswd": {"expire": password is None,
                     "list": f"ubuntu:{password if password is not None else 'ubuntu'}"},
        "write_files": _fixed_files(join_command, _pf_total_sf(nvconfig)) + flavor_files,
        "runcmd": [
            ["hostnamectl", "set-hostname", dpu_name],
            "modprobe br_netfilter",
            "sysctl --system",
            "systemctl stop kubelet",
            "/opt/dpf/cleanup-dns.sh",
            "/opt/dpf/remove-90-kubelet-bluefield.sh",
            "systemctl enable containerd",
            "systemctl start containerd",
            "systemctl enable bootstrap-dpf.service",
            "systemctl enable kubeadm-join.service",
            "systemctl enable mlnx_bf_configure_sync.service",
            *flavor_runcmd,
        ],
    }


def _heredoc_marker(body: str) -> str:
    """A heredoc delimiter no line of `body` equals (even stripped, as lab/emulator/bfcfg.py compares)."""
    lines = {line.strip() for line in body.splitlines()}
    marker, n = "DPF_USER_DATA_EOF", 0
    while marker in lines:
        n += 1
        marker = f"DPF_USER_DATA_EOF_{n}"
    return marker


def render_bfcfg(flavor_spec: DPUFlavorSpec | None, dpu_name: str, join_command: str,
                 reboot_skip: bool = False) -> str:
    """The bf.cfg for DPU `dpu_name` installed with `flavor_spec` (None: an empty flavor).

    `join_command` is the kubeadm join command the DPU runs (with retry) to join the DPU cluster;
    `reboot_skip` is True when the host's reboot command is `skip`, which adds a `reboot` to restart.sh.
    Raises BfCfgTooLarge, naming the flavor field that contributes most, past MAX_BFCFG_BYTES.
    """
    flavor = flavor_spec if flavor_spec is not None else DPUFlavorSpec()
    header, _ = _split_parameters(flavor.bfcfg_parameters or [])
    document = yaml.dump(user_data(flavor, dpu_name, join_command, reboot_skip), Dumper=_Dumper,
                         sort_keys=False, default_flow_style=False, allow_unicode=True, width=1 << 20)
    body = "#cloud-config\n" + document
    marker = _heredoc_marker(body)
    meta = json.dumps({"instance-id": dpu_name, "local-hostname": dpu_name})
    text = "\n".join([
        *header,
        "",
        "bfb_modify_os()",
        "{",
        "  echo 'network: {config: disabled}' > /mnt/etc/cloud/cloud.cfg.d/99-disable-network-config.cfg",
        "  cp /etc/systemd/system/mlnx_bf_configure_sync.service /mnt/etc/systemd/system/ || true",
        "  mkdir -p /mnt/var/lib/cloud/seed/nocloud-net",
        f"  echo {shlex.quote(meta)} > {META_DATA}",
        f"  cat << '{marker}' > {USER_DATA}",
        body + marker,
        "}",
        "",
    ])
    size = len(text.encode())
    if size > MAX_BFCFG_BYTES:
        field, field_size = _largest_field(flavor)
        raise BfCfgTooLarge(size, field, field_size)
    return text


def _largest_field(flavor: DPUFlavorSpec) -> tuple[str, int]:
    def size(values: list[str] | None) -> int:
        return sum(len(v.encode()) + 1 for v in values or [])

    parts: list[tuple[str, int]] = [
        ("spec.bfcfgParameters", size(flavor.bfcfg_parameters)),
        ("spec.grub.kernelParameters", size(flavor.grub.kernel_parameters if flavor.grub else None)),
        ("spec.sysctl.parameters", size(flavor.sysctl.parameters if flavor.sysctl else None)),
        ("spec.nvconfig[0].parameters", size(_nvconfig_parameters(flavor))),
        ("spec.ovs.rawConfigScript", size([flavor.ovs.raw_config_script or ""] if flavor.ovs else None)),
        ("spec.containerdConfig.registryEndpoint",
         size([flavor.containerd_config.registry_endpoint or ""] if flavor.containerd_config else None)),
    ]
    parts += [(f"spec.configFiles[{i}].raw", size([c.raw or ""])) for i, c in enumerate(flavor.config_files or [])]
    return max(parts, key=lambda p: p[1])
