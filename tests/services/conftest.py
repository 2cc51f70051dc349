"""Shared by the DPUService tests: a Helm chart repository on loopback HTTPS, a controller with one DPU cluster,
and condition helpers."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from dpf.controller.kube.rest import Obj, Rest
from dpf.controller.manager import Controller
from dpf.controller.reconcilers.dpuservice import DPU_SERVICE, SERVICE_LABEL
from dpf.controller.settings import ControllerSettings
from dpf.lab.bed.chart_repo import ChartRepo
from dpf.lab.bed.kube import ControlPlane
from tests.controlplane.harness import controller_settings, dpu_cluster, eventually, host_rest, started

CHART = Path(__file__).parent / "charts" / "tiny"  # version 0.1.0
BROKEN = Path(__file__).parent / "charts" / "tiny-broken"  # version 0.2.0: a Deployment the apiserver refuses
SLOW = 120.0  # a helm upgrade --wait plus the DaemonSet controller's first status on a shared 2-core machine
DPU_CONTROLLERS = ("garbagecollector", "namespace", "daemonset")
"""kube-controller-manager's controllers in these tests' DPU clusters: the DaemonSet controller writes the status
readiness is read from; the garbage collector and the namespace controller let deletions finish."""


@pytest.fixture
def chart_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The test charts served over loopback HTTPS (`lab/bed/chart_repo.py`), trusted through SSL_CERT_FILE as the
    controller's Helm would trust a registry's CA; yields the repository URL."""
    with ChartRepo(tmp_path / "chart-repo", (CHART, BROKEN)) as repo:
        monkeypatch.setenv("SSL_CERT_FILE", str(repo.ca_file))
        yield repo.url


@contextlib.asynccontextmanager
async def one_dpu_cluster(kube: ControlPlane, dpu: ControlPlane, namespace: str,
                          settings: ControllerSettings | None = None) -> AsyncIterator[tuple[Rest, Rest, Controller]]:
    """A controller serving `namespace` with `dpu` as its one DPUCluster ("one"), connected: yields (host client,
    DPU cluster client, controller). On the way out every DPUService left in `namespace` is deleted and waited
    for while the controller still runs, so no finalizer outlives the test."""
    rest, one = await host_rest(kube.kubeconfig), await host_rest(dpu.kubeconfig)
    try:
        controller = await started(Controller(settings or controller_settings(kube.kubeconfig, namespace)))
        try:
            await dpu_cluster(rest, namespace, dpu.kubeconfig, "one")
            await eventually(lambda: len(controller.clusters.dpu) == 1, "the DPU cluster connected")
            yield rest, one, controller
        finally:
            try:
                for left in (await rest.list(DPU_SERVICE, namespace))["items"]:
                    await rest.delete(DPU_SERVICE, left["metadata"]["name"], namespace)

                async def none_left() -> bool:
                    return not (await rest.list(DPU_SERVICE, namespace))["items"]
                await eventually(none_left, f"every DPUService in {namespace} gone", SLOW)
            finally:
                await controller.stop()
    finally:
        for client in (rest, one):
            await client.close()


async def false_naming(rest: Rest, namespace: str, name: str, type_: str, *words: str) -> str:
    """The DPUService's `type_` condition message once it is False and names all `words`, else ""."""
    found = condition(await rest.get(DPU_SERVICE, name, namespace), type_)
    message = str(found.get("message", ""))
    return message if found.get("status") == "False" and all(w in message for w in words) else ""


def condition(obj: Obj | None, type_: str) -> dict[str, Any]:
    return next((c for c in ((obj or {}).get("status") or {}).get("conditions") or () if c["type"] == type_), {})


async def ready(rest: Rest, namespace: str, name: str) -> Obj | None:
    obj = await rest.get(DPU_SERVICE, name, namespace)
    generation = (obj or {}).get("metadata", {}).get("generation")
    fresh = ((obj or {}).get("status") or {}).get("observedGeneration") == generation
    return obj if fresh and condition(obj, "Ready").get("status") == "True" else None




def assert_tiny_daemonset(ds: Obj | None) -> None:
    """The tiny chart's DaemonSet as `tests/services/test_dpuservice_helm.py`'s `dpuservice()` deploys it: the
    serviceDaemonSet block merged into the values (it wins over the user's label), image tiny:1, and rolled out at
    0 pods (the DPU clusters of these tests have no Nodes)."""
    assert ds is not None
    template = ds["spec"]["template"]
    assert template["metadata"]["labels"][SERVICE_LABEL] == "svc-tiny"  # the block won
    assert template["metadata"]["labels"]["team"] == "net"
    assert template["metadata"]["annotations"]["note"] == "hbn"
    assert ds["spec"]["updateStrategy"]["type"] == "RollingUpdate"
    terms = template["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"]
    assert terms[0]["matchExpressions"][0]["key"] == "dpu.nvidia.com/role"
    assert template["spec"]["containers"][0]["image"] == "tiny:1"
    assert ds["status"]["desiredNumberScheduled"] == 0
