"""The live-chain bed for the reliability bench commands: both control planes, a namespace, and
`tests/reliability/livebed.live_chain` on top (the same bed the tests use), in a temporary workdir."""

from __future__ import annotations

import contextlib
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from kubernetes import client as k8s  # noqa: E402

from dpf.lab.bed.kube import ControlPlane  # noqa: E402
from dpf.lab.bed.netns import NetnsBed, reap_stale  # noqa: E402
from dpf.lab.bed.process import exit_on_sigterm  # noqa: E402
from tests.reliability.livebed import Live, live_chain  # noqa: E402

OWNER = "r"  # network namespaces are dpf-r<pid>-*: a crashed run's are reaped by the next


@contextlib.contextmanager
def live_bed(workdir: Path | None = None) -> Iterator[Live]:
    exit_on_sigterm()
    reap_stale(OWNER)
    with contextlib.ExitStack() as stack:
        root = workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dpf-reliability-")))
        host = stack.enter_context(ControlPlane(root / "host", name="host"))
        dpu = stack.enter_context(ControlPlane(root / "dpu", name="dpu"))
        namespace = f"reliability-{uuid.uuid4().hex[:6]}"
        k8s.CoreV1Api(host.client).create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=namespace)))
        netns = NetnsBed(owner=OWNER)
        stack.callback(netns.cleanup)
        yield stack.enter_context(live_chain(host, dpu, namespace, netns, root / "bed"))
