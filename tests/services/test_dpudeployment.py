"""DPUDeployment against the real apiserver (the project's CRDs, with their validation): upstream's 05.2 use-case
manifests (`ovn-hbn`: 4 services from templates and configurations, hbn's 3 interfaces, 3 chains mixing
serviceInterface and service ports, one DPU set) become exactly upstream's children; the dependencies are marked;
fitting and prerequisite failures are named and create nothing; configuration and spec changes reach the children;
deletion goes in upstream's order and releases the dependencies; junk does not disturb a good DPUDeployment.

Where the children's Ready is asserted by hand (the status subresource, as their reconcilers would write it), only
the DPUDeployment reconciler runs; the full controller runs too, without DPU clusters (no chart repository is
needed: the DPUServices only report that no DPU cluster is connected, which the DPUDeployment mirrors).
"""

from __future__ import annotations

import contextlib
import copy
import time
from typing import Any

from dpf.controller.kube.rest import Kind, KubeError, Obj, Rest
from dpf.controller.manager import Controller
from dpf.controller.reconcilers import dpudeployment_plan as plan
from dpf.controller.reconcilers.dpudeployment import DPUDeploymentReconciler
from dpf.controller.reconcilers.kinds import (
    BFB,
    DPU_DEPLOYMENT,
    DPU_FLAVOR,
    DPU_SERVICE_CHAIN,
    DPU_SERVICE_CONFIGURATION,
    DPU_SERVICE_INTERFACE,
    DPU_SERVICE_TEMPLATE,
    DPU_SET,
)
from dpf.lab.bed.kube import ControlPlane
from tests.api.helpers import example_documents
from tests.controlplane.harness import controller_settings, eventually, host_rest, run, started

DPU_SERVICE = plan.DPU_SERVICE
SLOW = 60.0  # a loaded 2-core machine running other engineers' suites too
KINDS = {k.kind: k for k in (BFB, DPU_FLAVOR, DPU_SERVICE_TEMPLATE, DPU_SERVICE_CONFIGURATION, DPU_DEPLOYMENT)}
CHILDREN = (DPU_SERVICE, DPU_SERVICE_INTERFACE, DPU_SERVICE_CHAIN, DPU_SET)
DEPENDENCIES = (BFB, DPU_FLAVOR, DPU_SERVICE_TEMPLATE, DPU_SERVICE_CONFIGURATION)
HOLD = "dpf.test/hold"
SERVICES = ("blueman", "dts", "hbn", "ovn")


def manifests(namespace: str) -> list[Obj]:
    """Upstream's 05.2 objects this test needs, plus the flavor it names (built into upstream's operator)."""
    docs = [d for d in example_documents("hbn_ovn_dpudeployment.yaml", namespace) if d["kind"] in KINDS]
    docs.insert(1, {"apiVersion": DPU_FLAVOR.api_version, "kind": "DPUFlavor",
                    "metadata": {"name": "dpf-provisioning-hbn-ovn", "namespace": namespace},
                    "spec": {"dpuResources": {"memory": "16Gi", "cpu": "16"},
                             "systemReservedResources": {"memory": "4Gi", "cpu": "2"}}})
    for doc in docs:
        if doc["kind"] == "DPUServiceTemplate":
            doc["spec"]["resourceRequirements"] = {"memory": "2Gi", "cpu": "1"}
    return docs


async def create_all(rest: Rest, docs: list[Obj], namespace: str) -> None:
    for doc in docs:
        await rest.create(KINDS[doc["kind"]], doc, namespace)


def condition(obj: Obj | None, type_: str) -> dict[str, Any]:
    return next((c for c in ((obj or {}).get("status") or {}).get("conditions") or () if c["type"] == type_), {})


async def with_condition(rest: Rest, namespace: str, name: str, type_: str, status: str,
                         contains: str = "") -> Obj | None:
    obj = await rest.get(DPU_DEPLOYMENT, name, namespace)
    found = condition(obj, type_)
    return obj if found.get("status") == status and contains in found.get("message", "") else None


async def names(rest: Rest, kind: Kind, namespace: str) -> list[str]:
    return sorted(o["metadata"]["name"] for o in (await rest.list(kind, namespace))["items"])


async def children(rest: Rest, namespace: str) -> dict[str, list[str]]:
    return {kind.kind: await names(rest, kind, namespace) for kind in CHILDREN}


def marked_by(obj: Obj) -> str | None:
    """The consumed-by label with our finalizer; None with neither; anything else is shown as a mismatch."""
    meta = obj["metadata"]
    label = (meta.get("labels") or {}).get(plan.CONSUMED_BY_LABEL)
    if plan.FINALIZER in (meta.get("finalizers") or ()):
        return label if label is not None else "finalizer without label"
    return None if label is None else f"label {label!r} without finalizer"


async def marks(rest: Rest, namespace: str) -> dict[str, str | None]:
    return {f"{kind.kind}/{o['metadata']['name']}": marked_by(o)
            for kind in DEPENDENCIES for o in (await rest.list(kind, namespace))["items"]}


async def set_ready(rest: Rest, kind: Kind, namespace: str, name: str, ready: bool, message: str = "") -> None:
    """Write the child's Ready as its own reconciler would (status subresource, current generation)."""
    obj = await rest.get(kind, name, namespace)
    assert obj is not None
    at = "2026-01-01T00:00:00Z"
    conditions = [{"type": "Ready", "status": "True" if ready else "False", "reason": "Success" if ready else "Pending",
                   "message": "" if ready else message, "lastTransitionTime": at}]
    await rest.apply(kind, {"apiVersion": kind.api_version, "kind": kind.kind,
                            "metadata": {"name": name, "namespace": namespace},
                            "status": {"conditions": conditions,
                                       "observedGeneration": obj["metadata"]["generation"]}},
                     "dpf-test", subresource="status")


async def release(rest: Rest, namespace: str) -> None:
    """After the controller stopped: drop our finalizer (and the test's hold) wherever a failed test left them, so
    the namespace can go."""
    for kind in (*DEPENDENCIES, DPU_DEPLOYMENT, *CHILDREN):
        for obj in (await rest.list(kind, namespace))["items"]:
            finalizers = obj["metadata"].get("finalizers") or []
            kept = [f for f in finalizers if f not in (plan.FINALIZER, HOLD)]
            if kept != finalizers:
                with contextlib.suppress(KubeError):
                    await rest.merge_patch(kind, obj["metadata"]["name"], {"metadata": {"finalizers": kept}},
                                           namespace)


def test_upstream_example_children_ready_mirror_changes_and_ordered_deletion(kube: ControlPlane,
                                                                             namespace: str) -> None:
    async def scenario() -> None:
        rest = await host_rest(kube.kubeconfig)
        controller = await started(Controller(controller_settings(kube.kubeconfig, namespace),
                                              reconcilers=[DPUDeploymentReconciler]))
        try:
            begin = time.monotonic()
            await create_all(rest, manifests(namespace), namespace)
            owner = f"{namespace}_ovn-hbn"
            want = {"DPUService": [f"ovn-hbn-{s}" for s in SERVICES],
                    "DPUServiceInterface": ["ovn-hbn-hbn-p0-if", "ovn-hbn-hbn-p1-if", "ovn-hbn-hbn-pf2dpu2-if"],
                    "DPUServiceChain": ["ovn-hbn"], "DPUSet": ["ovn-hbn-dpuset1"]}
            await eventually(lambda: _equals(children(rest, namespace), want), "upstream's children", SLOW)
            timings["create"] = time.monotonic() - begin
            dd = await rest.get(DPU_DEPLOYMENT, "ovn-hbn", namespace)
            assert dd is not None
            assert plan.FINALIZER in dd["metadata"]["finalizers"]
            for kind in CHILDREN:
                for obj in (await rest.list(kind, namespace))["items"]:
                    assert obj["metadata"]["labels"][plan.OWNER_LABEL] == owner
                    refs = obj["metadata"]["ownerReferences"]
                    assert [(r["kind"], r["name"], r["uid"], r["controller"]) for r in refs] == [
                        ("DPUDeployment", "ovn-hbn", dd["metadata"]["uid"], True)]
            hbn = await rest.get(DPU_SERVICE, "ovn-hbn-hbn", namespace)
            assert hbn is not None
            assert hbn["spec"]["serviceID"] == "dpudeployment_ovn-hbn_hbn"
            assert hbn["spec"]["helmChart"]["values"]["image"]["tag"] == "2.4.1-doca2.9.1"  # the template's
            assert hbn["spec"]["helmChart"]["values"]["configuration"]["perDPUValuesYAML"].startswith("- hostname")
            assert hbn["metadata"]["annotations"][plan.VERSION_ANNOTATION] == "placeholder-for-version"
            chain = await rest.get(DPU_SERVICE_CHAIN, "ovn-hbn", namespace)
            assert chain is not None
            ports = chain["spec"]["template"]["spec"]["template"]["spec"]["switches"][2]["ports"]
            assert ports == [{"serviceInterface": {"matchLabels": {"port": "ovn"}}},
                             {"serviceInterface": {"matchLabels": {plan.SERVICE_LABEL: "dpudeployment_ovn-hbn_hbn",
                                                                   plan.INTERFACE_LABEL: "pf2dpu2_if"}}}]
            dpuset = await rest.get(DPU_SET, "ovn-hbn-dpuset1", namespace)
            assert dpuset is not None
            node_labels = dpuset["spec"]["dpuTemplate"]["spec"]["cluster"]["nodeLabels"]
            assert node_labels[plan.OWNER_LABEL] == owner
            assert node_labels["svc.dpu.nvidia.com/dpuservice-hbn-version"] == "placeholder-for-version"
            # Every dependency: finalizer + label naming the DPUDeployment.
            expected_marks = {"BFB/bf-bundle": "ovn-hbn", "DPUFlavor/dpf-provisioning-hbn-ovn": "ovn-hbn",
                              **{f"{k}/{s}": "ovn-hbn" for s in SERVICES
                                 for k in ("DPUServiceTemplate", "DPUServiceConfiguration")}}
            await eventually(lambda: _equals(marks(rest, namespace), expected_marks), "the dependencies marked")
            for type_ in ("PrerequisitesReady", "ResourceFittingReady", "DPUServicesReconciled",
                          "DPUServiceInterfacesReconciled", "DPUServiceChainsReconciled", "DPUSetsReconciled"):
                await eventually(lambda t=type_: with_condition(rest, namespace, "ovn-hbn", t, "True"), type_)

            # Ready mirrors the children: none reports Ready yet; then as each kind's children do.
            await eventually(lambda: with_condition(rest, namespace, "ovn-hbn", "DPUServicesReady", "False",
                                                    f"DPUService {namespace}/ovn-hbn-blueman reports no Ready"),
                             "DPUServicesReady False naming a service")
            for service in SERVICES:
                await set_ready(rest, DPU_SERVICE, namespace, f"ovn-hbn-{service}", True)
            await eventually(lambda: with_condition(rest, namespace, "ovn-hbn", "DPUServicesReady", "True"),
                             "DPUServicesReady True once every DPUService is Ready")
            await set_ready(rest, DPU_SET, namespace, "ovn-hbn-dpuset1", False, "no DPU is Ready yet")
            await eventually(lambda: with_condition(rest, namespace, "ovn-hbn", "DPUSetsReady", "False",
                                                    f"DPUSet {namespace}/ovn-hbn-dpuset1 is not ready "
                                                    "(no DPU is Ready yet)"), "DPUSetsReady mirrors the DPUSet")
            for iface in want["DPUServiceInterface"]:
                await set_ready(rest, DPU_SERVICE_INTERFACE, namespace, iface, True)
            await set_ready(rest, DPU_SERVICE_CHAIN, namespace, "ovn-hbn", True)
            obj = await eventually(lambda: with_condition(rest, namespace, "ovn-hbn", "DPUServiceChainsReady", "True"),
                                   "DPUServiceChainsReady")
            obj = await eventually(lambda: with_condition(rest, namespace, "ovn-hbn", "DPUServiceInterfacesReady",
                                                          "True"), "DPUServiceInterfacesReady")
            assert condition(obj, "Ready")["message"] == "The following conditions are not ready: DPUSetsReady"
            await set_ready(rest, DPU_SET, namespace, "ovn-hbn-dpuset1", True)
            await eventually(lambda: with_condition(rest, namespace, "ovn-hbn", "Ready", "True"), "Ready")

            # A changed configuration value reaches the DPUService.
            await rest.merge_patch(DPU_SERVICE_CONFIGURATION, "ovn", {"spec": {"serviceConfiguration": {
                "helmChart": {"values": {"ovnkube-node-dpu": {"hostCIDR": "10.9.9.0/24"}}}}}}, namespace)

            async def host_cidr() -> str:
                obj = await rest.get(DPU_SERVICE, "ovn-hbn-ovn", namespace)
                return str(obj["spec"]["helmChart"]["values"]["ovnkube-node-dpu"]["hostCIDR"]) if obj else ""
            await eventually(lambda: _equals(host_cidr(), "10.9.9.0/24"), "the new value in the DPUService")
            ovn = await rest.get(DPU_SERVICE, "ovn-hbn-ovn", namespace)
            assert ovn is not None
            assert ovn["spec"]["helmChart"]["values"]["ovnkube-node-dpu"]["vtepCIDR"] == "10.0.120.0/22"  # kept

            # A service removed from the spec: its DPUService goes, its template and configuration are released,
            # and its version label leaves the DPUSet.
            await rest.merge_patch(DPU_DEPLOYMENT, "ovn-hbn", {"spec": {"services": {"dts": None}}}, namespace)
            await eventually(lambda: _none(rest.get(DPU_SERVICE, "ovn-hbn-dts", namespace)), "ovn-hbn-dts deleted")
            released = {**expected_marks, "DPUServiceTemplate/dts": None, "DPUServiceConfiguration/dts": None}
            await eventually(lambda: _equals(marks(rest, namespace), released), "dts's dependencies released")

            async def dts_label_gone() -> bool:
                obj = await rest.get(DPU_SET, "ovn-hbn-dpuset1", namespace)
                labels = obj["spec"]["dpuTemplate"]["spec"]["cluster"]["nodeLabels"] if obj else {}
                return bool(labels) and "svc.dpu.nvidia.com/dpuservice-dts-version" not in labels
            await eventually(dts_label_gone, "the DPUSet no longer labels DPU Nodes for dts")

            # Delete: while a DPUService is held, the chain and interfaces go but the DPUSet stays.
            await rest.merge_patch(DPU_SERVICE, "ovn-hbn-hbn", {"metadata": {"finalizers": [HOLD]}}, namespace)
            await rest.delete(DPU_DEPLOYMENT, "ovn-hbn", namespace)
            await eventually(lambda: with_condition(rest, namespace, "ovn-hbn", "DPUServicesReconciled", "False",
                                                    "There are still 1 DPUServices that are not completely deleted"),
                             "AwaitingDeletion of the held DPUService", SLOW)
            left = await children(rest, namespace)
            assert left == {"DPUService": ["ovn-hbn-hbn"], "DPUServiceInterface": [], "DPUServiceChain": [],
                            "DPUSet": ["ovn-hbn-dpuset1"]}
            held_set = await rest.get(DPU_SET, "ovn-hbn-dpuset1", namespace)
            assert held_set is not None
            assert not held_set["metadata"].get("deletionTimestamp"), "the DPUSet goes only after the services"
            dd = await rest.get(DPU_DEPLOYMENT, "ovn-hbn", namespace)
            assert condition(dd, "DPUServicesReconciled")["reason"] == "AwaitingDeletion"
            assert set((await marks(rest, namespace)).values()) == {"ovn-hbn", None}  # still held
            await rest.merge_patch(DPU_SERVICE, "ovn-hbn-hbn", {"metadata": {"finalizers": []}}, namespace)
            begin = time.monotonic()
            await eventually(lambda: _none(rest.get(DPU_DEPLOYMENT, "ovn-hbn", namespace)), "the DPUDeployment gone",
                             SLOW)
            timings["delete after the hold"] = time.monotonic() - begin
            assert await children(rest, namespace) == {k.kind: [] for k in CHILDREN}
            assert set((await marks(rest, namespace)).values()) == {None}, await marks(rest, namespace)
        finally:
            await controller.stop()
            await release(rest, namespace)
            await rest.close()

    timings: dict[str, float] = {}
    run(scenario(), timeout=600)
    print(f"dpudeployment timings: {', '.join(f'{k} {v:.1f}s' for k, v in timings.items())}")


def test_full_controller_fitting_and_prerequisite_failures_create_nothing(kube: ControlPlane, namespace: str) -> None:
    async def scenario() -> None:
        rest = await host_rest(kube.kubeconfig)
        controller = await started(Controller(controller_settings(kube.kubeconfig, namespace)))
        try:
            docs = manifests(namespace)
            for doc in docs:
                if doc["kind"] == "DPUServiceTemplate" and doc["metadata"]["name"] == "hbn":
                    doc["spec"]["resourceRequirements"] = {"memory": "6Gi", "cpu": "1"}
            await create_all(rest, docs, namespace)
            # 6Gi + 3 x 2Gi = 12Gi of memory into 16Gi - 4Gi: fits exactly; cpu 4 of 14.
            await eventually(lambda: with_condition(rest, namespace, "ovn-hbn", "ResourceFittingReady", "True"),
                             "the services fit", SLOW)

            # A second DPUDeployment over a flavor too small: Failure naming the resource, the need and the capacity.
            small = {"apiVersion": DPU_FLAVOR.api_version, "kind": "DPUFlavor",
                     "metadata": {"name": "small", "namespace": namespace},
                     "spec": {"dpuResources": {"memory": "8Gi"}, "systemReservedResources": {"memory": "1Gi"}}}
            await rest.create(DPU_FLAVOR, small, namespace)
            dd = copy.deepcopy(next(d for d in docs if d["kind"] == "DPUDeployment"))
            dd["metadata"] = {"name": "tight", "namespace": namespace}
            dd["spec"]["dpus"]["flavor"] = "small"
            await rest.create(DPU_DEPLOYMENT, dd, namespace)
            obj = await eventually(lambda: with_condition(rest, namespace, "tight", "ResourceFittingReady", "False",
                                                          "memory: the services need 12Gi"), "fitting Failure", SLOW)
            fitting = condition(obj, "ResourceFittingReady")
            assert fitting["reason"] == "Failure"
            assert "DPUFlavor small has 7Gi (dpuResources 8Gi - systemReservedResources 1Gi)" in fitting["message"]
            assert "cpu" in fitting["message"]  # the small flavor offers no cpu at all
            assert condition(obj, "Ready")["reason"] == "Failure"

            # A configuration naming another service, and a missing template: Pending naming both.
            await rest.merge_patch(DPU_DEPLOYMENT, "tight", {"spec": {
                "dpus": {"flavor": "dpf-provisioning-hbn-ovn"},
                "services": {"hbn": {"serviceConfiguration": "dts"}, "extra": {"serviceTemplate": "nope",
                                                                              "serviceConfiguration": "ovn"}}}},
                namespace)
            obj = await eventually(lambda: with_condition(rest, namespace, "tight", "PrerequisitesReady", "False",
                                                          "nope"), "PrerequisitesReady False", SLOW)
            message = condition(obj, "PrerequisitesReady")["message"]
            assert f"DPUServiceTemplate {namespace}/nope (spec.services.extra.serviceTemplate) not found" in message
            assert (f"DPUServiceConfiguration {namespace}/dts (spec.services.hbn.serviceConfiguration) has "
                    "deploymentServiceName 'dts', which does not match the service key 'hbn'") in message
            assert f"DPUServiceConfiguration {namespace}/ovn (spec.services.extra.serviceConfiguration)" in message
            assert condition(obj, "PrerequisitesReady")["reason"] == "Pending"
            tight_children = [o["metadata"]["name"] for kind in CHILDREN
                              for o in (await rest.list(kind, namespace))["items"]
                              if o["metadata"]["labels"].get(plan.OWNER_LABEL) == f"{namespace}_tight"]
            assert tight_children == [], "nothing half-created"
            # The good one meanwhile has its children, reconciled by the real reconcilers: with no DPU cluster the
            # DPUServices say so, and the DPUDeployment mirrors it; its DPUSet selects no Node.
            await eventually(lambda: with_condition(rest, namespace, "ovn-hbn", "DPUServicesReady", "False",
                                                    "no DPU cluster is connected"), "DPUServicesReady mirrored", SLOW)
            await eventually(lambda: with_condition(rest, namespace, "ovn-hbn", "DPUSetsReady", "False",
                                                    "selects no host Node"), "DPUSetsReady mirrored", SLOW)

            for name in ("tight", "ovn-hbn"):
                await rest.delete(DPU_DEPLOYMENT, name, namespace)
            for name in ("tight", "ovn-hbn"):
                await eventually(lambda n=name: _none(rest.get(DPU_DEPLOYMENT, n, namespace)), f"{name} gone", SLOW)
            assert await children(rest, namespace) == {k.kind: [] for k in CHILDREN}
            assert set((await marks(rest, namespace)).values()) == {None}
        finally:
            await controller.stop()
            await release(rest, namespace)
            await rest.close()

    run(scenario(), timeout=600)


def test_junk_and_a_second_deployment_sharing_dependencies_do_not_break_the_first(kube: ControlPlane,
                                                                                  namespace: str) -> None:
    async def scenario() -> None:
        rest = await host_rest(kube.kubeconfig)
        controller = await started(Controller(controller_settings(kube.kubeconfig, namespace),
                                              reconcilers=[DPUDeploymentReconciler]))
        try:
            docs = manifests(namespace)
            await create_all(rest, docs, namespace)
            await eventually(lambda: with_condition(rest, namespace, "ovn-hbn", "DPUServicesReconciled", "True"),
                             "the first reconciled", SLOW)
            first = await children(rest, namespace)

            # A second DPUDeployment with a huge name over the same dependencies: its owner label value is too long
            # for a label, so the apiserver refuses every child, and it says which and why.
            huge = "x" * 200
            dd = copy.deepcopy(next(d for d in docs if d["kind"] == "DPUDeployment"))
            dd["metadata"] = {"name": huge, "namespace": namespace}
            await rest.create(DPU_DEPLOYMENT, dd, namespace)
            obj = await eventually(lambda: with_condition(rest, namespace, huge, "DPUServicesReconciled", "False",
                                                          f"DPUService {namespace}/{huge}-blueman: 422"),
                                   "the huge one's refusal named", SLOW)
            assert "must be no more than 63" in condition(obj, "DPUServicesReconciled")["message"]
            assert condition(obj, "DPUServicesReconciled")["reason"] == "Error"
            # A third with a junk service key (its template and configuration say the same): the DPUService name and
            # the interface's serviceID break the CRDs' patterns; refused and named, while its good service is made.
            for kind in ("DPUServiceTemplate", "DPUServiceConfiguration"):
                extra = copy.deepcopy(next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == "hbn"))
                extra["metadata"] = {"name": "junk", "namespace": namespace}
                extra["spec"]["deploymentServiceName"] = "Junk Key!"
                await rest.create(KINDS[kind], extra, namespace)
            junk = copy.deepcopy(next(d for d in docs if d["kind"] == "DPUDeployment"))
            junk["metadata"] = {"name": "junk", "namespace": namespace}
            junk["spec"]["services"] = {"hbn": {"serviceTemplate": "hbn", "serviceConfiguration": "hbn"},
                                        "Junk Key!": {"serviceTemplate": "junk", "serviceConfiguration": "junk"}}
            await rest.create(DPU_DEPLOYMENT, junk, namespace)
            obj = await eventually(lambda: with_condition(rest, namespace, "junk", "DPUServiceInterfacesReconciled",
                                                          "False", f"DPUServiceInterface {namespace}/junk-Junk Key!"),
                                   "the junk interfaces' refusal named", SLOW)
            assert "422" in condition(obj, "DPUServiceInterfacesReconciled")["message"]
            assert f"DPUService {namespace}/junk-Junk Key!: 422" in condition(obj, "DPUServicesReconciled")["message"]
            assert "junk-hbn" in (await children(rest, namespace))["DPUService"]

            # The first is undisturbed: its children all there, every step True. A dependency several use keeps our
            # one finalizer, and its label names the smallest user whose name fits a label value ("junk"; the huge
            # name does not fit).
            now = await children(rest, namespace)
            for kind_name, listed in first.items():
                assert set(listed) <= set(now[kind_name]), kind_name
            for type_ in ("PrerequisitesReady", "DPUServicesReconciled", "DPUSetsReconciled",
                          "DPUServiceChainsReconciled", "DPUServiceInterfacesReconciled"):
                assert await with_condition(rest, namespace, "ovn-hbn", type_, "True"), type_
            expected = {"DPUServiceTemplate/hbn": "junk", "DPUServiceConfiguration/hbn": "junk",
                        "DPUServiceTemplate/ovn": "ovn-hbn", "BFB/bf-bundle": "junk",
                        "DPUServiceTemplate/junk": "junk"}
            await eventually(lambda: _contains(marks(rest, namespace), expected), "shared marks name the smallest")

            # Deleting the others leaves the first's dependencies protected.
            for name in (huge, "junk"):
                await rest.delete(DPU_DEPLOYMENT, name, namespace)
            for name in (huge, "junk"):
                await eventually(lambda n=name: _none(rest.get(DPU_DEPLOYMENT, n, namespace)), "gone", SLOW)
            await eventually(lambda: _equals(children(rest, namespace), first), "only the first's children left")
            await eventually(lambda: _contains(marks(rest, namespace), {
                "DPUServiceTemplate/junk": None, "DPUServiceConfiguration/junk": None,
                "BFB/bf-bundle": "ovn-hbn", "DPUFlavor/dpf-provisioning-hbn-ovn": "ovn-hbn",
                **{f"{k}/{s}": "ovn-hbn" for s in SERVICES
                   for k in ("DPUServiceTemplate", "DPUServiceConfiguration")}}), "the first still protects them")
            # A protected template cannot go while the first uses it.
            await rest.delete(DPU_SERVICE_TEMPLATE, "hbn", namespace)
            template = await rest.get(DPU_SERVICE_TEMPLATE, "hbn", namespace)
            assert template is not None
            assert template["metadata"].get("deletionTimestamp")
            await rest.delete(DPU_DEPLOYMENT, "ovn-hbn", namespace)
            await eventually(lambda: _none(rest.get(DPU_SERVICE_TEMPLATE, "hbn", namespace)),
                             "the template released once no DPUDeployment names it", SLOW)
        finally:
            await controller.stop()
            await release(rest, namespace)
            await rest.close()

    run(scenario(), timeout=600)


async def _equals(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


async def _contains(value: Any, expected: dict[str, Any]) -> bool:
    got = await value
    return all(got.get(k) == v for k, v in expected.items())


async def _none(value: Any) -> bool:
    return await value is None
