"""DPUService charts from an OCI registry, into two DPU clusters, against real parts: the host control plane, two DPU
clusters with kube-controller-manager's DaemonSet controller, CNCF Distribution's registry on loopback HTTPS (built
by `./dev setup`) holding a chart that `helm push` put there, and the controller's Helm pulling it by oci:// URL.

The DPUService names a public registry (`oci://nvcr.io/nvidia/doca`, not reachable here) and the controller's
`--chart-mirror` sends it to the local one: the air-gapped site's flow, for OCI as for http(s) repositories.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from dpf.controller.helm import find_helm
from dpf.controller.kube.rest import Obj, Rest
from dpf.controller.manager import Controller
from dpf.controller.reconcilers.dpuservice import DAEMON_SET, DPU_SERVICE
from dpf.controller.settings import ServicesSettings, parse_chart_mirror
from dpf.lab.bed.kube import ControlPlane
from dpf.lab.bed.oci_registry import OciRegistry
from tests.controlplane.harness import controller_settings, dpu_cluster, eventually, host_rest, run, started

CHART = Path(__file__).parent / "charts" / "tiny"  # version 0.1.0
PUBLIC = "oci://nvcr.io/nvidia/doca"
SLOW = 180.0  # two clusters' helm upgrade --wait plus DaemonSet status, on a shared 2-core machine
CONTROLLERS = ("garbagecollector", "namespace", "daemonset")


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[OciRegistry]:
    with OciRegistry(tmp_path / "registry") as started_registry:
        started_registry.push_chart(find_helm(), CHART, "mirror/nvidia/doca")
        monkeypatch.setenv("SSL_CERT_FILE", str(started_registry.ca_file))  # the controller's Helm trusts it
        yield started_registry


def service(namespace: str) -> Obj:
    return {"apiVersion": DPU_SERVICE.api_version, "kind": DPU_SERVICE.kind,
            "metadata": {"name": "tiny", "namespace": namespace},
            "spec": {"helmChart": {"source": {"repoURL": PUBLIC, "chart": "tiny", "version": "0.1.0"},
                                   "values": {"image": "tiny:oci"}}}}


def condition(obj: Obj | None, type_: str) -> dict[str, str]:
    return next((c for c in ((obj or {}).get("status") or {}).get("conditions") or () if c["type"] == type_), {})


async def ready(rest: Rest, namespace: str) -> Obj | None:
    obj = await rest.get(DPU_SERVICE, "tiny", namespace)
    fresh = ((obj or {}).get("status") or {}).get("observedGeneration") == (obj or {}).get("metadata", {}).get(
        "generation")
    return obj if fresh and condition(obj, "Ready").get("status") == "True" else None


def test_an_oci_chart_through_a_mirror_runs_in_every_dpu_cluster_and_is_uninstalled_from_each(
        kube: ControlPlane, namespace: str, registry: OciRegistry, tmp_path: Path) -> None:
    settings = controller_settings(kube.kubeconfig, namespace)
    settings = dataclasses.replace(settings, services=ServicesSettings(
        chart_mirrors=(parse_chart_mirror(f"{PUBLIC}={registry.url('mirror/nvidia/doca')}"),)))
    with ControlPlane(tmp_path / "one", name="ocione", controllers=CONTROLLERS) as one_cp, \
            ControlPlane(tmp_path / "two", name="ocitwo", controllers=CONTROLLERS) as two_cp:
        async def scenario() -> None:
            rest = await host_rest(kube.kubeconfig)
            one, two = await host_rest(one_cp.kubeconfig), await host_rest(two_cp.kubeconfig)
            controller = await started(Controller(settings))
            try:
                await dpu_cluster(rest, namespace, one_cp.kubeconfig, "one")
                await dpu_cluster(rest, namespace, two_cp.kubeconfig, "two")
                await eventually(lambda: len(controller.clusters.dpu) == 2, "both DPU clusters connected")
                await rest.create(DPU_SERVICE, service(namespace), namespace)
                obj = await eventually(lambda: ready(rest, namespace), "the DPUService Ready", SLOW)
                assert condition(obj, "ApplicationsReady")["status"] == "True"
                # One release per DPU cluster, named <cluster>-<dpuservice> as upstream's Applications, from the chart
                # the registry holds (its image value applied).
                for cluster, client in (("one", one), ("two", two)):
                    ds = await client.get(DAEMON_SET, f"{cluster}-tiny", namespace)
                    assert ds is not None, cluster
                    assert ds["spec"]["template"]["spec"]["containers"][0]["image"] == "tiny:oci"

                # A version the registry does not hold: refused, naming the chart, the mirror and the
                # public name, and both clusters keep the release they run.
                await rest.merge_patch(DPU_SERVICE, "tiny", {"spec": {"helmChart": {"source": {"version": "0.9.0"}}}},
                                       namespace)

                async def failed() -> str:
                    found = condition(await rest.get(DPU_SERVICE, "tiny", namespace), "ApplicationsReconciled")
                    return found["message"] if found.get("status") == "False" else ""
                message = await eventually(failed, "the missing version reported", SLOW)
                for expected in ("tiny 0.9.0", f"(mirror of {PUBLIC})", f"cluster {namespace}/one",
                                 f"cluster {namespace}/two"):
                    assert expected in message, message
                for cluster, client in (("one", one), ("two", two)):
                    assert await client.get(DAEMON_SET, f"{cluster}-tiny", namespace) is not None

                await rest.delete(DPU_SERVICE, "tiny", namespace)

                async def gone() -> bool:
                    return await rest.get(DPU_SERVICE, "tiny", namespace) is None
                await eventually(gone, "the DPUService gone", SLOW)
                for cluster, client in (("one", one), ("two", two)):
                    assert await client.get(DAEMON_SET, f"{cluster}-tiny", namespace) is None, cluster
            finally:
                await controller.stop()
                for client in (rest, one, two):
                    await client.close()

        run(scenario(), timeout=600)
