"""Fixtures for the reliability suites: the end-to-end bed shared with tests/e2e (two apiservers, the controller
process, two emulated DPUs with OVS and their agents), and that bed with the hbn_only chain live
(`livebed.live_chain`)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from dpf.lab.bed.kube import ControlPlane
from dpf.lab.bed.netns import NetnsBed
from tests.e2e.conftest import bed  # noqa: F401 - re-exported fixture
from tests.reliability.livebed import Live, live_chain

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for netns and OVS")


@pytest.fixture
def live(kube: ControlPlane, dpu_kube: ControlPlane, namespace: str, netns: NetnsBed,
         tmp_path: Path) -> Iterator[Live]:
    with live_chain(kube, dpu_kube, namespace, netns, tmp_path) as chain_bed:
        yield chain_bed
