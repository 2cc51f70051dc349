"""rshim emulation through real FIFOs and files: streams with `cat` and Python, faults, misc commands, holder."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from dpf.lab.bed.process import wait_until
from dpf.lab.emulator import BootEvent, EmulatedBfb, EmulatedHost, RshimBusy, claim, holder
from tests.emulator.conftest import SAMPLE_BFCFG, Writer, misc_log, show_log

VERSION = "bf-bundle-2.9.1-30_24.11_ubuntu-22.04_prod"

BOOT_ORDER = [" INFO[BL2]: start", " INFO[BL2]: boot mode (rshim)", " INFO[BL31]: start", " INFO[UEFI]: eMMC init",
              " INFO[UEFI]: exit Boot Service", " INFO[MISC]: Found bf.cfg",
              " INFO[MISC]: Ubuntu installation started", " INFO[MISC]: Installation finished",
              " INFO[BL2]: boot mode (emmc)", " INFO[MISC]: Linux up", " INFO[MISC]: DPU is ready"]


def in_order(lines: list[str], wanted: list[str]) -> bool:
    it = iter(lines)
    return all(any(line == w for line in it) for w in wanted)


def write_image(tmp_path: Path, image: EmulatedBfb) -> tuple[Path, Path]:
    cfg = tmp_path / "bf.cfg"
    cfg.write_text(SAMPLE_BFCFG)
    return image.write(tmp_path / "image.bfb"), cfg


def test_cat_of_bfb_and_bfcfg_boots_the_dpu_with_its_bfcfg(host: EmulatedHost, tmp_path: Path) -> None:
    dpu = host.dpus[1]
    events: list[BootEvent] = []
    dpu.on_ready.append(events.append)
    misc = dpu.rshim.misc
    show_log(misc)
    bfb, cfg = write_image(tmp_path, EmulatedBfb(VERSION, 8 << 20, seed=3))
    subprocess.run(["sh", "-c", f"cat {bfb} {cfg} > {dpu.rshim.boot}"], check=True, timeout=30)
    event = dpu.wait_ready()
    assert in_order(misc_log(misc), BOOT_ORDER), misc_log(misc)
    assert not [line for line in misc_log(misc) if "ERR" in line]
    assert events == [event]
    assert (event.reason, event.version, event.hostname) == ("install", VERSION, "dpu-node-a1")
    assert event.bfcfg is not None
    assert event.bfcfg.text == SAMPLE_BFCFG
    assert "add-br br-sfc" in (event.bfcfg.ovs_script or "")
    header = misc.read_text().splitlines()
    assert "DEV_NAME        pcie-0000:09:00.0" in header
    assert "DEV_INFO        BlueField-2(Rev 1)" in header
    assert host.dpus[0].boots == []  # the other DPU on the host saw nothing


def test_python_writer_boots_and_the_log_is_hidden_below_display_level_2(host: EmulatedHost) -> None:
    dpu = host.dpus[0]
    writer = Writer(dpu.rshim.boot, iter([*EmulatedBfb("v2", 3 << 20).chunks(), SAMPLE_BFCFG.encode()]))
    event = dpu.wait_ready()
    writer.join(5)
    assert writer.error is None
    assert event.version == "v2"
    assert "Log Messages" not in dpu.rshim.misc.read_text()  # DISPLAY_LEVEL 0, as rshim starts
    show_log(dpu.rshim.misc)
    assert " INFO[MISC]: DPU is ready" in misc_log(dpu.rshim.misc)


@pytest.mark.parametrize("how", ["corrupt-file", "corrupt-fault", "truncated"])
def test_a_bad_image_gives_err_lines_and_no_boot(host: EmulatedHost, tmp_path: Path, how: str) -> None:
    dpu = host.dpus[0]
    show_log(dpu.rshim.misc)
    image = EmulatedBfb("v3", 2 << 20, corrupt_at=777_777 if how == "corrupt-file" else None)
    bfb, cfg = write_image(tmp_path, image)
    if how == "corrupt-fault":
        dpu.set_faults(corrupt=True)
    command = f"head -c 1000000 {bfb}" if how == "truncated" else f"cat {bfb} {cfg}"
    subprocess.run(["sh", "-c", f"{command} > {dpu.rshim.boot}"], check=True, timeout=30)
    wanted = "BFB truncated" if how == "truncated" else "BFB checksum mismatch"
    wait_until(lambda: any(line.startswith(" ERR[MISC]: " + wanted) for line in misc_log(dpu.rshim.misc)),
               10, "an ERR line in misc")
    time.sleep(dpu.faults.timings.install + dpu.faults.timings.linux + 0.3)
    lines = misc_log(dpu.rshim.misc)
    assert not [line for line in lines if "Found bf.cfg" in line or "Linux up" in line or "ready" in line]
    assert dpu.boots == []
    assert dpu.state == "error"
    assert dpu.installed_version == "factory"


def test_stall_blocks_the_writer_until_resumed(host: EmulatedHost) -> None:
    dpu = host.dpus[0]
    dpu.set_faults(stall=True)
    writer = Writer(dpu.rshim.boot, iter([*EmulatedBfb("v4", 16 << 20).chunks(), SAMPLE_BFCFG.encode()]))
    time.sleep(1.0)
    first = (writer.written, dpu.rshim.bytes_accepted)
    time.sleep(1.0)
    assert (writer.written, dpu.rshim.bytes_accepted) == first, "a stalled device took bytes"
    assert writer.written <= 1 << 20  # only the pipe's buffer, not the 16 MiB image
    assert writer.is_alive()
    dpu.set_faults(stall=False)
    event = dpu.wait_ready(timeout=20)
    writer.join(5)
    assert writer.error is None
    assert event.version == "v4"


def test_a_stream_given_up_on_a_stalled_device_is_refused_and_never_runs_into_the_next(host: EmulatedHost) -> None:
    """The flasher gives up on a stalled device and closes `boot` mid-image; once the stall is lifted, a new
    stream must boot on its own, not be read as the tail of the old one (which sat in the device's buffer)."""
    dpu = host.dpus[0]
    dpu.set_faults(stall=True)
    # What fits in the device's buffer, then the writer gives up and closes.
    assert 0 < fill_until_blocked(dpu.rshim.boot, b"".join(EmulatedBfb("v-old", 16 << 20).chunks())) < 16 << 20
    wait_until(lambda: len(dpu.rshim.streams) == 1 and dpu.rshim.streams[0].ended is not None, 10,
               "the truncated stream taken and ended although the device is stalled")
    assert dpu.rshim.streams[0].outcome is not None
    assert not dpu.rshim.streams[0].outcome.ok
    writer = Writer(dpu.rshim.boot, iter([*EmulatedBfb("v-new", 1 << 20).chunks(), SAMPLE_BFCFG.encode()]))
    dpu.set_faults(stall=False)
    event = dpu.wait_ready(timeout=20)
    writer.join(5)
    assert writer.error is None
    assert event.version == "v-new"


def test_rate_limit_is_honoured(host: EmulatedHost) -> None:
    dpu = host.dpus[0]
    rate = 8e6
    dpu.set_faults(rate=rate)
    image = EmulatedBfb("v5", 12_000_000)
    started = time.monotonic()
    writer = Writer(dpu.rshim.boot, iter([*image.chunks(), SAMPLE_BFCFG.encode()]))
    time.sleep(0.7)
    accepted = dpu.rshim.bytes_accepted
    ahead = writer.written - accepted
    assert 0 <= ahead <= 192 * 1024, "the writer is held back by the device, not by its own pace"
    assert accepted <= 0.8 * rate
    dpu.wait_ready(timeout=20)
    writer.join(5)
    record = dpu.rshim.streams[-1]
    assert record.ended is not None
    seconds = record.ended - record.started
    expected = record.bytes / rate
    assert expected * 0.9 <= seconds <= expected * 1.15, (seconds, expected)
    assert time.monotonic() - started >= expected * 0.9


def test_never_boots_stops_before_linux(host: EmulatedHost, tmp_path: Path) -> None:
    dpu = host.dpus[0]
    show_log(dpu.rshim.misc)
    dpu.set_faults(never_boots=True, timings={"install": 0.05})
    bfb, cfg = write_image(tmp_path, EmulatedBfb("v6", 1 << 20))
    subprocess.run(["sh", "-c", f"cat {bfb} {cfg} > {dpu.rshim.boot}"], check=True, timeout=30)
    wait_until(lambda: dpu.state == "hung", 10, "the DPU to hang after installing")
    time.sleep(0.5)
    lines = misc_log(dpu.rshim.misc)
    assert " INFO[MISC]: Installation finished" in lines
    assert " INFO[MISC]: Linux up" not in lines
    assert dpu.boots == []


def test_sw_reset_written_into_misc_reruns_the_boot(host: EmulatedHost) -> None:
    dpu = host.dpus[0]
    show_log(dpu.rshim.misc)
    subprocess.run(["sh", "-c", f'echo "SW_RESET 1" > {dpu.rshim.misc}'], check=True)
    event = dpu.wait_ready()
    assert (event.reason, event.version) == ("reset", "factory")
    lines = misc_log(dpu.rshim.misc)
    assert in_order(lines, [" INFO[BL2]: start", " INFO[BL2]: boot mode (emmc)", " INFO[UEFI]: exit Boot Service",
                            " INFO[MISC]: Linux up", " INFO[MISC]: DPU is ready"]), lines
    assert "SW_RESET        0 (1: reset)" in dpu.rshim.misc.read_text()


def test_a_command_written_into_a_misc_file_replaced_meanwhile_is_still_applied(host: EmulatedHost) -> None:
    dpu = host.dpus[0]
    with open(dpu.rshim.misc, "r+") as held:  # opened just before the emulator replaces misc
        dpu.rshim.log(" INFO[MISC]: a line that makes the emulator rewrite misc")
        assert os.stat(dpu.rshim.misc).st_ino != os.fstat(held.fileno()).st_ino
        held.truncate(0)
        held.write("SW_RESET 1\n")
    assert dpu.wait_ready().reason == "reset"


def test_rshim_holder_is_visible_to_a_second_claimant(host: EmulatedHost) -> None:
    rshim = host.dpus[0].rshim.directory
    assert holder(rshim) is None
    with claim(rshim, "dpf-host-agent"):
        held = holder(rshim)
        assert held is not None
        assert held.name == "dpf-host-agent"
        with pytest.raises(RshimBusy, match="held by dpf-host-agent"):
            claim(rshim, "second")
        assert holder(host.dpus[1].rshim.directory) is None  # per device
    assert holder(rshim) is None
    # Another process holding it (as a host-installed rshim service would), with the raw flock tool:
    other = subprocess.Popen(["flock", "-x", str(rshim), "sleep", "30"], start_new_session=True)
    try:
        wait_until(lambda: holder(rshim) is not None, 5, "the flock tool to take the rshim")
        with pytest.raises(RshimBusy, match=f"held by flock \\(pid {other.pid}\\)"):
            claim(rshim, "dpf-host-agent")
    finally:
        os.killpg(other.pid, signal.SIGKILL)  # flock and the sleep it runs, which inherited the lock
        other.wait()
    # The lock goes when the last process holding it has exited; `sleep` is not our child to wait for.
    wait_until(lambda: holder(rshim) is None, 5, "the killed flock tool's lock released")
    with claim(rshim, "dpf-host-agent"):
        pass  # the lock died with its holder


def fill_until_blocked(fifo: Path, data: bytes) -> int:
    """Write `data` into `fifo` until it would block; close; return the bytes written."""
    fd = os.open(fifo, os.O_WRONLY)
    try:
        os.set_blocking(fd, False)
        written = 0
        with contextlib.suppress(BlockingIOError):
            while written < len(data):
                written += os.write(fd, data[written:written + 65536])
        return written
    finally:
        os.close(fd)
