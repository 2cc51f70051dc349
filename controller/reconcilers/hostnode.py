"""Host Node labels from the host agent's detection: what upstream's dpudetector and node-feature-discovery put
on a host Node (upstream DPF v24.10), which the DPUSet reconciler reads to create DPUs.

The host agent reports a `HostInfo` (StatusReport of type dpf.v1.HostInfo, object "host", ObjectStatus.detail)
at start and on every change. From it the Node `<agent's node>` gets, for the i-th device of the report:

    feature.node.kubernetes.io/dpu-enabled=true                 (when at least one device is present)
    feature.node.kubernetes.io/dpu-<i>-pci-address=0000-08-00   (PF0's address, ':' → '-', function dropped:
                                                                 the form DPU names and the DPUSet use)
    feature.node.kubernetes.io/dpu-<i>-pf0-name=ens1f0np0
    feature.node.kubernetes.io/dpu-<i>-ps-id=MT_0000000884      (when the board's PSID is known)
    feature.node.kubernetes.io/dpu-oob-bridge-configured=true   (while the OOB bridge holds an address; removed
                                                                 when it does not)

Labels of devices no longer reported are removed. Only those label keys are ever written; every other label
of the Node is left alone. Without a report (agent never connected, or the controller restarted and the agent
has not spoken yet) the labels are left as they are: the absence of news is not news of absence. A label
value Kubernetes would refuse (a strange interface name) is left out, with a warning in the log.

Key: HostNodeKey(reconciler name, node). Enqueued by the agent's reports and by changes to the Node (created
after the report, or its labels edited by someone else: they are put back).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass

from dpf.controller.errors import TemporaryError
from dpf.controller.kube.informer import Informer
from dpf.controller.kube.rest import Obj
from dpf.controller.provisioning.dpuset_plan import LABEL_VALUE, NFD
from dpf.controller.reconcilers.base import Reconciler
from dpf.controller.reconcilers.keys import WorkKey
from dpf.controller.reconcilers.kinds import NODE
from dpf.proto import versioning
from dpf.proto.v1 import nodestate_pb2 as pb
from dpf.proto.v1 import provisioning_pb2

log = logging.getLogger(__name__)

HOST_INFO = versioning.type_url(provisioning_pb2.HostInfo)
HOST_OBJECT = "host"  # the one object of a HostInfo report
ENABLED = NFD + "dpu-enabled"
OOB_BRIDGE = NFD + "dpu-oob-bridge-configured"
DEVICE_LABEL = re.compile(r"^feature\.node\.kubernetes\.io/dpu-\d+-(pci-address|pf0-name|ps-id)$")
CACHE_RETRY = 0.5


@dataclass(frozen=True)
class HostNodeKey(WorkKey):
    """Bring one host Node's detection labels in line with its agent's latest HostInfo."""

    node: str


def owned(key: str) -> bool:
    """A label this reconciler writes (and so may remove)."""
    return key in (ENABLED, OOB_BRIDGE) or DEVICE_LABEL.match(key) is not None


def pci_label_value(address: str) -> str:
    """PF0's PCI address as the label carries it: "0000:08:00.0" → "0000-08-00"."""
    return address.split(".", 1)[0].replace(":", "-")


def desired_labels(info: provisioning_pb2.HostInfo) -> dict[str, str]:
    labels: dict[str, str] = {}
    if info.devices:
        labels[ENABLED] = "true"
    for i, device in enumerate(info.devices):
        prefix = f"{NFD}dpu-{i}-"
        for suffix, value in (("pci-address", pci_label_value(device.pci_address)), ("pf0-name", device.pf0_name),
                              ("ps-id", device.psid)):
            if not value:
                continue
            if not LABEL_VALUE.match(value):
                log.warning("host DPU %s: %s %r is not a valid label value; label %s%s left out",
                            device.pci_address, suffix, value, prefix, suffix)
                continue
            labels[prefix + suffix] = value
    if info.oob_bridge_configured:
        labels[OOB_BRIDGE] = "true"
    return labels


def label_patch(current: Mapping[str, str], desired: Mapping[str, str]) -> dict[str, str | None]:
    """The merge patch of metadata.labels: desired values that differ, owned labels not desired removed."""
    patch: dict[str, str | None] = {k: v for k, v in desired.items() if current.get(k) != v}
    patch.update({k: None for k in current if owned(k) and k not in desired})
    return patch


class HostNodeReconciler(Reconciler):
    name = "hostnode"
    kind = "Node"
    type_urls = (HOST_INFO,)

    def setup(self) -> None:
        self.nodes: Informer = self.ctx.clusters.host.informer(NODE)
        self.nodes.add_handler(lambda _t, old, new: self._on_node(old, new))
        self._reported: set[str] = set()  # nodes whose agent sent a HostInfo during this process's life

    def _enqueue(self, node: str) -> None:
        self.ctx.queue.add(HostNodeKey(self.name, node))

    def _on_node(self, old: Obj | None, new: Obj | None) -> None:
        if new is None:
            return
        name = new["metadata"]["name"]
        if name in self._reported and (old is None or old["metadata"].get("labels") != new["metadata"].get("labels")):
            self._enqueue(name)

    def on_status(self, node: str, type_url: str, report: pb.StatusReport) -> None:
        if type_url == HOST_INFO:
            self._reported.add(node)
            self._enqueue(node)

    def all_keys(self) -> Iterable[Hashable]:
        return [HostNodeKey(self.name, n) for n in sorted(self._reported)]

    def synced(self) -> bool:
        return self.nodes.synced.is_set()

    def host_info(self, node: str) -> provisioning_pb2.HostInfo | None:
        """The node agent's latest HostInfo, or None when it has reported none (or something else)."""
        status = self.ctx.nodes.get(node)
        observed = status.of(HOST_INFO).observed.get(HOST_OBJECT) if status is not None else None
        if observed is None or not observed.HasField("detail"):
            return None
        info = provisioning_pb2.HostInfo()
        if not observed.detail.Unpack(info):
            log.warning("node %s: HostInfo report carries a %s, ignored", node, observed.detail.type_url)
            return None
        return info

    async def reconcile(self, key: HostNodeKey) -> float | None:
        if not self.synced():
            raise TemporaryError("Node cache not synced yet", delay=CACHE_RETRY)
        info = self.host_info(key.node)
        node = self.nodes.get("", key.node)
        if info is None or node is None:  # no news, or no Node yet (its ADDED event brings us back)
            return None
        patch = label_patch(node["metadata"].get("labels") or {}, desired_labels(info))
        if not patch:
            return None
        await self.ctx.clusters.host.rest.merge_patch(NODE, key.node, {"metadata": {"labels": patch}})
        log.info("host node %s: detection labels %s", key.node,
                 ", ".join(f"{k}={v}" if v is not None else f"-{k}" for k, v in sorted(patch.items())))
        return None
