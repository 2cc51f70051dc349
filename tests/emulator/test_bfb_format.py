"""The emulated BFB format and the bf.cfg reader, on their own."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from dpf.lab.emulator import EmulatedBfb, parse_bfcfg
from dpf.lab.emulator.bfb import HEADER_SIZE, BfbHeader, StreamVerifier
from dpf.lab.emulator.serve import BfbHttpServer
from tests.emulator.conftest import SAMPLE_BFCFG


def stream(data: bytes, piece: int = 4096) -> StreamVerifier:
    verifier = StreamVerifier()
    for i in range(0, len(data), piece):
        verifier.feed(memoryview(data[i:i + piece]))
    return verifier


def test_header_names_version_size_and_payload_checksum(tmp_path: Path) -> None:
    image = EmulatedBfb("bf-bundle-2.9.1-30", 3 * 65536 + 17, seed=5)
    raw = image.write(tmp_path / "a.bfb").read_bytes()
    header = BfbHeader.unpack(raw)
    assert header.version == "bf-bundle-2.9.1-30"
    assert header.payload_size == len(raw) - HEADER_SIZE
    assert header.sha256 == hashlib.sha256(raw[HEADER_SIZE:]).digest()


def test_payload_is_deterministic_per_seed_and_resumable_at_any_offset() -> None:
    a = b"".join(EmulatedBfb("v", 200_000, seed=1).chunks())
    assert a == b"".join(EmulatedBfb("v", 200_000, seed=1).chunks(chunk=999))
    assert a != b"".join(EmulatedBfb("v", 200_000, seed=2).chunks())
    for offset in (0, 7, HEADER_SIZE, 65_536 + 3, len(a) - 1):
        assert b"".join(EmulatedBfb("v", 200_000, seed=1).chunks(offset=offset, chunk=3000)) == a[offset:]


def test_verifier_accepts_the_image_and_returns_the_appended_bfcfg() -> None:
    data = b"".join(EmulatedBfb("v1", 300_000).chunks()) + SAMPLE_BFCFG.encode()
    outcome = stream(data).finish()
    assert outcome.ok, outcome.error
    assert (outcome.version, outcome.bfcfg) == ("v1", SAMPLE_BFCFG)


@pytest.mark.parametrize(("mangle", "error"), [
    (lambda d: d[:-10], "BFB truncated: 299990 of 300000"),
    (lambda d: b"X" + d[1:], "invalid BFB header: bad magic"),
    (lambda d: d[:50], "stream ended inside the BFB header"),
], ids=["truncated", "bad-magic", "short-header"])
def test_verifier_names_what_is_wrong(mangle, error: str) -> None:
    outcome = stream(mangle(b"".join(EmulatedBfb("v1", 300_000).chunks()))).finish()
    assert not outcome.ok
    assert error in outcome.error


def test_a_flipped_payload_byte_is_a_checksum_mismatch() -> None:
    outcome = stream(b"".join(EmulatedBfb("v1", 300_000, corrupt_at=123_456).chunks())).finish()
    assert not outcome.ok
    assert "checksum mismatch" in outcome.error


def test_bfcfg_gives_hostname_files_ovs_script_and_join_command() -> None:
    cfg = parse_bfcfg(SAMPLE_BFCFG)
    assert cfg.hostname == "dpu-node-a1"
    assert cfg.parameters == {"UPDATE_ATF_UEFI": "yes", "UPDATE_DPU_OS": "yes", "WITH_NIC_FW_UPDATE": "yes"}
    conf = cfg.file("/etc/mellanox/mlnx-bf.conf")
    assert conf is not None
    assert (conf.permissions, conf.content) == ("0644", 'ALLOW_SHARED_RQ="no"\nIPSEC_FULL_OFFLOAD="no"\n')
    sysctl = cfg.file("/etc/sysctl.conf")
    assert sysctl is not None
    assert sysctl.append
    assert cfg.ovs_script is not None
    assert "ovs-vsctl --may-exist add-br br-sfc" in cfg.ovs_script
    assert cfg.join_command is not None
    assert cfg.join_command.startswith("kubeadm join 10.0.0.1:6443 --token abcdef.0123456789abcdef")
    assert "&&" not in cfg.join_command


def test_http_serves_the_image_whole_and_from_an_offset(tmp_path: Path) -> None:
    image = EmulatedBfb("served", 5_000_000, seed=9)
    whole = b"".join(image.chunks())
    with BfbHttpServer({"a.bfb": image}) as server:
        got = subprocess.run(["curl", "-sf", server.url("a.bfb")], capture_output=True, check=True).stdout
        tail = subprocess.run(["curl", "-sf", "-r", "1000000-", server.url("a.bfb")], capture_output=True,
                              check=True).stdout
        missing = subprocess.run(["curl", "-sf", server.url("b.bfb")], capture_output=True)
    assert got == whole
    assert tail == whole[1_000_000:]
    assert missing.returncode == 22  # HTTP 404
    assert server.requests == [("a.bfb", 0), ("a.bfb", 1_000_000)]


def test_bfcfg_files_land_under_a_dpu_root_with_their_modes(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/sysctl.conf").write_text("vm.swappiness=10\n")
    parse_bfcfg(SAMPLE_BFCFG).write_files(tmp_path)
    assert (tmp_path / "etc/sysctl.conf").read_text() == "vm.swappiness=10\nnet.ipv4.ip_forward=1\n"  # append
    ovs = tmp_path / "opt/dpf/ovs.sh"
    assert ovs.stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "etc/netplan/60-mlnx.yaml").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "etc/mellanox/mlnx-bf.conf").read_text().startswith('ALLOW_SHARED_RQ="no"')
