"""The controller's RBAC is sufficient and minimal, against the real apiserver.

Sufficient: the real controller (every reconciler) runs in-process on bearer tokens of its two
ServiceAccounts, minted with the TokenRequest API: `dpf-controller` (the host-cluster roles) and
`dpf-controller-dpu-cluster` (the DPU-cluster role; the bed is both clusters, as in the lab). It takes the
Lease and makes its CA Secret in dpf-operator-system, reads a DPUCluster's kubeconfig Secret and connects,
mirrors DPUServiceInterfaces/Chains into the DPU cluster and writes every status, makes DPUs for a DPUSet on a
labelled Node, protects and finishes a BFB, splits an IPAM pool, records Events on both sides (an agent NACK
for the DPU side), and tears it all down again, without one 403 in its logs.

Where: the Lease and the CA Secret in dpf-operator-system itself (the real Role, bound as shipped); the DPF
objects in the test's own namespace, which the controller watches alone (so it never touches other tests'
objects). A DPUCluster outside dpf-operator-system needs the kubeconfig-reader ClusterRole bound in its
namespace, as docs/deploy.md says: the test does exactly that, so that path is proven too.

Minimal: `kubectl auth can-i` as either identity says no to what the controller must never do.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from dpf.controller.kube.rest import EVENT, LEASE, SECRET, Kind, KubeError, Obj, Rest
from dpf.controller.manager import Controller
from dpf.controller.provisioning.dpuset_plan import SET_NAME_LABEL
from dpf.controller.reconcilers.credentials import CREDENTIAL_REQUEST, SERVICE_ACCOUNT
from dpf.controller.reconcilers.dpuservicenad import DPU_SERVICE_NAD, NAD
from dpf.controller.reconcilers.dpuset import LEGACY_FINALIZER
from dpf.controller.reconcilers.kinds import (
    BFB,
    DPU,
    DPU_CLUSTER,
    DPU_FLAVOR,
    DPU_SERVICE_CHAIN,
    DPU_SERVICE_INTERFACE,
    DPU_SERVICE_IPAM,
    DPU_SET,
    NODE,
    SERVICE_CHAIN,
    SERVICE_CHAIN_SET,
    SERVICE_INTERFACE,
    SERVICE_INTERFACE_SET,
)
from dpf.controller.settings import BFBSettings, TLSSettings
from dpf.lab import chains
from dpf.lab.bed.kube import ControlPlane
from dpf.lab.bed.process import wait_until
from tests.api.helpers import example_documents
from tests.controlplane.harness import (
    InterfaceHandler,
    agent,
    controller_settings,
    eventually,
    host_rest,
    node_files,
    run,
    started,
    stop_task,
)
from tests.packaging.rbac import (
    CONTROLLER_SA,
    DPU_CLUSTER_SA,
    NAMESPACE,
    can_i,
    can_i_list,
    token_kubeconfig,
    user,
)

NAD_CRDS = Path(__file__).resolve().parents[2] / "lab" / "manifests" / "crds"  # Multus' CRD, not ours
SLOW = 90.0  # the garbage collector, and a machine running the whole suite
FORBIDDEN = re.compile(r"\b403\b|Forbidden")
ROLE_BINDING = Kind("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding")
ISOLATE = "dpf.test/fleet"  # host Nodes of this test only (as tests/provisioning does)
HOST_LABELS = {"feature.node.kubernetes.io/dpu-enabled": "true", "feature.node.kubernetes.io/dpu-0-pci-address":
               "0000-04-00", "feature.node.kubernetes.io/dpu-0-pf0-name": "ens1f0np0"}


@dataclasses.dataclass
class Scene:
    """What the scenario made, for the assertions and the cleanup."""

    namespace: str
    group: str
    host_node: str
    dpu_node: str
    bfb_file: Path
    sfc: dict[str, Obj]


def scene(namespace: str, tmp_path: Path) -> Scene:
    group = uuid.uuid4().hex[:6]
    sfc = {o["metadata"]["name"]: o for o in chains.hbn_only(namespace, group)}
    bad = {"apiVersion": DPU_SERVICE_INTERFACE.api_version, "kind": "DPUServiceInterface",
           "metadata": {"name": "bad-uplink", "namespace": namespace},
           "spec": {"template": {"spec": {"nodeSelector": {"matchLabels": {chains.GROUP_LABEL: group}},
                                          "template": {"spec": {"interfaceType": "physical",
                                                                "physical": {"interfaceName": "bad0"}}}}}}}
    sfc = {"p0": sfc["p0"], "p1": sfc["p1"], "bad-uplink": bad, "hbn-to-fabric": sfc["hbn-to-fabric"]}
    return Scene(namespace, group, f"{namespace[:40]}-host", f"{namespace[:40]}-dpu",
                 tmp_path / "bfb" / "bf-bundle.bfb", sfc)


def provisioning_objects(s: Scene) -> list[Obj]:
    """The hbn_only guide's BFB, DPUFlavor and DPUSet; the BFB URL is a loopback address nobody serves (its
    file is already in the cache, so nothing is downloaded), the DPUSet selects this test's host Node only."""
    docs = {d["kind"]: d for d in example_documents("hbn_only.yaml", s.namespace)
            if d["kind"] in ("BFB", "DPUFlavor", "DPUSet")}
    docs["BFB"]["spec"] = {"url": "http://127.0.0.1:9/bf-bundle.bfb", "fileName": s.bfb_file.name}
    docs["DPUSet"]["spec"]["nodeSelector"]["matchLabels"][ISOLATE] = s.namespace
    docs["DPUSet"]["metadata"]["finalizers"] = [LEGACY_FINALIZER]  # as upstream leaves it: ours to remove
    return [docs["BFB"], docs["DPUFlavor"], docs["DPUSet"]]


def ipam_pool(s: Scene) -> Obj:
    return {"apiVersion": DPU_SERVICE_IPAM.api_version, "kind": "DPUServiceIPAM",
            "metadata": {"name": "pool1", "namespace": s.namespace},
            "spec": {"ipv4Subnet": {"subnet": "10.77.0.0/24", "gateway": "10.77.0.1", "perNodeIPCount": 8},
                     "nodeSelector": {"nodeSelectorTerms": [{"matchExpressions": [
                         {"key": chains.GROUP_LABEL, "operator": "In", "values": [s.group]}]}]}}}


async def make_world(admin: Rest, kube: ControlPlane, s: Scene) -> None:
    """As an admin: the RoleBinding docs/deploy.md asks for, the DPUCluster (its kubeconfig is the DPU-cluster
    ServiceAccount's token), the Nodes, and the DPF objects."""
    await admin.create(ROLE_BINDING, {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "dpf-controller-kubeconfig", "namespace": s.namespace},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": "dpf-controller-kubeconfig-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": CONTROLLER_SA, "namespace": NAMESPACE}]}, s.namespace)
    dpu_conf = yaml.safe_dump(token_kubeconfig(kube, DPU_CLUSTER_SA)).encode()
    for obj in chains.dpu_cluster(s.namespace, "dpu", dpu_conf):
        await admin.create(SECRET if obj["kind"] == "Secret" else DPU_CLUSTER, obj, s.namespace)
    await admin.create(NODE, {"apiVersion": "v1", "kind": "Node", "metadata": {
        "name": s.host_node, "labels": {**HOST_LABELS, ISOLATE: s.namespace}}})
    await admin.merge_patch(NODE, s.host_node, {"status": {"addresses": [
        {"type": "InternalIP", "address": "10.0.0.1"}]}}, subresource="status")
    await admin.create(NODE, chains.dpu_node(s.dpu_node, s.group, hbn=True))
    s.bfb_file.parent.mkdir()
    s.bfb_file.write_bytes(b"a BFB already in the cache")
    for obj in provisioning_objects(s):
        await admin.create({"BFB": BFB, "DPUFlavor": DPU_FLAVOR, "DPUSet": DPU_SET}[obj["kind"]], obj, s.namespace)
    for obj in s.sfc.values():
        kind = DPU_SERVICE_CHAIN if obj["kind"] == "DPUServiceChain" else DPU_SERVICE_INTERFACE
        await admin.create(kind, obj, s.namespace)
    await admin.create(DPU_SERVICE_IPAM, ipam_pool(s), s.namespace)
    # Credential requests: the issuer and writer roles bound here, as docs/deploy.md says; one request for
    # the host cluster, one for the DPU cluster (the bed, as the DPU-cluster identity).
    for role in ("dpf-controller-credential-issuer", "dpf-controller-credential-writer"):
        await admin.create(ROLE_BINDING, {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": role, "namespace": s.namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": CONTROLLER_SA, "namespace": NAMESPACE}]}, s.namespace)
    # A DPUServiceNAD: its NetworkAttachmentDefinition in the DPU cluster (Multus' CRD installed there).
    kube.install_crds(NAD_CRDS)
    await admin.create(DPU_SERVICE_NAD, {"apiVersion": DPU_SERVICE_NAD.api_version, "kind": DPU_SERVICE_NAD.kind,
                                         "metadata": {"name": "mybrsfc", "namespace": s.namespace},
                                         "spec": {"resourceType": "veth", "ipam": True}}, s.namespace)
    for name, target in (("creds-host", None), ("creds-dpu", {"name": "dpu"})):
        spec: dict[str, Any] = {"serviceAccount": {"name": f"{name}-sa"}, "type": "kubeconfig",
                                "secret": {"name": name}, "duration": "1h"}
        if target:
            spec["targetCluster"] = target
        await admin.create(CREDENTIAL_REQUEST, {"apiVersion": CREDENTIAL_REQUEST.api_version,
                                                "kind": CREDENTIAL_REQUEST.kind,
                                                "metadata": {"name": name, "namespace": s.namespace},
                                                "spec": spec}, s.namespace)


async def get(admin: Rest, kind: Kind, name: str, namespace: str | None) -> Obj | None:
    return await admin.get(kind, name, namespace)


def condition(obj: Obj | None, type_: str) -> dict[str, Any]:
    return next((c for c in ((obj or {}).get("status") or {}).get("conditions") or () if c["type"] == type_), {})


async def events(admin: Rest, namespace: str, reason: str, kind: str) -> list[Obj]:
    return [e for e in (await admin.list(EVENT, namespace))["items"]
            if e.get("reason") == reason and e["regarding"].get("kind") == kind]


async def gone(admin: Rest, kind: Kind, namespace: str) -> bool:
    return not (await admin.list(kind, namespace))["items"]


async def converged(admin: Rest, controller: Controller, s: Scene) -> None:
    """Every write path of the controller, observed through the apiserver."""
    ns = s.namespace
    # Leader election and the CA, in dpf-operator-system.
    lease = await eventually(lambda: get(admin, LEASE, "dpf-controller", NAMESPACE), "the Lease")
    assert lease["spec"]["holderIdentity"] == controller.identity
    ca = await get(admin, SECRET, TLSSettings.ca_secret, NAMESPACE)
    assert ca is not None
    assert ca["type"] == "kubernetes.io/tls"
    elected = await eventually(lambda: events(admin, NAMESPACE, "LeaderElected", "Lease"), "the LeaderElected Event")
    assert any(controller.identity in e["note"] for e in elected), elected
    # The DPUCluster's Secret was read: the DPU cluster is connected.
    await eventually(lambda: f"{ns}/dpu" in controller.clusters.dpu, "the DPU cluster connected")
    # Mirror (host → DPU cluster), the per-node children, and the statuses on both sides.
    for name, set_kind, child_kind in (("p0", SERVICE_INTERFACE_SET, SERVICE_INTERFACE),
                                       ("hbn-to-fabric", SERVICE_CHAIN_SET, SERVICE_CHAIN)):
        parent_kind = DPU_SERVICE_CHAIN if set_kind is SERVICE_CHAIN_SET else DPU_SERVICE_INTERFACE
        reconciled = f"{set_kind.kind}Reconciled"
        parent = await eventually(lambda k=parent_kind, n=name, r=reconciled: _where(
            get(admin, k, n, ns), lambda o: condition(o, r).get("status") == "True"), f"{name} {reconciled}")
        assert parent["metadata"]["finalizers"]
        child_set = await eventually(lambda k=set_kind, n=name: _where(
            get(admin, k, n, ns), lambda o: (o.get("status") or {}).get("observedGeneration")), f"{name}'s set status")
        assert child_set["metadata"]["finalizers"]
        await eventually(lambda k=child_kind, n=name: get(admin, k, f"{n}-{s.dpu_node}", ns), f"{name} on the DPU")
    # DPUSet → a DPU on the labelled host Node, the set's status, and its Event.
    dpus = await eventually(lambda: _items(admin, DPU, ns), "a DPU")
    assert [d["metadata"]["labels"][SET_NAME_LABEL] for d in dpus] == ["dpuset"]
    assert dpus[0]["spec"]["nodeName"] == s.host_node
    await eventually(lambda: _where(get(admin, DPU_SET, "dpuset", ns),
                                    lambda o: (o.get("status") or {}).get("dpuStatistics")), "dpuStatistics")
    await eventually(lambda: events(admin, ns, "SuccessfulCreate", "DPUSet"), "SuccessfulCreate")
    # The BFB: its file finalizer, Ready from the cache; the in-use protection on it and on the flavor.
    bfb = await eventually(lambda: _where(get(admin, BFB, "bf-bundle", ns),
                                          lambda o: (o.get("status") or {}).get("phase") == "Ready"), "BFB Ready")
    assert set(bfb["metadata"]["finalizers"]) == {"provisioning.dpu.nvidia.com/bfb-file",
                                                  "provisioning.dpu.nvidia.com/bfb-protection"}
    await eventually(lambda: _where(get(admin, DPU_FLAVOR, "dpf-provisioning-hbn", ns),
                                    lambda o: o["metadata"].get("finalizers")), "the DPUFlavor protected")
    # The host Node leaves the selection: its DPU is deleted (the garbage collector is not involved).
    await admin.merge_patch(NODE, s.host_node, {"metadata": {"labels": {ISOLATE: None}}})
    await eventually(lambda: events(admin, ns, "SuccessfulDelete", "DPUSet"), "SuccessfulDelete")
    await eventually(lambda: gone(admin, DPU, ns), "the DPU deleted")
    await admin.merge_patch(NODE, s.host_node, {"metadata": {"labels": {ISOLATE: s.namespace}}})
    await eventually(lambda: _items(admin, DPU, ns), "the DPU back")
    # The IPAM pool: its split in status.
    await eventually(lambda: _where(get(admin, DPU_SERVICE_IPAM, "pool1", ns),
                                    lambda o: (o.get("status") or {}).get("allocations")), "pool1 allocations")
    # The DPUServiceNAD Ready, its NAD written.
    await eventually(lambda: _where(get(admin, DPU_SERVICE_NAD, "mybrsfc", ns),
                                    lambda o: condition(o, "Ready").get("status") == "True"), "mybrsfc Ready")
    assert await get(admin, NAD, "mybrsfc", ns) is not None
    # Credentials: both requests Ready, their accounts and Secrets made.
    for name in ("creds-host", "creds-dpu"):
        await eventually(lambda n=name: _where(get(admin, CREDENTIAL_REQUEST, n, ns),
                                               lambda o: condition(o, "Ready").get("status") == "True"),
                         f"{name} Ready")
        assert await get(admin, SERVICE_ACCOUNT, f"{name}-sa", ns) is not None
        assert await get(admin, SECRET, name, ns) is not None


async def nack_event(admin: Rest, controller: Controller, s: Scene, tmp_path: Path) -> None:
    """An agent refuses the bad uplink: the Warning Event is written with the DPU-cluster identity."""
    tls = await node_files(admin, NAMESPACE, s.dpu_node, "dpu", tmp_path / "pki")  # from the CA it made
    runtime = agent(s.dpu_node, [controller.grpc_port], tmp_path / "agent", tls, InterfaceHandler())
    task = asyncio.create_task(runtime.run(), name="agent")
    try:
        found = await eventually(lambda: events(admin, s.namespace, "AgentRejected", "ServiceInterface"),
                                 "the AgentRejected Event")
        assert found[0]["regarding"]["name"] == f"bad-uplink-{s.dpu_node}"
        assert found[0]["reportingController"] == "dpf-controller"
    finally:
        await stop_task(task)


async def teardown(admin: Rest, s: Scene) -> None:
    """Delete with the controller running: every finalizer it set is removed by it, the BFB file too."""
    ns = s.namespace
    for obj in s.sfc.values():
        kind = DPU_SERVICE_CHAIN if obj["kind"] == "DPUServiceChain" else DPU_SERVICE_INTERFACE
        await admin.delete(kind, obj["metadata"]["name"], ns)
    await admin.delete(BFB, "bf-bundle", ns)  # still used by the DPUSet: kept, and says so
    await eventually(lambda: events(admin, ns, "InUse", "BFB"), "the InUse Event")
    await eventually(lambda: _where(get(admin, BFB, "bf-bundle", ns),
                                    lambda o: (o.get("status") or {}).get("phase") == "Deleting"), "BFB Deleting")
    await admin.delete(DPU_SET, "dpuset", ns)
    await admin.delete(DPU_FLAVOR, "dpf-provisioning-hbn", ns)
    await admin.delete(DPU_SERVICE_IPAM, "pool1", ns)
    for name in ("creds-host", "creds-dpu"):
        await admin.delete(CREDENTIAL_REQUEST, name, ns)
    await admin.delete(DPU_SERVICE_NAD, "mybrsfc", ns)
    for kind in (DPU_SERVICE_INTERFACE, DPU_SERVICE_CHAIN, SERVICE_INTERFACE_SET, SERVICE_CHAIN_SET,
                 SERVICE_INTERFACE, SERVICE_CHAIN, DPU_SET, DPU, BFB, DPU_FLAVOR, CREDENTIAL_REQUEST, DPU_SERVICE_NAD,
                 NAD):
        await eventually(lambda k=kind: gone(admin, k, ns), f"every {kind.kind} gone", timeout=SLOW)
    for name in ("creds-host", "creds-dpu"):  # deleted by the controller before its finalizer went
        assert await get(admin, SERVICE_ACCOUNT, f"{name}-sa", ns) is None
        assert await get(admin, SECRET, name, ns) is None
    assert not s.bfb_file.exists(), "the deleted BFB's file is removed from the cache"
    await admin.delete(DPU_CLUSTER, "dpu", ns)


async def scrub(admin: Rest, s: Scene) -> None:
    """After a failure: drop finalizers left in the namespace (so it can go), the Nodes, the Lease and the CA."""
    for kind in (DPU_SERVICE_INTERFACE, DPU_SERVICE_CHAIN, SERVICE_INTERFACE_SET, SERVICE_CHAIN_SET, BFB,
                 DPU_FLAVOR, DPU_SET, CREDENTIAL_REQUEST, DPU_SERVICE_NAD):
        for obj in (await admin.list(kind, s.namespace))["items"]:
            if obj["metadata"].get("finalizers"):
                try:
                    await admin.merge_patch(kind, obj["metadata"]["name"], {"metadata": {"finalizers": None}},
                                            s.namespace)
                except KubeError as exc:
                    if not exc.not_found:
                        raise
    for node in (s.host_node, s.dpu_node):
        await admin.delete(NODE, node)
    await admin.delete(LEASE, "dpf-controller", NAMESPACE)
    await admin.delete(SECRET, TLSSettings.ca_secret, NAMESPACE)


async def _where(obj_coro: Any, predicate: Any) -> Obj | None:
    obj = await obj_coro
    return obj if obj is not None and predicate(obj) else None


async def _items(admin: Rest, kind: Kind, namespace: str) -> list[Obj]:
    return [o for o in (await admin.list(kind, namespace))["items"] if not o["metadata"].get("deletionTimestamp")]


def test_controller_runs_on_exactly_its_rbac(installed: ControlPlane, namespace: str, tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    kube = installed
    caplog.set_level(logging.DEBUG, logger="dpf")  # a 403 on a retried reconcile is only logged at debug
    kubeconfig = tmp_path / "controller.kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(token_kubeconfig(kube, CONTROLLER_SA)))
    s = scene(namespace, tmp_path)
    settings = controller_settings(kubeconfig, NAMESPACE)
    settings = dataclasses.replace(settings, kube=dataclasses.replace(settings.kube, watch_namespace=namespace),
                                   bfb=BFBSettings(directory=s.bfb_file.parent))

    async def scenario() -> None:
        admin = await host_rest(kube.kubeconfig)
        try:
            assert await get(admin, SECRET, TLSSettings.ca_secret, NAMESPACE) is None, "the controller makes its CA"
            await make_world(admin, kube, s)
            controller = await started(Controller(settings))
            try:
                await converged(admin, controller, s)
                await nack_event(admin, controller, s, tmp_path)
                await teardown(admin, s)
            finally:
                await controller.stop()
        finally:
            await scrub(admin, s)
            await admin.close()

    run(scenario(), timeout=240)
    refused = [f"{r.name}: {r.getMessage()}" for r in caplog.records
               if FORBIDDEN.search(r.getMessage() + (r.exc_text or ""))]
    assert refused == [], "the controller was refused something:\n" + "\n".join(refused)
    assert any("became leader" in r.getMessage() for r in caplog.records), "the log capture works"


# (verb, resource, scope...) the controller must never be allowed.
NEVER = [
    ("list", "secrets", "-n", "default"), ("get", "secrets", "-n", "kube-system"),
    ("list", "secrets", "--all-namespaces"), ("get", "secrets", "--all-namespaces"),
    ("list", "secrets", "-n", NAMESPACE), ("watch", "secrets", "-n", NAMESPACE),
    ("update", "secrets", "-n", NAMESPACE), ("delete", "secrets", "-n", NAMESPACE),
    ("create", "pods", "-n", NAMESPACE), ("create", "pods", "--all-namespaces"),
    ("create", "pods", "--subresource=exec", "-n", NAMESPACE),
    ("delete", "nodes"), ("update", "nodes"), ("patch", "nodes", "--subresource=status"),
    ("delete", "pods", "--all-namespaces"), ("get", "pods", "-n", "default"),  # drain evicts, never deletes
    ("create", "deployments.apps", "-n", NAMESPACE),
    ("create", "serviceaccounts", "--subresource=token", "-n", NAMESPACE),  # credential roles: bound nowhere
    ("create", "serviceaccounts", "--subresource=token", "-n", "kube-system"),
    ("create", "serviceaccounts", "-n", "default"), ("delete", "serviceaccounts", "-n", "default"),
    ("patch", "secrets", "-n", "default"), ("create", "secrets", "-n", "default"),
    ("bind", "clusterroles"), ("escalate", "clusterroles"), ("bind", "roles", "-n", NAMESPACE),
    ("escalate", "roles", "-n", NAMESPACE), ("create", "clusterrolebindings"),
    ("impersonate", "users"), ("impersonate", "serviceaccounts", "-n", NAMESPACE),
    ("update", "leases/another-lease", "-n", NAMESPACE), ("delete", "leases/dpf-controller", "-n", NAMESPACE),
    ("create", "events", "-n", "default"),  # core v1 Events: it writes events.k8s.io only
    ("get", "dpusets.provisioning.dpu.nvidia.com", "-n", "default"),  # reads come from watch caches
    ("deletecollection", "dpusets.provisioning.dpu.nvidia.com", "--all-namespaces"),  # one by one, uid-guarded
    ("update", "customresourcedefinitions.apiextensions.k8s.io"),
    ("list", "services", "--all-namespaces"), ("update", "services", "-n", NAMESPACE),  # configPorts: by name
    ("deletecollection", "endpointslices.discovery.k8s.io", "-n", NAMESPACE),
    ("*", "*", "--all-namespaces"),
]
# Positive controls: what it needs answers yes (so every "no" above comes from the rules, not a broken check).
NEEDED = [
    ("get", "secrets", "-n", NAMESPACE), ("create", "secrets", "-n", NAMESPACE),
    ("update", "leases/dpf-controller", "-n", NAMESPACE),
    ("list", "dpusets.provisioning.dpu.nvidia.com", "--all-namespaces"),
    ("create", "dpus.provisioning.dpu.nvidia.com", "-n", "default"),
    ("patch", "dpuserviceinterfaces.svc.dpu.nvidia.com", "--subresource=status", "-n", "default"),
    ("patch", "dpus.provisioning.dpu.nvidia.com", "--subresource=status", "-n", "default"),  # the phase machine
    ("create", "events.events.k8s.io", "-n", "default"), ("watch", "nodes"),
    ("patch", "nodes"), ("create", "pods", "--subresource=eviction", "-n", "default"),  # labels, node effect
    ("list", "dpuservicecredentialrequests.svc.dpu.nvidia.com", "--all-namespaces"),
    ("patch", "dpuservicecredentialrequests.svc.dpu.nvidia.com", "--subresource=status", "-n", "default"),
    ("watch", "dpuservicenads.svc.dpu.nvidia.com", "--all-namespaces"),
    ("patch", "dpuservicenads.svc.dpu.nvidia.com", "--subresource=status", "-n", "default"),
    ("create", "dpuservices.svc.dpu.nvidia.com", "-n", "default"), ("delete", "dpusets.provisioning.dpu.nvidia.com",
                                                                      "-n", "default"),  # DPUDeployment children
    ("patch", "services", "-n", "default"), ("delete", "endpointslices.discovery.k8s.io", "-n", "default"),  # ports
]
DPU_NEVER = [
    ("get", "secrets", "--all-namespaces"), ("list", "secrets", "-n", NAMESPACE),
    ("get", "secrets", "-n", "kube-system"),
    ("approve", "signers.certificates.k8s.io/kubernetes.io/kube-apiserver-client"),
    ("create", "pods", "--all-namespaces"), ("delete", "pods", "--all-namespaces"), ("update", "nodes"),
    ("patch", "nodes", "--subresource=status"), ("delete", "namespaces"),
    ("create", "dpus.provisioning.dpu.nvidia.com", "-n", NAMESPACE),
    ("list", "network-attachment-definitions.k8s.cni.cncf.io", "--all-namespaces"),  # read by name only
    ("bind", "clusterroles"), ("escalate", "clusterroles"), ("impersonate", "users"), ("*", "*", "--all-namespaces"),
    ("create", "services", "-n", "default"), ("get", "services", "-n", "default"),  # configPorts only lists them
]
DPU_NEEDED = [
    ("create", "servicechains.svc.dpu.nvidia.com", "-n", "default"), ("watch", "pods", "--all-namespaces"),
    ("create", "namespaces"),
    ("patch", "serviceinterfacesets.svc.dpu.nvidia.com", "--subresource=status", "-n", "default"),
    ("patch", "nodes"), ("delete", "nodes"),  # a provisioned DPU's Node: labels, deleted with the DPU
    ("create", "secrets", "-n", "kube-system"),  # the bootstrap token of a DPU's join
    ("update", "certificatesigningrequests.certificates.k8s.io", "--subresource=approval"),
    ("create", "serviceaccounts", "--subresource=token", "-n", "default"),  # credential requests aimed here
    ("patch", "serviceaccounts", "-n", "default"),
    ("create", "network-attachment-definitions.k8s.cni.cncf.io", "-n", "default"),  # DPUServiceNAD
    ("list", "services", "-n", "default"),  # the chart's Service of a DPUService's configPorts
]


@pytest.mark.parametrize(("identity", "never", "needed"), [(CONTROLLER_SA, NEVER, NEEDED),
                                                          (DPU_CLUSTER_SA, DPU_NEVER, DPU_NEEDED)],
                         ids=[CONTROLLER_SA, DPU_CLUSTER_SA])
def test_identity_cannot_do_what_the_controller_does_not_need(installed: ControlPlane, identity: str,
                                                              never: list[tuple[str, ...]],
                                                              needed: list[tuple[str, ...]]) -> None:
    kube = installed
    allowed = [" ".join(check) for check in never if can_i(kube, user(identity), *check)]
    assert allowed == [], f"{identity} may do more than it needs: {allowed}"
    missing = [" ".join(check) for check in needed if not can_i(kube, user(identity), *check)]
    assert missing == [], f"{identity} lacks: {missing}"
    for namespace in (NAMESPACE, "default"):
        rows = can_i_list(kube, user(identity), namespace)
        assert any("dpu.nvidia.com" in row["Resources"] for row in rows), rows  # the table was read
        wildcards = [row for row in rows if "*" in row["Verbs"] or row["Resources"].startswith("*")]
        assert wildcards == [], f"{identity} has wildcard rules in {namespace}: {wildcards}"


def test_controller_may_create_tls_secrets_only(installed: ControlPlane) -> None:
    """secret-policy.yaml: a ServiceAccount token Secret (for another account, to read it back) is refused."""
    kube = installed
    as_controller = f"--as={user(CONTROLLER_SA)}"
    token_secret = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token",
                    "metadata": {"name": "borrowed-token", "namespace": NAMESPACE,
                                 "annotations": {"kubernetes.io/service-account.name": DPU_CLUSTER_SA}}}

    def refused() -> str:
        result = kube.kubectl("create", "--dry-run=server", "-f", "-", as_controller,
                              input=yaml.safe_dump(token_secret), check=False)
        return result.stderr if result.returncode != 0 else ""

    wait_until(refused, 30, "the secret policy in force (policies load asynchronously)")
    assert "may only create Secrets of type kubernetes.io/tls" in refused()
    tls_secret = {**token_secret, "type": "kubernetes.io/tls", "metadata": {"name": "a-ca", "namespace": NAMESPACE},
                  "data": {"tls.crt": "", "tls.key": ""}}
    accepted = kube.kubectl("create", "--dry-run=server", "-f", "-", as_controller, input=yaml.safe_dump(tls_secret),
                            check=False)
    assert accepted.returncode == 0, accepted.stderr
    # An admin is not limited by it.
    assert kube.kubectl("create", "--dry-run=server", "-f", "-", input=yaml.safe_dump(token_secret),
                        check=False).returncode == 0


def test_credential_secrets_and_tokens_are_limited_by_policy(installed: ControlPlane) -> None:
    """secret-policy.yaml and token-policy.yaml, with the credential roles bound in dpf-operator-system (as for
    upstream's examples): Opaque Secrets only with a credential request's label, changes and deletes only of
    those, and no token for the controller's own ServiceAccounts."""
    kube = installed
    as_controller = f"--as={user(CONTROLLER_SA)}"
    bindings = [("rolebinding", role, "-n", NAMESPACE, f"--clusterrole={role}",
                 f"--serviceaccount={NAMESPACE}:{CONTROLLER_SA}")
                for role in ("dpf-controller-credential-issuer", "dpf-controller-credential-writer")]

    def secret(name: str, **labels: str) -> str:
        return yaml.safe_dump({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                               "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels},
                               "stringData": {"TOKEN_FILE": "x"}})

    def as_ctl(*args: str, input: str | None = None) -> Any:
        return kube.kubectl(*args, as_controller, input=input, check=False)

    labelled = {"dpu.nvidia.com/dpuservicecredentialrequest-name": "r",
                "dpu.nvidia.com/dpuservicecredentialrequest-namespace": NAMESPACE}
    try:
        for binding in bindings:
            kube.kubectl("create", *binding)
        kube.kubectl("create", "-f", "-", input=secret("someone-elses"))
        kube.kubectl("create", "serviceaccount", "some-service", "-n", NAMESPACE)

        def policy_in_force() -> bool:
            return as_ctl("create", "--dry-run=server", "-f", "-", input=secret("plain")).returncode != 0
        wait_until(policy_in_force, 30, "the secret policy in force")
        assert "Opaque credential Secrets" in as_ctl("create", "--dry-run=server", "-f", "-",
                                                       input=secret("plain")).stderr
        made = as_ctl("create", "-f", "-", input=secret("mine", **labelled))
        assert made.returncode == 0, made.stderr
        assert as_ctl("label", "secret", "mine", "-n", NAMESPACE, "extra=1").returncode == 0
        stripped = as_ctl("label", "secret", "mine", "-n", NAMESPACE,
                          "dpu.nvidia.com/dpuservicecredentialrequest-name-")
        assert "only change the credential Secrets" in stripped.stderr
        assert "only change the credential Secrets" in as_ctl("label", "secret", "someone-elses", "-n",
                                                                NAMESPACE, "extra=1").stderr
        assert "only delete the credential Secrets" in as_ctl("delete", "secret", "someone-elses", "-n",
                                                               NAMESPACE).stderr
        assert as_ctl("delete", "secret", "mine", "-n", NAMESPACE).returncode == 0

        def token_policy_in_force() -> bool:
            return as_ctl("create", "token", CONTROLLER_SA, "-n", NAMESPACE).returncode != 0
        wait_until(token_policy_in_force, 30, "the token policy in force")
        for own in (CONTROLLER_SA, DPU_CLUSTER_SA):
            assert "may not issue tokens for its own ServiceAccount" in as_ctl(
                "create", "token", own, "-n", NAMESPACE).stderr
        issued = as_ctl("create", "token", "some-service", "-n", NAMESPACE)
        assert issued.returncode == 0, issued.stderr
    finally:
        for binding in bindings:
            kube.kubectl("delete", "rolebinding", binding[1], "-n", NAMESPACE, "--ignore-not-found", check=False)
        kube.kubectl("delete", "secret", "someone-elses", "mine", "-n", NAMESPACE, "--ignore-not-found", check=False)
        kube.kubectl("delete", "serviceaccount", "some-service", "-n", NAMESPACE, "--ignore-not-found", check=False)
