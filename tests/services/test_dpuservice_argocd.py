"""DPUService with the ArgoCD backend (`--dpuservice-backend argocd`) against a real host apiserver and a real DPU
apiserver (the session's, registered twice as DPUClusters `one` and `two`).

ArgoCD itself runs in test_dpuservice_argocd_real.py; these tests check what the controller writes,
object by object and field by field against upstream DPF's (`internal/argocd/utils.go`), through the apiserver
with test-only Argo CRDs (tests/services/crds/). The test stands in for ArgoCD where it would act: it writes
Application status (sync/health) and removes ArgoCD's finalizer when a deletion is to finish.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import json
import logging
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from dpf.controller import argocd
from dpf.controller import cli as controller_cli
from dpf.controller.kube import clients
from dpf.controller.kube.rest import SECRET, Obj, Rest
from dpf.controller.manager import Controller
from dpf.controller.reconcilers.base import default_reconcilers
from dpf.controller.reconcilers.dpuservice import DPU_SERVICE, SERVICE_LABEL, DPUServiceReconciler
from dpf.controller.reconcilers.dpuservice_argocd import ArgoCDDPUServiceReconciler
from dpf.controller.reconcilers.dpuservice_prereqs import MIRROR_LABEL
from dpf.controller.reconcilers.kinds import DPU_CLUSTER, NAMESPACE
from dpf.controller.settings import ServicesSettings, parse_chart_mirror
from dpf.lab.bed.kube import ControlPlane
from tests.controlplane.harness import controller_settings, eventually, host_rest, run, started
from tests.services.test_dpuservice_helm import condition, dpuservice
from tests.services.test_dpuservice_prereqs import pull_secret, same_data

CRDS = Path(__file__).parent / "crds"
OCI_REPO = "oci://nvcr.io/nvidia/doca"
OCI_MIRROR = parse_chart_mirror("oci://nvcr.io/nvidia=oci://registry.lan/nvidia")
SLOW = 90.0  # a controller reconciling on a loaded 2-core machine, and an informer backing off before the CRDs


def inline_kubeconfig(path: Path) -> bytes:
    """The bed's kubeconfig with its certificate files inlined as `*-data` (what ArgoCD needs)."""
    config = yaml.safe_load(path.read_text())
    for entry, fields in ((config["clusters"][0]["cluster"], ("certificate-authority",)),
                          (config["users"][0]["user"], ("client-certificate", "client-key"))):
        for field in fields:
            entry[f"{field}-data"] = base64.b64encode(Path(entry.pop(field)).read_bytes()).decode()
    return json.dumps(config).encode()


async def register_dpu_cluster(rest: Rest, namespace: str, kubeconfig: bytes, name: str) -> None:
    await rest.create(SECRET, {"apiVersion": "v1", "kind": "Secret",
                               "metadata": {"name": f"{name}-admin-kubeconfig", "namespace": namespace},
                               "data": {"admin.conf": base64.b64encode(kubeconfig).decode()}}, namespace)
    await rest.create(DPU_CLUSTER, {"apiVersion": DPU_CLUSTER.api_version, "kind": "DPUCluster",
                                    "metadata": {"name": name, "namespace": namespace},
                                    "spec": {"type": "static", "version": "v1.37.2",
                                             "kubeconfig": f"{name}-admin-kubeconfig"}}, namespace)


async def argo_status(rest: Rest, namespace: str, name: str, sync: str, health: str) -> None:
    """What ArgoCD's application controller writes (status is part of the object in Argo's CRD), with the source
    and destination it compared: the Application's current ones."""
    app = await rest.get(argocd.APPLICATION, name, namespace)
    assert app is not None, name
    compared = {"source": app["spec"]["source"], "destination": app["spec"]["destination"]}
    await rest.merge_patch(argocd.APPLICATION, name, {"status": {"sync": {"status": sync, "comparedTo": compared},
                                                                 "health": {"status": health}}}, namespace)


async def argo_finishes_deletion(rest: Rest, namespace: str, name: str) -> None:
    """ArgoCD removing its cascading-delete finalizer once it deleted what the Application deployed."""
    await rest.merge_patch(argocd.APPLICATION, name, {"metadata": {"finalizers": None}}, namespace)


async def conditioned(rest: Rest, namespace: str, name: str, type_: str, status: str, text: str = "") -> Obj:
    obj = await rest.get(DPU_SERVICE, name, namespace)
    found = condition(obj, type_)
    return found if found.get("status") == status and text in found.get("message", "") else {}


async def gone(rest: Rest, kind: Any, name: str, namespace: str) -> bool:
    return await rest.get(kind, name, namespace) is None


def test_dpuservice_argocd_applications_projects_cluster_secrets_readiness_pause_and_delete(
        tmp_path: Path, dpu_kube: ControlPlane) -> None:
    with ControlPlane(tmp_path / "host", name="argohost", controllers=("garbagecollector",)) as host:
        async def scenario() -> None:
            rest, dpu = await host_rest(host.kubeconfig), await host_rest(dpu_kube.kubeconfig)
            namespace = "argo-dpf"  # the controller's namespace, where ArgoCD looks for its objects
            service_namespace = f"argo-svc-{uuid.uuid4().hex[:6]}"  # also made in the session's DPU cluster
            for ns in (namespace, service_namespace):
                await rest.create(NAMESPACE, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
            settings = dataclasses.replace(
                controller_settings(host.kubeconfig, namespace),
                services=ServicesSettings(backend="argocd", chart_mirrors=(OCI_MIRROR,)))
            settings = dataclasses.replace(settings, kube=dataclasses.replace(settings.kube, watch_namespace=None))
            controller = await started(Controller(settings))
            try:
                kubeconfig = inline_kubeconfig(dpu_kube.kubeconfig)
                for name in ("one", "two"):
                    await register_dpu_cluster(rest, namespace, kubeconfig, name)
                await eventually(lambda: len(controller.clusters.dpu) == 2, "both DPU clusters connected")

                # No ArgoCD CRDs yet: the condition names the CRD and what the backend needs.
                await rest.create(SECRET, pull_secret(service_namespace, "regcred", "user:argo"), service_namespace)
                await rest.create(DPU_SERVICE, dpuservice(service_namespace, "hbn", OCI_REPO), service_namespace)
                found = await eventually(lambda: conditioned(rest, service_namespace, "hbn",
                                                             "ApplicationPrereqsReconciled", "False"),
                                         "the missing CRD reported", SLOW)
                assert "applications.argoproj.io" in found["message"], found
                assert "appprojects.argoproj.io" in found["message"], found
                assert "needs ArgoCD installed" in found["message"], found
                assert condition(await rest.get(DPU_SERVICE, "hbn", service_namespace), "Ready")["status"] == "False"

                await asyncio.to_thread(host.install_crds, CRDS)
                app = await eventually(lambda: rest.get(argocd.APPLICATION, "one-hbn", namespace),
                                       "Application one-hbn", SLOW)
                # Step 2's image pull secrets, as with the Helm backend (tests/services/test_dpuservice_prereqs.py).
                copy = await eventually(lambda: dpu.get(SECRET, "regcred", service_namespace),
                                        "the pull secret mirrored into the DPU cluster", SLOW)
                assert copy["metadata"]["labels"][MIRROR_LABEL] == "true"
                assert await same_data(dpu, rest, service_namespace, "regcred")
                # Field by field, upstream's Application (NewApplication in internal/argocd/utils.go).
                assert app["metadata"]["labels"] == {
                    "dpu.nvidia.com/cluster": "one", "dpu.nvidia.com/dpuservice-name": "hbn",
                    "dpu.nvidia.com/dpuservice-namespace": service_namespace,
                    "dpu.nvidia.com/component": "dpuservice-manager"}
                assert app["metadata"]["finalizers"] == ["resources-finalizer.argocd.argoproj.io"]
                assert "annotations" not in app["metadata"]
                spec = app["spec"]
                assert spec["project"] == "doca-platform-project-dpu"
                assert spec["destination"] == {"name": "one", "namespace": service_namespace}
                assert spec["syncPolicy"] == {"automated": {"prune": True, "selfHeal": True}}
                # The mirror applied, then oci:// stripped as Argo names OCI registries.
                assert spec["source"]["repoURL"] == "registry.lan/nvidia/doca"
                assert spec["source"]["chart"] == "tiny"
                assert spec["source"]["targetRevision"] == "0.1.0"
                assert "path" not in spec["source"]
                assert "releaseName" not in spec["source"]["helm"]  # Argo then releases as the Application name
                assert spec["source"]["helm"]["valuesObject"] == {
                    "image": "tiny:1",
                    "serviceDaemonSet": {
                        "labels": {SERVICE_LABEL: "svc-tiny", "team": "net"},  # the block won over the user's
                        "annotations": {"note": "hbn"}, "updateStrategy": {"type": "RollingUpdate"},
                        "nodeSelector": {"nodeSelectorTerms": [{"matchExpressions": [
                            {"key": "dpu.nvidia.com/role", "operator": "In", "values": ["service"]}]}]}}}
                two = await eventually(lambda: rest.get(argocd.APPLICATION, "two-hbn", namespace),
                                       "Application two-hbn")
                assert two["spec"]["destination"] == {"name": "two", "namespace": service_namespace}
                assert two["spec"]["source"] == spec["source"]

                # One Argo cluster Secret per DPUCluster, from its kubeconfig.
                admin = yaml.safe_load(kubeconfig)
                for name in ("one", "two"):
                    secret = await rest.get(SECRET, f"{namespace}-{name}", namespace)
                    assert secret is not None, name
                    assert secret["metadata"]["labels"] == {"argocd.argoproj.io/secret-type": "cluster",
                                                            "dpu.nvidia.com/cluster": name,
                                                            "dpu.nvidia.com/component": "dpuservice-manager"}
                    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
                    assert data["name"] == name  # what the Application's destination names
                    assert data["server"] == dpu_kube.server
                    assert json.loads(data["config"]) == {"tlsClientConfig": {
                        "caData": admin["clusters"][0]["cluster"]["certificate-authority-data"],
                        "certData": admin["users"][0]["user"]["client-certificate-data"],
                        "keyData": admin["users"][0]["user"]["client-key-data"]}}
                projects = {}
                for name in ("doca-platform-project-dpu", "doca-platform-project-host"):
                    project = await rest.get(argocd.APP_PROJECT, name, namespace)
                    assert project is not None, name
                    assert project["spec"]["sourceRepos"] == ["*"]
                    assert project["spec"]["clusterResourceWhitelist"] == [{"group": "*", "kind": "*"}]
                    assert project["spec"]["sourceNamespaces"] == [namespace]
                    projects[name] = project["spec"]["destinations"]
                assert projects == {"doca-platform-project-dpu": [{"name": "one", "namespace": "*"},
                                                                  {"name": "two", "namespace": "*"}],
                                    "doca-platform-project-host": [{"name": "in-cluster", "namespace": "*"}]}
                # Upstream's prereqs make the DPUService's namespace in the DPU cluster (Argo does not).
                assert await dpu.get(NAMESPACE, service_namespace) is not None

                # Readiness is ArgoCD's: Synced+Healthy on one only names the other.
                found = await eventually(lambda: conditioned(rest, service_namespace, "hbn", "ApplicationsReady",
                                                             "False", "two-hbn"), "ApplicationsReady False")
                await argo_status(rest, namespace, "one-hbn", "Synced", "Healthy")
                await argo_status(rest, namespace, "two-hbn", "OutOfSync", "Progressing")
                found = await eventually(lambda: conditioned(rest, service_namespace, "hbn", "ApplicationsReady",
                                                             "False", "sync OutOfSync, health Progressing"),
                                         "two-hbn's status read")
                assert f"{namespace}/two-hbn" in found["message"], found
                assert "one-hbn" not in found["message"], found
                await argo_status(rest, namespace, "two-hbn", "Synced", "Healthy")
                await eventually(lambda: conditioned(rest, service_namespace, "hbn", "Ready", "True"), "Ready")
                obj = await rest.get(DPU_SERVICE, "hbn", service_namespace)
                for type_ in ("ApplicationPrereqsReconciled", "ApplicationsReconciled", "ApplicationsReady"):
                    assert condition(obj, type_)["status"] == "True", condition(obj, type_)

                # Paused: ArgoCD is told to skip the Applications; unpaused: told no more.
                async def skipped(value: str | None) -> bool:
                    apps = [await rest.get(argocd.APPLICATION, n, namespace) for n in ("one-hbn", "two-hbn")]
                    return all(((a or {}).get("metadata", {}).get("annotations") or {}).get(
                        "argocd.argoproj.io/skip-reconcile") == value for a in apps)

                await rest.merge_patch(DPU_SERVICE, "hbn", {"spec": {"paused": True}}, service_namespace)
                await eventually(lambda: skipped("true"), "skip-reconcile on both Applications")
                await rest.merge_patch(DPU_SERVICE, "hbn", {"spec": {"paused": False}}, service_namespace)
                await eventually(lambda: skipped(None), "skip-reconcile removed")

                # A DPUCluster goes: its Application is deleted (ArgoCD's finalizer holds it until ArgoCD is
                # done), its cluster Secret and its AppProject destination go.
                await rest.delete(DPU_CLUSTER, "two", namespace)
                await eventually(lambda: gone(rest, SECRET, f"{namespace}-two", namespace), "Secret of two gone")
                held = await eventually(lambda: _deleting(rest, namespace, "two-hbn"), "two-hbn being deleted")
                assert held["metadata"]["finalizers"] == ["resources-finalizer.argocd.argoproj.io"]
                project = await rest.get(argocd.APP_PROJECT, "doca-platform-project-dpu", namespace)
                assert project is not None
                assert project["spec"]["destinations"] == [{"name": "one", "namespace": "*"}]
                await argo_finishes_deletion(rest, namespace, "two-hbn")
                await eventually(lambda: gone(rest, argocd.APPLICATION, "two-hbn", namespace), "two-hbn gone")
                await eventually(lambda: conditioned(rest, service_namespace, "hbn", "Ready", "True"),
                                 "Ready with one cluster")

                # deployInCluster, an https repository (not stripped) and a named release.
                blue = dpuservice(service_namespace, "blue", "https://charts.example.org/doca")
                blue["spec"]["deployInCluster"] = True
                blue["spec"]["helmChart"]["source"]["releaseName"] = "blue-release"
                await rest.create(DPU_SERVICE, blue, service_namespace)
                app = await eventually(lambda: rest.get(argocd.APPLICATION, "in-cluster-blue", namespace),
                                       "Application in-cluster-blue", SLOW)
                assert app["spec"]["project"] == "doca-platform-project-host"
                assert app["spec"]["destination"] == {"name": "in-cluster", "namespace": service_namespace}
                assert app["spec"]["source"]["repoURL"] == "https://charts.example.org/doca"
                assert app["spec"]["source"]["helm"]["releaseName"] == "blue-release"
                assert app["metadata"]["labels"]["dpu.nvidia.com/cluster"] == "in-cluster"

                # Delete: AwaitingDeletion until ArgoCD lets the Applications go, then the DPUService goes.
                await rest.delete(DPU_SERVICE, "hbn", service_namespace)
                found = await eventually(lambda: conditioned(rest, service_namespace, "hbn", "ApplicationsReconciled",
                                                             "False", "one-hbn"), "AwaitingDeletion")
                assert found["reason"] == "AwaitingDeletion", found
                assert "resources-finalizer.argocd.argoproj.io" in found["message"], found
                assert await _deleting(rest, namespace, "one-hbn")
                await argo_finishes_deletion(rest, namespace, "one-hbn")
                await eventually(lambda: gone(rest, DPU_SERVICE, "hbn", service_namespace), "the DPUService gone")
                assert await rest.get(argocd.APPLICATION, "one-hbn", namespace) is None
                assert await rest.get(argocd.APPLICATION, "in-cluster-blue", namespace) is not None
                await rest.delete(DPU_SERVICE, "blue", service_namespace)
                await eventually(lambda: _deleting(rest, namespace, "in-cluster-blue"), "in-cluster-blue deleted")
                await argo_finishes_deletion(rest, namespace, "in-cluster-blue")
                await eventually(lambda: gone(rest, DPU_SERVICE, "blue", service_namespace), "blue gone")
                assert await dpu.get(SECRET, "regcred", service_namespace) is None, \
                    "the namespace's last DPUService went, and the mirrored pull secret stayed"
            finally:
                await controller.stop()
                await dpu.delete(NAMESPACE, service_namespace)
                for client in (rest, dpu):
                    await client.close()

        run(scenario(), timeout=280)


async def _deleting(rest: Rest, namespace: str, name: str) -> Obj | None:
    app = await rest.get(argocd.APPLICATION, name, namespace)
    return app if app and app["metadata"].get("deletionTimestamp") else None


def test_the_backend_is_chosen_by_a_setting_and_argo_needs_inline_credentials(tmp_path: Path) -> None:
    from dpf.controller.settings import ControllerSettings

    assert DPUServiceReconciler in default_reconcilers(ControllerSettings())  # helm by default
    argo = ControllerSettings(services=ServicesSettings(backend="argocd"))
    assert ArgoCDDPUServiceReconciler in default_reconcilers(argo)
    assert DPUServiceReconciler not in default_reconcilers(argo)
    parser = argparse.ArgumentParser()
    controller_cli.register(parser.add_subparsers(dest="command", required=True))
    assert controller_cli.settings_from(parser.parse_args(["controller", "run"])).services.backend == "helm"
    args = parser.parse_args(["controller", "run", "--dpuservice-backend", "argocd"])
    assert controller_cli.settings_from(args).services.backend == "argocd"
    with pytest.raises(SystemExit):
        parser.parse_args(["controller", "run", "--dpuservice-backend", "flux"])

    # A kubeconfig naming certificate files (as a controller may read, but ArgoCD's pods cannot): refused.
    ca = tmp_path / "ca.crt"
    ca.write_text("x")
    server = "https://127.0.0.1:6443"
    config = {"clusters": [{"name": "c", "cluster": {"server": server, "certificate-authority": str(ca)}}],
              "users": [{"name": "u", "user": {"token": "t"}}]}
    secret = {"metadata": {"name": "one-admin-kubeconfig", "namespace": "dpf"},
              "data": {"admin.conf": base64.b64encode(json.dumps(config).encode()).decode()}}
    with pytest.raises(clients.KubeconfigError, match="certificate-authority-data"):
        argocd.cluster_secret("dpf", "dpf", "one", secret)
    # A token and an insecure server (some sites' DPU clusters): carried as Argo spells them.
    config["clusters"][0]["cluster"] = {"server": server, "insecure-skip-tls-verify": True}
    secret["data"]["admin.conf"] = base64.b64encode(json.dumps(config).encode()).decode()
    built = argocd.cluster_secret("dpf", "dpf", "one", secret)
    assert json.loads(base64.b64decode(built["data"]["config"])) == {"bearerToken": "t",
                                                                     "tlsClientConfig": {"insecure": True}}


DEPLOY_MD = Path(__file__).resolve().parents[2] / "docs" / "deploy.md"
FORBIDDEN = re.compile(r"\b403\b|Forbidden")


def documented_argocd_rights() -> tuple[list[Obj], dict[str, str]]:
    """The Role and RoleBinding docs/deploy.md tells a site to add for the argocd backend, and the expressions it
    tells them to append to secret-policy.yaml's variables."""
    text = DEPLOY_MD.read_text()
    section = text[text.index("only with `--dpuservice-backend argocd`"):]
    role_yaml = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    cel = section.split("```text\n", 1)[1].split("```", 1)[0]
    appended = {}
    for line in cel.splitlines():
        variable, _, rest = line.partition(":")
        appended[variable.strip()] = rest.split("... ", 1)[1]
    return [d for d in yaml.safe_load_all(role_yaml) if d], appended


def test_dpuservice_argocd_runs_on_the_documented_rbac(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The shipped manifests plus what docs/deploy.md adds for the argocd backend are enough: the controller, on
    its ServiceAccount's token (the bed is host and DPU cluster at once), writes every Argo object, prunes a gone
    DPUCluster's Secret and Application and finishes a delete, without one 403."""
    from tests.packaging.rbac import CONTROLLER_SA, DPU_CLUSTER_MANIFESTS, MANIFESTS, documents, token_kubeconfig

    caplog.set_level(logging.DEBUG, logger="dpf")  # a 403 on a retried reconcile is only logged at debug
    operator = "dpf-operator-system"
    with ControlPlane(tmp_path / "host", name="argorbac", controllers=("garbagecollector",)) as kube:
        kube.kubectl("apply", "--server-side", "-k", str(MANIFESTS))
        kube.kubectl("apply", "--server-side", "-k", str(DPU_CLUSTER_MANIFESTS))
        kube.install_crds(CRDS)
        rights, appended = documented_argocd_rights()
        policy = documents(MANIFESTS / "secret-policy.yaml")
        variables = {v["name"]: v for v in policy[0]["spec"]["variables"]}
        for name, expression in appended.items():
            variables[name]["expression"] += " " + expression
        kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-",
                     input="\n---\n".join(json.dumps(d) for d in [*rights, *policy]))
        controller_conf = tmp_path / "controller.kubeconfig"
        controller_conf.write_text(yaml.safe_dump(token_kubeconfig(kube, CONTROLLER_SA)))
        dpu_conf = json.dumps(token_kubeconfig(kube, "dpf-controller-dpu-cluster")).encode()

        async def scenario() -> None:
            admin = await host_rest(kube.kubeconfig)
            settings = dataclasses.replace(controller_settings(controller_conf, operator),
                                           services=ServicesSettings(backend="argocd"))
            controller = await started(Controller(settings))
            try:
                for name in ("one", "two"):
                    await register_dpu_cluster(admin, operator, dpu_conf, name)
                await eventually(lambda: len(controller.clusters.dpu) == 2, "both DPU clusters connected", SLOW)
                await admin.create(DPU_SERVICE, dpuservice(operator, "hbn", OCI_REPO), operator)
                for name in ("one-hbn", "two-hbn"):
                    await eventually(lambda n=name: rest_get(admin, argocd.APPLICATION, n, operator), name, SLOW)
                    await argo_status(admin, operator, name, "Synced", "Healthy")
                await eventually(lambda: conditioned(admin, operator, "hbn", "Ready", "True"), "Ready", SLOW)
                for name in ("one", "two"):
                    secret = await admin.get(SECRET, f"{operator}-{name}", operator)
                    assert secret is not None
                    config = json.loads(base64.b64decode(secret["data"]["config"]))
                    assert config["bearerToken"], "the DPU-cluster identity's token"
                    assert config["tlsClientConfig"]["caData"]
                for name in argocd.PROJECT_DPU, argocd.PROJECT_HOST:
                    assert await admin.get(argocd.APP_PROJECT, name, operator) is not None

                await admin.delete(DPU_CLUSTER, "two", operator)
                await eventually(lambda: gone(admin, SECRET, f"{operator}-two", operator), "Secret of two gone", SLOW)
                await eventually(lambda: _deleting(admin, operator, "two-hbn"), "two-hbn being deleted", SLOW)
                await argo_finishes_deletion(admin, operator, "two-hbn")
                await admin.delete(DPU_SERVICE, "hbn", operator)
                await eventually(lambda: _deleting(admin, operator, "one-hbn"), "one-hbn being deleted", SLOW)
                await argo_finishes_deletion(admin, operator, "one-hbn")
                await eventually(lambda: gone(admin, DPU_SERVICE, "hbn", operator), "the DPUService gone", SLOW)
            finally:
                await controller.stop()
                await admin.close()

        run(scenario(), timeout=280)
    refused = [f"{r.name}: {r.getMessage()}" for r in caplog.records
               if FORBIDDEN.search(r.getMessage() + (r.exc_text or ""))]
    assert not refused, refused
    assert any("became leader" in r.getMessage() for r in caplog.records), "the log capture works"


async def rest_get(rest: Rest, kind: Any, name: str, namespace: str) -> Obj | None:
    return await rest.get(kind, name, namespace)
