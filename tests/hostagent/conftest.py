"""Fixtures: one emulated host with one BlueField-3 (fast boot stages), torn down after each test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dpf.lab.emulator import DpuSpec, EmulatedHost
from tests.hostagent.harness import host_name


@pytest.fixture
def host(tmp_path: Path) -> Iterator[EmulatedHost]:
    with EmulatedHost(host_name(), tmp_path / "host", [DpuSpec("BlueField-3")]) as h:
        yield h
