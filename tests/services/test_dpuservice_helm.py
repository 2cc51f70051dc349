"""DPUService with the Helm backend against real parts: the host control plane, a DPU cluster started here with
kube-controller-manager's DaemonSet controller (so DaemonSet status is real), the Helm CLI built by `./dev setup`,
and a chart repository on loopback HTTPS (the CRD only admits https:// and oci:// sources) whose self-signed
certificate the controller trusts through SSL_CERT_FILE, as a deployment would trust its registry's CA.

Readiness: the DPU cluster has no Nodes, so the DaemonSet wants 0 pods; upstream's "Synced+Healthy" reading
(ready == desired) makes that ready, which is what we assert.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest

from dpf.controller.helm import Chart
from dpf.controller.kube.rest import Kind, Obj, Rest
from dpf.controller.manager import Controller
from dpf.controller.reconcilers.dpuservice import DAEMON_SET, DPU_SERVICE, SERVICE_LABEL, helm_values, release_name
from dpf.controller.reconcilers.kinds import NAMESPACE
from dpf.controller.settings import ServicesSettings, parse_chart_mirror
from dpf.lab.bed.kube import ControlPlane
from tests.controlplane.harness import controller_settings, eventually, host_rest, run, started
from tests.services.conftest import DPU_CONTROLLERS, SLOW, assert_tiny_daemonset, condition, one_dpu_cluster, ready

DEPLOYMENT = Kind("apps", "v1", "deployments", "Deployment")
PUBLIC_REPO = "https://helm.ngc.nvidia.com/nvidia/doca"  # upstream examples' repository: not reachable here


def dpuservice(namespace: str, name: str, repo_url: str, version: str = "0.1.0", image: str = "tiny:1") -> Obj:
    return {"apiVersion": DPU_SERVICE.api_version, "kind": DPU_SERVICE.kind,
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"serviceID": "svc-tiny",
                     "helmChart": {"source": {"repoURL": repo_url, "chart": "tiny", "version": version},
                                   # the serviceDaemonSet block wins over a user value at the same key
                                   "values": {"image": image,
                                              "serviceDaemonSet": {"labels": {SERVICE_LABEL: "user-value"}}}},
                     "serviceDaemonSet": {
                         "labels": {"team": "net"}, "annotations": {"note": "hbn"},
                         "updateStrategy": {"type": "RollingUpdate"},
                         "nodeSelector": {"nodeSelectorTerms": [{"matchExpressions": [
                             {"key": "dpu.nvidia.com/role", "operator": "In", "values": ["service"]}]}]}}}}


async def image_of(rest: Rest, namespace: str, name: str) -> str | None:
    ds = await rest.get(DAEMON_SET, name, namespace)
    return ds["spec"]["template"]["spec"]["containers"][0]["image"] if ds else None


def test_dpuservice_helm_release_in_the_dpu_cluster_upgraded_failed_paused_and_uninstalled(
        kube: ControlPlane, namespace: str, chart_repo: str, tmp_path: Path) -> None:
    timings: dict[str, float] = {}
    with ControlPlane(tmp_path / "dpu", name="dpusvc", controllers=DPU_CONTROLLERS) as dpu:
        async def scenario() -> None:
            async with one_dpu_cluster(kube, dpu, namespace) as (rest, one, _):
                begin = time.monotonic()
                await rest.create(DPU_SERVICE, dpuservice(namespace, "tiny", chart_repo), namespace)
                obj = await eventually(lambda: ready(rest, namespace, "tiny"), "the DPUService Ready", SLOW)
                timings["install"] = time.monotonic() - begin
                for type_ in ("ApplicationPrereqsReconciled", "ApplicationsReconciled", "ApplicationsReady"):
                    assert condition(obj, type_)["status"] == "True", condition(obj, type_)
                assert "dpu.nvidia.com/dpuservice" in obj["metadata"]["finalizers"]

                # Upstream's Application name <cluster>-<dpuservice> is the release (and here the DaemonSet) name.
                ds = await one.get(DAEMON_SET, "one-tiny", namespace)
                assert_tiny_daemonset(ds)

                # A changed value upgrades the release.
                begin = time.monotonic()
                await rest.merge_patch(DPU_SERVICE, "tiny", {"spec": {"helmChart": {"values": {"image": "tiny:2"}}}},
                                 namespace)
                await eventually(lambda: _equals(image_of(one, namespace, "one-tiny"), "tiny:2"), "the upgrade",
                                 SLOW)
                await eventually(lambda: ready(rest, namespace, "tiny"), "Ready after the upgrade", SLOW)
                timings["upgrade"] = time.monotonic() - begin

                # A chart version the repository lacks: named with Helm's error; the release stays as it was.
                await rest.merge_patch(DPU_SERVICE, "tiny", {"spec": {"helmChart": {
                    "source": {"version": "9.9.9"}, "values": {"image": "tiny:3"}}}}, namespace)

                async def failed() -> str:
                    found = condition(await rest.get(DPU_SERVICE, "tiny", namespace), "ApplicationsReconciled")
                    return found["message"] if found.get("status") == "False" else ""

                message = await eventually(failed, "the failed upgrade reported", SLOW)
                assert "tiny 9.9.9" in message, message
                assert f"cluster {namespace}/one" in message
                assert "9.9.9" in message.split("):", 1)[1], message  # Helm's own words follow the chart
                after = await rest.get(DPU_SERVICE, "tiny", namespace)
                assert condition(after, "Ready")["status"] == "False"
                assert await image_of(one, namespace, "one-tiny") == "tiny:2"

                # A version whose DaemonSet applies but whose Deployment is refused: Helm rolls the release back,
                # so the DaemonSet is as before and no Deployment is left.
                await rest.merge_patch(DPU_SERVICE, "tiny", {"spec": {"helmChart": {"source": {"version": "0.2.0"}}}},
                                       namespace)

                async def refused() -> str:
                    message = await failed()
                    return message if "0.2.0" in message else ""

                message = await eventually(refused, "the refused upgrade reported", SLOW)
                assert "tiny 0.2.0" in message, message
                assert "replicas" in message, message  # the apiserver's words, through Helm
                assert await image_of(one, namespace, "one-tiny") == "tiny:2"
                assert await one.get(DEPLOYMENT, "one-tiny-broken", namespace) is None

                # Back to a good version, then paused: a change is not applied.
                await rest.merge_patch(DPU_SERVICE, "tiny", {"spec": {"helmChart": {"source": {"version": "0.1.0"}}}},
                                 namespace)
                await eventually(lambda: ready(rest, namespace, "tiny"), "Ready on a good version", SLOW)
                assert await image_of(one, namespace, "one-tiny") == "tiny:3"
                await rest.merge_patch(DPU_SERVICE, "tiny", {"spec": {"paused": True,
                                                                "helmChart": {"values": {"image": "tiny:4"}}}},
                                 namespace)
                await asyncio.sleep(5.0)
                assert await image_of(one, namespace, "one-tiny") == "tiny:3"

                # Delete: the release is uninstalled (paused or not), then the finalizer goes.
                begin = time.monotonic()
                await rest.delete(DPU_SERVICE, "tiny", namespace)
                await eventually(lambda: _none(rest.get(DPU_SERVICE, "tiny", namespace)), "the DPUService gone",
                                 SLOW)
                timings["uninstall"] = time.monotonic() - begin
                assert await one.get(DAEMON_SET, "one-tiny", namespace) is None

        run(scenario(), timeout=600)
    print(f"dpuservice helm timings: {', '.join(f'{k} {v:.1f}s' for k, v in timings.items())}")


async def _equals(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


async def _none(value: Any) -> bool:
    return await value is None




def test_values_put_the_service_daemonset_block_over_user_values_and_release_names_are_bounded() -> None:
    obj = dpuservice("ns", "tiny", "https://charts.example")
    obj["spec"]["helmChart"]["values"]["serviceDaemonSet"]["labels"]["keep"] = "me"
    values = helm_values(obj)
    assert values["image"] == "tiny:1"
    labels = values["serviceDaemonSet"]["labels"]
    assert labels == {SERVICE_LABEL: "svc-tiny", "keep": "me", "team": "net"}  # deep merge, the block wins
    assert values["serviceDaemonSet"]["annotations"] == {"note": "hbn"}
    del obj["spec"]["serviceID"]
    assert helm_values(obj)["serviceDaemonSet"]["labels"][SERVICE_LABEL] == "tiny"  # no serviceID: the name
    assert release_name(obj, "ns/one") == "one-tiny"
    assert release_name(obj, "in-cluster") == "in-cluster-tiny"
    obj["metadata"]["name"] = "a" * 60 + "1"
    long = release_name(obj, "ns/one")
    assert len(long) <= 53
    assert long != release_name({**obj, "metadata": {"name": "a" * 60 + "2"}}, "ns/one")  # the hash tells them apart
    obj["spec"]["helmChart"]["source"]["releaseName"] = "named"
    assert release_name(obj, "ns/one") == "named"


def test_deploy_in_cluster_installs_into_the_host_cluster_from_a_chart_mirror(tmp_path: Path, chart_repo: str) -> None:
    """`deployInCluster`: the release goes to the controller's own cluster (here one with the DaemonSet controller,
    so Helm's --wait sees real status), named in-cluster-<dpuservice>, and is uninstalled on delete. The DPUService
    names upstream's public repository, unreachable here: `--chart-mirror` installs it from the local one."""
    controllers = ("garbagecollector", "namespace", "daemonset")
    with ControlPlane(tmp_path / "host", name="svchost", controllers=controllers) as host:
        async def scenario() -> None:
            rest = await host_rest(host.kubeconfig)
            namespace = "svc-in-cluster"
            await rest.create(NAMESPACE, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
            settings = dataclasses.replace(controller_settings(host.kubeconfig, namespace), services=ServicesSettings(
                chart_mirrors=(parse_chart_mirror(f"{PUBLIC_REPO}={chart_repo}"),)))
            controller = await started(Controller(settings))
            try:
                obj = dpuservice(namespace, "tiny", PUBLIC_REPO)
                obj["spec"]["deployInCluster"] = True
                await rest.create(DPU_SERVICE, obj, namespace)
                await eventually(lambda: ready(rest, namespace, "tiny"), "the DPUService Ready", SLOW)
                ds = await rest.get(DAEMON_SET, "in-cluster-tiny", namespace)
                assert ds is not None
                assert ds["spec"]["template"]["metadata"]["labels"][SERVICE_LABEL] == "svc-tiny"
                await rest.delete(DPU_SERVICE, "tiny", namespace)
                await eventually(lambda: _none(rest.get(DPU_SERVICE, "tiny", namespace)), "the DPUService gone",
                                 SLOW)
                assert await rest.get(DAEMON_SET, "in-cluster-tiny", namespace) is None
            finally:
                await controller.stop()
                await rest.close()

        run(scenario(), timeout=300)


def test_a_chart_mirror_replaces_the_longest_matching_prefix_and_bad_mirrors_are_refused() -> None:
    mirrors = (parse_chart_mirror("https://helm.ngc.nvidia.com=https://lan/all"),
               parse_chart_mirror("https://helm.ngc.nvidia.com/nvidia/doca=https://lan/doca"),
               parse_chart_mirror("oci://nvcr.io/nvidia=oci://registry.lan/nvidia"))
    chart = Chart("https://helm.ngc.nvidia.com/nvidia/doca", "doca-hbn", "1.0.1").mirrored(mirrors)
    assert chart.repo_url == "https://lan/doca"
    assert chart.describe() == "doca-hbn 1.0.1 from https://lan/doca (mirror of https://helm.ngc.nvidia.com/nvidia/doca)"
    assert Chart("https://helm.ngc.nvidia.com/other", "x", "1").mirrored(mirrors).repo_url == "https://lan/all/other"
    oci = Chart("oci://nvcr.io/nvidia/charts", "blueman", "2").mirrored(mirrors)
    assert oci.ref == "oci://registry.lan/nvidia/charts/blueman"
    unmatched = Chart("https://example.org/charts", "x", "1")
    assert unmatched.mirrored(mirrors) is unmatched
    assert parse_chart_mirror("https://github.com/org=git://git.lan/org") == ("https://github.com/org",
                                                                               "git://git.lan/org")
    for bad, names in (("https://a", "FROM=TO"), ("ftp://a=https://b", "FROM=TO"), ("git://a=https://b", "FROM=TO"),
                       ("oci://a=https://b", "OCI registry"), ("oci://a=git://b", "OCI registry")):
        with pytest.raises(ValueError, match=names):
            parse_chart_mirror(bad)
