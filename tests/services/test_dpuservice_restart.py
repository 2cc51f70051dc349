"""A controller stopped in the middle of a DPUService install does not leave its successor stuck.

Helm marks a release pending-install / pending-upgrade when an operation starts, and only that Helm process moves
it on; a controller that stops (crash, rollout, lost lease) kills its Helm runs, and every later upgrade of the
release then fails with "another operation (install/upgrade/rollback) is in progress". Real parts: the host
control plane, a DPU cluster with the DaemonSet controller, the Helm CLI, the chart from an OCI registry; the
chart's `hold` value adds a Deployment that never becomes available there (no Nodes, no Deployment controller),
which keeps `helm upgrade --wait` running while the controller is stopped.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from dpf.controller.helm import find_helm
from dpf.controller.kube.rest import EVENT, Kind, Obj, Rest
from dpf.controller.manager import Controller
from dpf.controller.reconcilers.dpuservice import DAEMON_SET, DPU_SERVICE
from dpf.lab.bed.kube import ControlPlane
from dpf.lab.bed.oci_registry import OciRegistry
from tests.controlplane.harness import controller_settings, dpu_cluster, eventually, host_rest, run, started

CHART = Path(__file__).parent / "charts" / "tiny"
SLOW = 180.0
DEPLOYMENT = Kind("apps", "v1", "deployments", "Deployment")


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[OciRegistry]:
    with OciRegistry(tmp_path / "registry") as started_registry:
        started_registry.push_chart(find_helm(), CHART, "charts")
        monkeypatch.setenv("SSL_CERT_FILE", str(started_registry.ca_file))
        yield started_registry


def service(namespace: str, repo_url: str, hold: bool) -> Obj:
    return {"apiVersion": DPU_SERVICE.api_version, "kind": DPU_SERVICE.kind,
            "metadata": {"name": "tiny", "namespace": namespace},
            "spec": {"helmChart": {"source": {"repoURL": repo_url, "chart": "tiny", "version": "0.1.0"},
                                   "values": {"image": "tiny:1", "hold": hold}}}}


def release_state(kubeconfig: Path, namespace: str, release: str) -> str:
    """The release's status as `helm status` reports it ('' when there is none)."""
    done = subprocess.run([find_helm(), "status", release, "-n", namespace, "-o", "json", "--kubeconfig",
                           str(kubeconfig)], capture_output=True, text=True,
                          env={**os.environ, "HOME": str(kubeconfig.parent)})
    return str(json.loads(done.stdout)["info"]["status"]) if done.returncode == 0 else ""


async def reasons(rest: Rest, namespace: str, wanted: set[str]) -> dict[str, str] | None:
    """reason -> note of the DPUService's Events, once every wanted reason is there."""
    listing = await rest.list(EVENT, namespace)
    found = {e["reason"]: e["note"] for e in listing["items"] if e["regarding"]["kind"] == "DPUService"}
    return found if wanted <= set(found) else None


async def ready(rest: Rest, namespace: str) -> Obj | None:
    obj = await rest.get(DPU_SERVICE, "tiny", namespace)
    status = (obj or {}).get("status") or {}
    fresh = status.get("observedGeneration") == (obj or {}).get("metadata", {}).get("generation")
    ready_ = next((c for c in status.get("conditions") or () if c["type"] == "Ready"), {})
    return obj if fresh and ready_.get("status") == "True" else None


def test_a_release_left_pending_by_a_stopped_controller_is_cleared_by_the_next_one(
        kube: ControlPlane, namespace: str, registry: OciRegistry, tmp_path: Path) -> None:
    settings = controller_settings(kube.kubeconfig, namespace)
    with ControlPlane(tmp_path / "dpu", name="restart", controllers=("garbagecollector", "namespace",
                                                                      "daemonset")) as dpu:
        async def scenario() -> None:
            rest, one = await host_rest(kube.kubeconfig), await host_rest(dpu.kubeconfig)
            first = await started(Controller(settings))
            second: Controller | None = None
            first_running = True
            try:
                await dpu_cluster(rest, namespace, dpu.kubeconfig, "one")
                await eventually(lambda: len(first.clusters.dpu) == 1, "the DPU cluster connected")
                await rest.create(DPU_SERVICE, service(namespace, registry.url("charts"), hold=True), namespace)

                async def installing() -> bool:
                    return release_state(dpu.kubeconfig, namespace, "one-tiny") == "pending-install"
                await eventually(installing, "the install under way", SLOW)
                first_running = False
                await first.stop()  # mid-install: its helm process is killed, the release stays pending-install
                assert release_state(dpu.kubeconfig, namespace, "one-tiny") == "pending-install"

                # The user fixes the values while no controller runs; the next controller must get past the
                # pending release (without the fix: "another operation ... is in progress", forever).
                await rest.merge_patch(DPU_SERVICE, "tiny", {"spec": {"helmChart": {"values": {"hold": False}}}},
                                       namespace)
                second = await started(Controller(settings))
                await eventually(lambda: ready(rest, namespace), "Ready under the second controller", SLOW)
                assert release_state(dpu.kubeconfig, namespace, "one-tiny") == "deployed"
                assert await one.get(DAEMON_SET, "one-tiny", namespace) is not None
                # The held Deployment of the interrupted install is gone with it.
                deployments = await one.list(DEPLOYMENT, namespace)
                assert [d["metadata"]["name"] for d in deployments["items"]] == []
                # What an operator sees: a Warning naming the release and what was done, then the deploy.
                notes = await eventually(lambda: reasons(rest, namespace, {"InterruptedReleaseCleared", "Deployed"}),
                                         "the Events")
                assert "release one-tiny was left pending-install" in notes["InterruptedReleaseCleared"]
                assert "uninstalled" in notes["InterruptedReleaseCleared"]
                assert f"cluster {namespace}/one" in notes["Deployed"]
                sample = second.metrics.registry.get_sample_value
                assert sample("dpf_controller_helm_run_seconds_count", {"command": "uninstall",
                                                                         "result": "success"}) == 1
                assert sample("dpf_controller_dpuservice_deploys_total", {"result": "success"}) == 1
            finally:
                if second is not None:
                    await second.stop()
                if first_running:
                    await first.stop()
                for client in (rest, one):
                    await client.close()

        run(scenario(), timeout=600)
