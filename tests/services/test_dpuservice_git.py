"""DPUService charts from a git repository (`helmChart.source.path`, as ArgoCD reads upstream's Applications),
against real parts: the host control plane, a DPU cluster with kube-controller-manager's DaemonSet controller,
`git daemon` on loopback holding the chart, and the controller's git and Helm.

The DPUService names a public https repository (not reachable here) and `--chart-mirror` sends it to the local
git server: the air-gapped site's flow, for git as for Helm repositories and OCI registries.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

import pytest

from dpf.controller.gitcharts import GitCharts, GitError, chart_dir, check_url, redacted
from dpf.controller.kube.rest import Obj
from dpf.controller.manager import Controller
from dpf.controller.reconcilers.dpuservice import DAEMON_SET, DPU_SERVICE
from dpf.controller.settings import ServicesSettings, parse_chart_mirror
from dpf.lab.bed.git_server import GitServer
from dpf.lab.bed.kube import ControlPlane
from tests.controlplane.harness import controller_settings, dpu_cluster, eventually, host_rest, run, started

CHART = Path(__file__).parent / "charts" / "tiny"  # its values.yaml: image registry.example/tiny:1
PUBLIC = "https://github.com/example/"
REPO = "https://github.com/example/charts.git"
SLOW = 180.0  # helm upgrade --wait plus DaemonSet status, on a shared 2-core machine
MOVED = 240.0  # a moved branch is seen at the DPUService's next periodic look (60 s), then upgraded


def service(namespace: str, version: str, path: str = "charts/tiny") -> Obj:
    return {"apiVersion": DPU_SERVICE.api_version, "kind": DPU_SERVICE.kind,
            "metadata": {"name": "tiny", "namespace": namespace},
            "spec": {"helmChart": {"source": {"repoURL": REPO, "path": path, "version": version}}}}


def condition(obj: Obj | None, type_: str) -> dict[str, str]:
    return next((c for c in ((obj or {}).get("status") or {}).get("conditions") or () if c["type"] == type_), {})


def chart_with_image(tmp_path: Path, image: str) -> Path:
    """The test chart with another default image: what a new commit of the chart changes."""
    variant = tmp_path / "variant"
    shutil.copytree(CHART, variant)
    (variant / "values.yaml").write_text(f"image: {image}\nserviceDaemonSet: {{}}\n")
    return variant


def test_a_git_chart_installs_at_its_tag_follows_its_branch_and_names_a_bad_path_or_revision(
        kube: ControlPlane, namespace: str, tmp_path: Path) -> None:
    with GitServer(tmp_path / "git") as server, \
            ControlPlane(tmp_path / "dpu", name="gitdpu", controllers=("garbagecollector", "namespace",
                                                                       "daemonset")) as dpu_cp:
        first = server.commit_tree("example/charts.git", {"charts/tiny": CHART}, tag="v1")
        settings = dataclasses.replace(controller_settings(kube.kubeconfig, namespace), services=ServicesSettings(
            chart_mirrors=(parse_chart_mirror(f"{PUBLIC}={server.url('example')}/"),)))

        async def scenario() -> None:
            rest, dpu = await host_rest(kube.kubeconfig), await host_rest(dpu_cp.kubeconfig)
            controller = await started(Controller(settings))

            async def image() -> str | None:
                ds = await dpu.get(DAEMON_SET, "dpu-tiny", namespace)
                return ds["spec"]["template"]["spec"]["containers"][0]["image"] if ds else None

            async def ready_at(generation: int) -> Obj | None:
                obj = await rest.get(DPU_SERVICE, "tiny", namespace)
                status = (obj or {}).get("status") or {}
                fresh = status.get("observedGeneration", 0) >= generation
                if fresh and condition(obj, "Ready").get("status") == "True":
                    return obj
                raise AssertionError(f"not Ready at generation {generation}: {status}")  # shown on time-out

            async def reconcile_failure() -> str:
                found = condition(await rest.get(DPU_SERVICE, "tiny", namespace), "ApplicationsReconciled")
                return found["message"] if found.get("status") == "False" else ""

            try:
                await dpu_cluster(rest, namespace, dpu_cp.kubeconfig)
                created = await rest.create(DPU_SERVICE, service(namespace, "v1"), namespace)
                await eventually(lambda: ready_at(created["metadata"]["generation"]), "Ready at tag v1", SLOW)
                assert await image() == "registry.example/tiny:1"

                # Following a branch: at first the same commit; then the branch moves and the release follows.
                patched = await rest.merge_patch(
                    DPU_SERVICE, "tiny", {"spec": {"helmChart": {"source": {"version": "main"}}}}, namespace)
                await eventually(lambda: ready_at(patched["metadata"]["generation"]), "Ready at branch main", SLOW)
                second = server.commit_tree("example/charts.git",
                                            {"charts/tiny": chart_with_image(tmp_path, "registry.example/tiny:2")})
                assert second != first

                async def rolled() -> bool:
                    return await image() == "registry.example/tiny:2"
                await eventually(rolled, "the release at the branch's new commit", MOVED)

                # A path with no chart, then a revision the repository lacks: named, and the release stays.
                await rest.merge_patch(DPU_SERVICE, "tiny", {"spec": {"helmChart": {"source": {
                    "path": "charts/missing"}}}}, namespace)
                message = await eventually(reconcile_failure, "the missing path reported", SLOW)
                assert "spec.helmChart.source.path 'charts/missing'" in message, message
                await rest.merge_patch(DPU_SERVICE, "tiny", {"spec": {"helmChart": {"source": {
                    "path": "charts/tiny", "version": "v9"}}}}, namespace)

                async def revision_failure() -> str:
                    message = await reconcile_failure()
                    return message if "'v9'" in message else ""
                message = await eventually(revision_failure, "the missing revision reported", SLOW)
                assert "no branch or tag 'v9'" in message, message
                assert await image() == "registry.example/tiny:2"

                await rest.delete(DPU_SERVICE, "tiny", namespace)

                async def gone() -> bool:
                    return await rest.get(DPU_SERVICE, "tiny", namespace) is None
                await eventually(gone, "the DPUService gone", SLOW)
                assert await dpu.get(DAEMON_SET, "dpu-tiny", namespace) is None
            finally:
                await controller.stop()
                for client in (rest, dpu):
                    await client.close()

        run(scenario(), timeout=900)


def test_a_git_source_path_must_stay_inside_the_repository_and_credentials_never_show() -> None:
    checkout = Path("/cache/abc")
    assert chart_dir(checkout, "charts/tiny/") == checkout / "charts/tiny"
    for bad in ("../etc", "charts/../../x", "/", ""):
        with pytest.raises(GitError, match=r"spec\.helmChart\.source\.path"):
            chart_dir(checkout, bad)
    assert redacted("https://user:s3cret@git.lan/org/charts.git") == "https://git.lan/org/charts.git"
    assert redacted("git://git.lan/org/charts.git") == "git://git.lan/org/charts.git"

    async def failing() -> str:
        with pytest.raises(GitError) as failure:  # nothing listens on port 9: git's own error, redacted
            await GitCharts().resolve("http://user:s3cret@127.0.0.1:9/org/charts.git", "main")
        return str(failure.value)
    message = run(failing(), timeout=60)
    assert "s3cret" not in message, message
    assert "127.0.0.1:9/org/charts.git" in message, message
    assert "'main'" in message, message


def test_a_git_source_must_be_a_network_url_never_a_path_on_the_controller(tmp_path: Path) -> None:
    # A real repository on the controller's disk, holding a chart: whoever may create a DPUService must not make
    # the controller install it (nor run a command through git's ext:: transport).
    local = tmp_path / "repo"
    shutil.copytree(CHART, local / "charts" / "tiny")
    for args in (["init", "-q", "-b", "main"], ["add", "."],
                 ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "chart"]):
        subprocess.run(["git", *args], cwd=local, check=True, capture_output=True)
    marker = tmp_path / "ran"

    async def refused(url: str) -> str:
        with pytest.raises(GitError) as failure:
            await GitCharts(tmp_path / "cache").checkout(url, "main")
        return str(failure.value)

    for url in (str(local), f"file://{local}", f"ext::sh -c touch% {marker}", "-oProxyCommand=x:y", "https://[::1/x"):
        message = run(refused(url), timeout=60)
        assert message.startswith(f"spec.helmChart.source.repoURL {url!r} is not a git URL the controller may "
                                  "fetch: use https://"), message
    assert not marker.exists()
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir()), "nothing was fetched"
    for url in ("https://github.com/example/charts.git", "git://127.0.0.1/example/charts.git",
                "ssh://git@git.lan/org/charts.git", "git@github.com:org/charts.git"):
        check_url(url)  # the transports ArgoCD users name
