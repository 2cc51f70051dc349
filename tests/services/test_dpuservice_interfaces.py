"""DPUService `interfaces` (upstream's Step 1) against real parts: the host control plane, a DPU cluster with
kube-controller-manager's DaemonSet controller, real Helm and a loopback chart repository (`conftest.py`).

What a user sees: the service's pod template carries the Multus annotation its DPUServiceInterfaces make, each
interface names its DPUService in `dpu.nvidia.com/consumed-by`, and a DPUService that may not use an interface
says which one and why, and gets no release.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from dpf.controller.kube.rest import Obj, Rest
from dpf.controller.reconcilers.dpuservice import DAEMON_SET, DPU_SERVICE, helm_values
from dpf.controller.reconcilers.dpuservice_interfaces import CONSUMED_BY, NETWORKS, merge_networks, plan
from dpf.controller.reconcilers.kinds import DPU_SERVICE_INTERFACE
from dpf.lab.bed.kube import ControlPlane
from tests.controlplane.harness import eventually, run
from tests.services.conftest import DPU_CONTROLLERS, SLOW, condition, false_naming, one_dpu_cluster, ready

IFACES = "DPUServiceInterfaceReconciled"

SERVICE_ID = "svc-tiny"


def dsi(namespace: str, name: str, network: str, interface: str, service_id: str = SERVICE_ID,
        type_: str = "service") -> Obj:
    spec: dict[str, Any] = {"interfaceType": type_}
    if type_ == "service":
        spec["service"] = {"serviceID": service_id, "network": network, "interfaceName": interface}
    else:
        spec["physical"] = {"interfaceName": interface}
    return {"apiVersion": DPU_SERVICE_INTERFACE.api_version, "kind": "DPUServiceInterface",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"template": {"spec": {"template": {"spec": spec}}}}}


def service(namespace: str, name: str, repo_url: str, interfaces: list[str], networks: str | None = None) -> Obj:
    daemon: dict[str, Any] = {"annotations": {"note": "hbn"}}
    if networks is not None:
        daemon["annotations"][NETWORKS] = networks
    return {"apiVersion": DPU_SERVICE.api_version, "kind": DPU_SERVICE.kind,
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"serviceID": SERVICE_ID, "interfaces": interfaces, "serviceDaemonSet": daemon,
                     "helmChart": {"source": {"repoURL": repo_url, "chart": "tiny", "version": "0.1.0"},
                                   "values": {"image": "tiny:1"}}}}


async def consumer(rest: Rest, namespace: str, name: str) -> str | None:
    obj = await rest.get(DPU_SERVICE_INTERFACE, name, namespace)
    return (((obj or {}).get("metadata") or {}).get("annotations") or {}).get(CONSUMED_BY)


async def networks_of(rest: Rest, namespace: str, name: str) -> list[Any] | None:
    ds = await rest.get(DAEMON_SET, name, namespace)
    annotations = (ds or {}).get("spec", {}).get("template", {}).get("metadata", {}).get("annotations") or {}
    return json.loads(annotations[NETWORKS]) if NETWORKS in annotations else None


def test_interfaces_annotate_the_pods_claim_the_interfaces_and_refuse_what_is_not_theirs(
        kube: ControlPlane, namespace: str, chart_repo: str, tmp_path: Path) -> None:
    timings: dict[str, float] = {}
    with ControlPlane(tmp_path / "dpu", name="dpuiface", controllers=DPU_CONTROLLERS) as dpu:
        async def scenario() -> None:
            async with one_dpu_cluster(kube, dpu, namespace) as (rest, one, _):
                for obj in (dsi(namespace, "net-a", "nad-a", "net1"), dsi(namespace, "net-b", "other/nad-b", "net2"),
                            dsi(namespace, "net-c", "nad-c", "net3"),
                            dsi(namespace, "wrong-type", "", "p0", type_="physical"),
                            dsi(namespace, "wrong-id", "nad-d", "net4", service_id="svc-other")):
                    await rest.create(DPU_SERVICE_INTERFACE, obj, namespace)

                # (a) Two interfaces; the user's entry for net2 wins field by field, its other entry is kept.
                user = json.dumps([{"name": "user-nad", "interface": "net2", "cni-args": {"poolNames": ["p1"]}},
                                   {"name": "extra", "interface": "net9"}])
                begin = time.monotonic()
                await rest.create(DPU_SERVICE, service(namespace, "tiny", chart_repo, ["net-b", "net-a"], user),
                                  namespace)
                obj = await eventually(lambda: ready(rest, namespace, "tiny"), "the DPUService Ready", SLOW)
                timings["install with interfaces"] = time.monotonic() - begin
                assert condition(obj, "DPUServiceInterfaceReconciled")["status"] == "True"
                assert await networks_of(one, namespace, "one-tiny") == [
                    {"name": "extra", "interface": "net9"},
                    {"name": "nad-a", "interface": "net1"},
                    {"name": "user-nad", "namespace": "other", "interface": "net2", "cni-args": {"poolNames": ["p1"]}}]
                ds = await one.get(DAEMON_SET, "one-tiny", namespace)
                assert ds is not None
                assert ds["spec"]["template"]["metadata"]["annotations"]["note"] == "hbn"
                assert await consumer(rest, namespace, "net-a") == "tiny"
                assert await consumer(rest, namespace, "net-b") == "tiny"

                # (b) Every listed interface is checked and named; nothing is claimed or installed.
                await rest.create(DPU_SERVICE, service(namespace, "bad", chart_repo,
                                                       ["net-c", "net-a", "wrong-type", "wrong-id"]), namespace)
                message = await eventually(
                    lambda: false_naming(rest, namespace, "bad", IFACES, "net-a", "wrong-type", "wrong-id"),
                    "the bad DPUService refused", SLOW)
                assert "DPUServiceInterface net-a is in use by another DPUService tiny" in message, message
                assert "wrong-type is of interfaceType 'physical'" in message, message
                assert "wrong-id has serviceID 'svc-other'" in message, message
                assert "net-c" not in message
                bad = await rest.get(DPU_SERVICE, "bad", namespace)
                assert condition(bad, "Ready")["status"] == "False"
                assert await consumer(rest, namespace, "net-c") is None  # nothing half-applied
                assert await consumer(rest, namespace, "net-a") == "tiny"  # the older claim wins
                assert await one.get(DAEMON_SET, "one-bad", namespace) is None
                assert await ready(rest, namespace, "tiny") is not None  # the other DPUService unaffected

                # (c) An interface created after its DPUService: it converges, the DPUService untouched.
                await rest.create(DPU_SERVICE, service(namespace, "late", chart_repo, ["net-late"]), namespace)
                await eventually(lambda: false_naming(rest, namespace, "late", IFACES, "net-late not found"),
                                 "net-late missing", SLOW)
                generation = (await rest.get(DPU_SERVICE, "late", namespace) or {})["metadata"]["generation"]
                begin = time.monotonic()
                await rest.create(DPU_SERVICE_INTERFACE, dsi(namespace, "net-late", "nad-l", "net5"), namespace)
                late = await eventually(lambda: ready(rest, namespace, "late"), "the late DPUService Ready", SLOW)
                timings["converge on a late interface"] = time.monotonic() - begin
                assert late["metadata"]["generation"] == generation
                assert await networks_of(one, namespace, "one-late") == [{"name": "nad-l", "interface": "net5"}]
                assert await consumer(rest, namespace, "net-late") == "late"

                # Dropped from spec.interfaces while paused: as upstream, Step 1 still runs (released) and Helm does
                # not (the pods keep the network until unpaused, when the annotation leaves them).
                await rest.merge_patch(DPU_SERVICE, "late", {"spec": {"interfaces": None, "paused": True}}, namespace)
                await eventually(lambda: _equals(consumer(rest, namespace, "net-late"), None), "net-late released",
                                 SLOW)
                assert await networks_of(one, namespace, "one-late") == [{"name": "nad-l", "interface": "net5"}]
                await rest.merge_patch(DPU_SERVICE, "late", {"spec": {"paused": False}}, namespace)
                await eventually(lambda: _equals(networks_of(one, namespace, "one-late"), None),
                                 "the networks annotation gone", SLOW)

                # Delete: the claims go; the waiting DPUService may then take net-a (its other problems remain).
                await rest.delete(DPU_SERVICE, "tiny", namespace)
                await eventually(lambda: _equals(rest.get(DPU_SERVICE, "tiny", namespace), None), "tiny gone", SLOW)
                assert await consumer(rest, namespace, "net-a") is None
                assert await consumer(rest, namespace, "net-b") is None
                async def net_a_free() -> bool:
                    message = await false_naming(rest, namespace, "bad", IFACES, "wrong-type")
                    return bool(message) and "net-a" not in message

                await eventually(net_a_free, "the bad DPUService re-checked with net-a free", SLOW)
                assert await consumer(rest, namespace, "net-a") is None  # still: its other problems remain

        run(scenario(), timeout=900)
    print(f"dpuservice interfaces timings: {', '.join(f'{k} {v:.1f}s' for k, v in timings.items())}")


async def _equals(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


def test_networks_merge_user_entries_by_interface_and_sort_by_name_then_interface() -> None:
    ours = [{"name": "b", "interface": "net2"}, {"name": "a", "namespace": "x", "interface": "net1"},
            {"name": "a", "interface": "net0"}]
    user = json.dumps([{"name": "", "interface": "net1", "mac": "02:00:00:00:00:01"}, {"name": "z"}])
    merged = json.loads(merge_networks(ours, user))
    assert merged == [{"name": "a", "interface": "net0"},
                      {"name": "a", "namespace": "x", "interface": "net1", "mac": "02:00:00:00:00:01"},  # empty name
                      {"name": "b", "interface": "net2"}, {"name": "z"}]  # kept: only non-empty values win
    assert json.loads(merge_networks(ours, None))[0] == {"name": "a", "interface": "net0"}
    for bad in ("{", '{"name": "a"}', '["a"]'):
        with pytest.raises(ValueError, match=r"k8s\.v1\.cni\.cncf\.io/networks"):
            merge_networks(ours, bad)


def test_plan_claims_only_when_every_interface_is_usable() -> None:
    obj = service("ns", "svc", "https://charts.example", ["a", "b"])
    mine = dsi("ns", "a", "nad-a", "net1")
    mine["metadata"]["annotations"] = {CONSUMED_BY: "svc"}
    free = dsi("ns", "b", "ns2/nad-b", "net2")
    step = plan(obj, {"a": mine, "b": free})
    assert step.problems == []
    assert step.claim == ["b"]
    assert json.loads(step.networks or "") == [{"name": "nad-a", "interface": "net1"},
                                               {"name": "nad-b", "namespace": "ns2", "interface": "net2"}]
    assert json.loads(helm_values(obj, step.networks)["serviceDaemonSet"]["annotations"][NETWORKS])[0]["name"] == \
        "nad-a"
    taken = dsi("ns", "a", "nad-a", "net1")
    taken["metadata"]["annotations"] = {CONSUMED_BY: "other"}
    step = plan(obj, {"a": taken, "b": free})
    assert step.problems == ["DPUServiceInterface a is in use by another DPUService other"]
    assert step.claim == []
    assert step.networks is None
    assert plan(obj, {"a": mine}).problems == ["DPUServiceInterface b not found"]
