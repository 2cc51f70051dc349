"""DPUFlavor -> bf.cfg (controller/provisioning/bfcfg.py): a golden render of upstream's hbn flavor, the
ubuntu password, append files, YAML-special content read back by the emulator's parser, the 128 KiB bound,
partial flavors."""

from __future__ import annotations

import os
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from dpf.controller.api.provisioning import DPUFlavorSpec
from dpf.controller.provisioning.bfcfg import MAX_BFCFG_BYTES, BfCfgTooLarge, render_bfcfg
from dpf.lab.emulator.bfcfg import BfCfg, parse_bfcfg

EXAMPLES = Path(__file__).parents[2] / "lab" / "manifests" / "upstream"
GOLDEN = Path(__file__).parent / "golden" / "hbn-bfcfg.cfg"
DPU = "worker-1-0000-08-00"
JOIN = ("kubeadm join 10.0.0.1:6443 --token abcdef.0123456789abcdef "
        "--discovery-token-ca-cert-hash sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")


def hbn_flavor() -> DPUFlavorSpec:
    docs = yaml.safe_load_all((EXAMPLES / "hbn_only.yaml").read_text())
    flavor = next(d for d in docs if d and d["kind"] == "DPUFlavor" and d["metadata"]["name"] == "dpf-provisioning-hbn")
    return DPUFlavorSpec.model_validate(flavor["spec"])


def render(spec: dict[str, Any] | DPUFlavorSpec | None, reboot_skip: bool = False) -> str:
    flavor = DPUFlavorSpec.model_validate(spec) if isinstance(spec, dict) else spec
    return render_bfcfg(flavor, DPU, JOIN, reboot_skip)


def user_data(text: str) -> dict[str, Any]:
    start = text.index("#cloud-config\n")
    marker = text[:start].rstrip().rsplit("'", 2)[-2]
    doc = yaml.safe_load(text[start:text.index("\n" + marker + "\n", start)])
    assert isinstance(doc, dict)
    return doc


def test_hbn_flavor_matches_golden() -> None:
    """Regenerate with DPF_UPDATE_GOLDEN=1 after a deliberate change, and review the diff."""
    text = render(hbn_flavor())
    if os.environ.get("DPF_UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()


def test_hbn_render_parses_in_the_emulator() -> None:
    flavor = hbn_flavor()
    cfg = parse_bfcfg(render(flavor))
    assert cfg.parameters == {"UPDATE_ATF_UEFI": "yes", "UPDATE_DPU_OS": "yes", "WITH_NIC_FW_UPDATE": "yes"}
    assert cfg.hostname == DPU
    assert cfg.runcmd[0] == f"hostnamectl set-hostname {DPU}"
    assert cfg.join_command == JOIN
    assert flavor.ovs is not None
    assert flavor.ovs.raw_config_script is not None
    assert cfg.ovs_script == "set -e\n" + flavor.ovs.raw_config_script
    conf = cfg.file("/etc/mellanox/mlnx-bf.conf")
    assert conf is not None
    assert conf.content == ('ALLOW_SHARED_RQ="no"\nIPSEC_FULL_OFFLOAD="no"\n'
                            'ENABLE_ESWITCH_MULTIPORT="yes"\n')
    grub = cfg.file("/etc/default/grub.d/99-dpf.cfg")
    assert grub is not None
    assert grub.content.startswith('GRUB_CMDLINE_LINUX="console=hvc0 console=ttyAMA0 ')
    sfs = cfg.file("/opt/dpf/configure-sfs.sh")
    assert sfs is not None
    assert "$(seq 0 19)" in sfs.content
    assert [c for c in cfg.runcmd if c.startswith("bash /opt/dpf/")] == [
        "bash /opt/dpf/set-nvconfig-params.sh", "bash /opt/dpf/ovs.sh", "bash /opt/dpf/restart.sh"]


@pytest.mark.parametrize("script", ["/opt/dpf/join_k8s_cluster.sh", "/opt/dpf/configure-sfs.sh",
                                    "/opt/dpf/set-nvconfig-params.sh", "/opt/dpf/restart.sh", "/opt/dpf/ovs.sh"])
def test_scripts_are_valid_bash(script: str) -> None:
    found = parse_bfcfg(render(hbn_flavor())).file(script)
    assert found is not None
    subprocess.run(["bash", "-n"], input=found.content, text=True, check=True)


def test_bfcfg_itself_is_valid_bash() -> None:
    subprocess.run(["bash", "-n"], input=render(hbn_flavor()), text=True, check=True)


def test_restart_reboots_only_when_the_reboot_command_is_skip() -> None:
    plain = parse_bfcfg(render(hbn_flavor())).file("/opt/dpf/restart.sh")
    skip = parse_bfcfg(render(hbn_flavor(), reboot_skip=True)).file("/opt/dpf/restart.sh")
    assert plain is not None
    assert skip is not None
    assert "update-grub" in plain.content
    assert "reboot" not in plain.content
    assert skip.content.splitlines()[-2:] == ["update-grub", "reboot"]


def test_ubuntu_password_moves_to_cloud_init() -> None:
    text = render({"bfcfgParameters": ["UPDATE_DPU_OS=yes", "ubuntu_PASSWORD='$1$salt$h4sh: #x'"]})
    assert "ubuntu_PASSWORD" not in text
    assert parse_bfcfg(text).parameters == {"UPDATE_DPU_OS": "yes"}
    assert user_data(text)["chpasswd"] == {"expire": False, "list": "ubuntu:$1$salt$h4sh: #x"}


def test_without_password_ubuntu_is_ubuntu_and_expired() -> None:
    assert user_data(render({}))["chpasswd"] == {"expire": True, "list": "ubuntu:ubuntu"}


def test_append_config_file() -> None:
    cfg = parse_bfcfg(render({"configFiles": [
        {"path": "/etc/hosts", "operation": "append", "raw": "10.0.0.9 registry\n", "permissions": "0644"},
        {"path": "/etc/motd", "operation": "override", "raw": "hi\n", "permissions": "0600"},
    ]}))
    hosts, motd = cfg.file("/etc/hosts"), cfg.file("/etc/motd")
    assert hosts is not None
    assert hosts.append
    assert hosts.content == "10.0.0.9 registry\n"
    assert motd is not None
    assert not motd.append
    assert motd.permissions == "0600"


YAML_SPECIAL = [
    "key: value\n# not a comment\n- not a list\n",
    "  leading spaces\ntrailing spaces   \n",
    "no trailing newline: {a: [1, 2]}",
    "'single' \"double\" `back` $HOME \\backslash\n",
    "EOF\nDPF_USER_DATA_EOF\n  DPF_USER_DATA_EOF  \n}\n",
    "tab\there\n\n\nblank lines above\n",
    "---\n...\n%YAML 1.2\n",
    "unicode: é ✓\n",
    "yes\n",
    "",
]


@pytest.mark.parametrize("raw", YAML_SPECIAL)
def test_yaml_special_content_round_trips(raw: str, tmp_path: Path) -> None:
    text = render({"configFiles": [{"path": "/etc/special.conf", "raw": raw, "permissions": "0640"}],
                   "ovs": {"rawConfigScript": raw}})
    cfg = parse_bfcfg(text)
    found = cfg.file("/etc/special.conf")
    assert found is not None
    assert found.content == raw
    assert found.permissions == "0640"
    assert cfg.hostname == DPU
    assert cfg.join_command == JOIN
    cfg.write_files(tmp_path)
    assert (tmp_path / "etc/special.conf").read_text() == raw


def test_bound_names_the_large_field() -> None:
    big = "x" * (MAX_BFCFG_BYTES + 1)
    with pytest.raises(BfCfgTooLarge, match=r"spec\.configFiles\[1\]\.raw") as error:
        render({"configFiles": [{"path": "/a", "raw": "small"}, {"path": "/b", "raw": big}]})
    assert error.value.field == "spec.configFiles[1].raw"
    with pytest.raises(BfCfgTooLarge, match=r"spec\.ovs\.rawConfigScript"):
        render({"ovs": {"rawConfigScript": "echo hi\n" * (MAX_BFCFG_BYTES // 8)}})


def test_just_under_the_bound_renders() -> None:
    assert len(render({"configFiles": [{"path": "/a", "raw": "x" * 100_000}]}).encode()) <= MAX_BFCFG_BYTES


@pytest.mark.parametrize("spec", [
    {},
    {"grub": {}, "sysctl": {}, "ovs": {}, "containerdConfig": {}, "nvconfig": [{"device": "*"}]},
    {"configFiles": [{"path": "/etc/empty"}, {"raw": "no path"}, {"operation": "append"}]},
    {"sysctl": {"parameters": ["net.core.somaxconn=4096"]}},
    {"containerdConfig": {"registryEndpoint": "https://mirror.example.com:5000"}},
])
def test_partial_flavor_renders(spec: dict[str, Any]) -> None:
    text = render(spec)
    cfg: BfCfg = parse_bfcfg(text)
    assert cfg.hostname == DPU
    assert cfg.join_command == JOIN
    subprocess.run(["bash", "-n"], input=text, text=True, check=True)
    for f in cfg.files:
        if f.path.endswith(".sh"):
            subprocess.run(["bash", "-n"], input=f.content, text=True, check=True)
    paths = {f.path for f in cfg.files}
    assert ("/opt/dpf/ovs.sh" in paths) == bool(spec.get("ovs", {}).get("rawConfigScript"))
    assert ("/opt/dpf/restart.sh" in paths) == bool(spec.get("sysctl", {}).get("parameters"))
    if "registryEndpoint" in spec.get("containerdConfig", {}):
        script = cfg.file("/opt/dpf/config_containerd.sh")
        assert script is not None
        assert "mirror.example.com:5000" in script.content
        assert cfg.runcmd[-2:] == ("bash /opt/dpf/config_containerd.sh", "systemctl restart containerd")
    if spec.get("configFiles"):
        empty = cfg.file("/etc/empty")
        assert empty is not None
        assert (empty.content, empty.permissions) == ("", "0644")


def test_no_flavor_renders() -> None:
    cfg = parse_bfcfg(render_bfcfg(None, DPU, JOIN))
    assert cfg.parameters == {}
    assert cfg.hostname == DPU


def test_grub_and_sysctl_files(tmp_path: Path) -> None:
    params = ["console=hvc0", 'quoted="a b"', "dollar=$HOME", "back=`x`\\y"]
    cfg = parse_bfcfg(render({"grub": {"kernelParameters": params},
                              "sysctl": {"parameters": ["net.core.somaxconn=4096", "vm.swappiness = 1"]}}))
    grub = cfg.file("/etc/default/grub.d/99-dpf.cfg")
    assert grub is not None
    sourced = subprocess.run(["bash", "-c", grub.content + '\nprintf %s "$GRUB_CMDLINE_LINUX"'],
                             capture_output=True, text=True, check=True, env={"HOME": "/root"}).stdout
    assert sourced == " ".join(params)
    sysctl = cfg.file("/etc/sysctl.d/99-dpf.conf")
    assert sysctl is not None
    assert sysctl.content == "net.core.somaxconn=4096\nvm.swappiness = 1\n"


@pytest.mark.parametrize("version", ["version = 2\n", "version = 3\n"])
def test_containerd_mirror_script(tmp_path: Path, version: str) -> None:
    cfg = parse_bfcfg(render({"containerdConfig": {"registryEndpoint": "https://mirror.example.com:5000"}}))
    script = cfg.file("/opt/dpf/config_containerd.sh")
    assert script is not None
    config = tmp_path / "config.toml"
    config.write_text(version)
    body = script.content.replace("/etc/containerd/config.toml", str(config)).replace(
        "mkdir -p /etc/containerd", "true")
    subprocess.run(["bash", "-c", body], check=True)
    subprocess.run(["bash", "-c", body], check=True)  # a second run changes nothing
    plugin = "io.containerd.cri.v1.images" if "3" in version else "io.containerd.grpc.v1.cri"
    registry = tomllib.loads(config.read_text())["plugins"][plugin]["registry"]
    assert registry["mirrors"]["nvcr.io"]["endpoint"] == ["https://mirror.example.com:5000"]
    assert registry["configs"]["mirror.example.com:5000"]["tls"]["insecure_skip_verify"] is True
