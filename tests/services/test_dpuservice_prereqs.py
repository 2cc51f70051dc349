"""DPUService image pull secrets (upstream's Step 2) against real parts: the host control plane, a DPU cluster
(kube-controller-manager with the DaemonSet controller), real Helm and a loopback chart repository.

What a user sees: a Secret labelled `dpu.nvidia.com/image-pull-secret` in the DPUService's namespace shows up in
the DPU cluster, follows its changes, goes when it goes and when the namespace's last DPUService goes; Secrets
of the DPU cluster we did not make are left alone; a copy that cannot be written is named in
ApplicationPrereqsReconciled and that cluster gets no release.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

from dpf.controller.kube.rest import SECRET, Obj, Rest
from dpf.controller.reconcilers.dpuservice import DAEMON_SET, DPU_SERVICE
from dpf.controller.reconcilers.dpuservice_prereqs import MIRROR_LABEL, PULL_SECRET_LABEL, mirror_of, plan
from dpf.controller.reconcilers.kinds import NAMESPACE
from dpf.lab.bed.kube import ControlPlane
from tests.controlplane.harness import eventually, run
from tests.services.conftest import DPU_CONTROLLERS, SLOW, condition, false_naming, one_dpu_cluster, ready

DOCKER = "kubernetes.io/dockerconfigjson"


def pull_secret(namespace: str, name: str, auth: str, type_: str = DOCKER, labelled: bool = True) -> Obj:
    config = json.dumps({"auths": {"registry.lan": {"auth": base64.b64encode(auth.encode()).decode()}}})
    return {"apiVersion": "v1", "kind": "Secret", "type": type_,
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {PULL_SECRET_LABEL: ""} if labelled else {"team": "net"}},
            "data": {".dockerconfigjson": base64.b64encode(config.encode()).decode()} if type_ == DOCKER
            else {"token": base64.b64encode(auth.encode()).decode()}}


def service(namespace: str, name: str, repo_url: str) -> Obj:
    return {"apiVersion": DPU_SERVICE.api_version, "kind": DPU_SERVICE.kind,
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"helmChart": {"source": {"repoURL": repo_url, "chart": "tiny", "version": "0.1.0"},
                                   "values": {"image": "tiny:1"}}}}


async def copy_of(rest: Rest, namespace: str, name: str) -> Obj | None:
    return await rest.get(SECRET, name, namespace)


async def same_data(dpu: Rest, host: Rest, namespace: str, name: str) -> bool:
    copy, source = await dpu.get(SECRET, name, namespace), await host.get(SECRET, name, namespace)
    return copy is not None and source is not None and copy.get("data") == source.get("data")


def test_pull_secrets_are_mirrored_updated_pruned_and_removed_with_the_last_dpuservice(
        kube: ControlPlane, namespace: str, chart_repo: str, tmp_path: Path) -> None:
    timings: dict[str, float] = {}
    with ControlPlane(tmp_path / "dpu", name="dpupull", controllers=DPU_CONTROLLERS) as dpu:
        async def scenario() -> None:
            async with one_dpu_cluster(kube, dpu, namespace) as (rest, one, _):
                await rest.create(SECRET, pull_secret(namespace, "regcred", "user:one"), namespace)
                await rest.create(SECRET, pull_secret(namespace, "not-a-pull-secret", "x", labelled=False), namespace)
                # A DPU-cluster Secret with the pull-secret label that we did not make: never pruned.
                await one.create(NAMESPACE, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
                await one.create(SECRET, pull_secret(namespace, "theirs", "user:theirs"), namespace)

                await rest.create(DPU_SERVICE, service(namespace, "tiny", chart_repo), namespace)
                await rest.create(DPU_SERVICE, service(namespace, "second", chart_repo), namespace)
                obj = await eventually(lambda: ready(rest, namespace, "tiny"), "the DPUService Ready", SLOW)
                assert condition(obj, "ApplicationPrereqsReconciled")["status"] == "True"
                copy = await one.get(SECRET, "regcred", namespace)
                assert copy is not None
                assert copy["type"] == DOCKER
                assert copy["metadata"]["labels"] == {PULL_SECRET_LABEL: "", MIRROR_LABEL: "true"}
                assert await same_data(one, rest, namespace, "regcred")
                assert await one.get(SECRET, "not-a-pull-secret", namespace) is None

                # Changed at the source → changed in the DPU cluster, without touching the DPUService.
                begin = time.monotonic()
                changed = pull_secret(namespace, "regcred", "user:two")
                await rest.merge_patch(SECRET, "regcred", {"data": changed["data"]}, namespace)
                await eventually(lambda: same_data(one, rest, namespace, "regcred"), "the copy updated", SLOW)
                timings["update"] = time.monotonic() - begin
                begin = time.monotonic()
                await rest.create(SECRET, pull_secret(namespace, "regcred2", "user:three"), namespace)
                await eventually(lambda: same_data(one, rest, namespace, "regcred2"), "a new one mirrored", SLOW)
                timings["new"] = time.monotonic() - begin

                # Gone at the source → pruned; theirs stays.
                begin = time.monotonic()
                await rest.delete(SECRET, "regcred", namespace)
                await eventually(lambda: _none(one.get(SECRET, "regcred", namespace)), "the copy pruned", SLOW)
                timings["prune"] = time.monotonic() - begin
                assert await one.get(SECRET, "theirs", namespace) is not None

                # A copy that cannot be written (a DPU-cluster Secret of that name and another type: a Secret's
                # type never changes): the condition names the cluster and the Secret; that cluster gets no
                # release of a new DPUService; the other pull secrets are still kept in line.
                await one.create(SECRET, pull_secret(namespace, "clash", "x", type_="Opaque", labelled=False),
                                 namespace)
                await rest.create(SECRET, pull_secret(namespace, "clash", "user:clash"), namespace)
                await rest.create(DPU_SERVICE, service(namespace, "blocked", chart_repo), namespace)
                message = await eventually(
                    lambda: false_naming(rest, namespace, "blocked", "ApplicationPrereqsReconciled",
                                         f"cluster {namespace}/one", "clash"),
                    "the clash reported", SLOW)
                assert f"image pull secret {namespace}/clash" in message, message
                assert await one.get(DAEMON_SET, "one-blocked", namespace) is None
                assert await same_data(one, rest, namespace, "regcred2")  # the others are still kept in line
                await rest.delete(SECRET, "clash", namespace)
                await eventually(lambda: ready(rest, namespace, "blocked"), "installed once the clash is gone", SLOW)
                assert await one.get(DAEMON_SET, "one-blocked", namespace) is not None
                theirs_clash = await one.get(SECRET, "clash", namespace)
                assert theirs_clash is not None  # not ours to prune: made by someone else
                assert theirs_clash["type"] == "Opaque"

                # Not the last DPUService: the copies stay. The last one: they go (theirs stays).
                await rest.delete(DPU_SERVICE, "blocked", namespace)
                await rest.delete(DPU_SERVICE, "second", namespace)
                for name in ("blocked", "second"):
                    await eventually(lambda: _none(rest.get(DPU_SERVICE, name, namespace)),  # noqa: B023
                                     f"{name} gone", SLOW)
                assert await one.get(SECRET, "regcred2", namespace) is not None
                begin = time.monotonic()
                await rest.delete(DPU_SERVICE, "tiny", namespace)
                await eventually(lambda: _none(rest.get(DPU_SERVICE, "tiny", namespace)), "tiny gone", SLOW)
                timings["delete"] = time.monotonic() - begin
                assert await one.get(SECRET, "regcred2", namespace) is None
                assert await one.get(SECRET, "theirs", namespace) is not None

        run(scenario(), timeout=900)
    print(f"dpuservice pull secret timings: {', '.join(f'{k} {v:.1f}s' for k, v in timings.items())}")


async def _none(value: Any) -> bool:
    return await value is None


def test_plan_applies_what_differs_and_prunes_only_names_without_a_source() -> None:
    source = pull_secret("ns", "regcred", "user:one")
    copy = {**mirror_of(source), "metadata": {**mirror_of(source)["metadata"], "resourceVersion": "7"}}
    assert plan([source], [copy]) == ([], [])  # in line: nothing written
    changed = pull_secret("ns", "regcred", "user:two")
    assert plan([changed], [copy]) == ([mirror_of(changed)], [])
    assert plan([], [copy]) == ([], ["regcred"])
    assert mirror_of(source)["metadata"]["labels"] == {PULL_SECRET_LABEL: "", MIRROR_LABEL: "true"}
