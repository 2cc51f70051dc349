"""ArgoCD objects of a DPUService, as upstream DPF writes them (`internal/argocd/utils.go`). Pure builders.

Used by the `argocd` DPUService backend (reconcilers/dpuservice_argocd.py): per DPUCluster an Argo cluster Secret
and an Application `<cluster>-<dpuservice>` (or one `in-cluster-<dpuservice>` with `deployInCluster`), and the two
AppProjects every Application belongs to. ArgoCD itself (its application controller and repo server) renders and
syncs the charts; we only write these objects and read back each Application's sync and health status.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from typing import Any

from dpf.controller import helm
from dpf.controller.kube import clients
from dpf.controller.kube.rest import Kind, Obj

ARGO = "argoproj.io"
APPLICATION = Kind(ARGO, "v1alpha1", "applications", "Application")
APP_PROJECT = Kind(ARGO, "v1alpha1", "appprojects", "AppProject")
CRDS = {APPLICATION: "applications.argoproj.io", APP_PROJECT: "appprojects.argoproj.io"}

APP_FINALIZER = "resources-finalizer.argocd.argoproj.io"  # Argo's cascading delete: it removes what it deployed
SKIP_RECONCILE = "argocd.argoproj.io/skip-reconcile"
SECRET_TYPE = "argocd.argoproj.io/secret-type"
PROJECT_DPU, PROJECT_HOST = "doca-platform-project-dpu", "doca-platform-project-host"
IN_CLUSTER = "in-cluster"  # Argo's name of the cluster it runs in

CLUSTER_LABEL = "dpu.nvidia.com/cluster"
SERVICE_NAME_LABEL = "dpu.nvidia.com/dpuservice-name"
SERVICE_NAMESPACE_LABEL = "dpu.nvidia.com/dpuservice-namespace"
COMPONENT_LABEL = "dpu.nvidia.com/component"
COMPONENT = "dpuservice-manager"


def application_name(cluster: str, dpuservice: str) -> str:
    """Upstream's `<cluster>-<dpuservice>` (Argo's default Helm release name too, as our Helm backend's). Pure."""
    return f"{cluster}-{dpuservice}"


def argo_repo_url(chart: helm.Chart) -> str:
    """Argo names an OCI registry without its scheme (upstream's GetArgoRepoURL). Pure."""
    return chart.repo_url.removeprefix("oci://")


def application(dpuservice: Obj, namespace: str, cluster: str, chart: helm.Chart, values: Mapping[str, Any],
                paused: bool = False) -> Obj:
    """The Application that deploys `dpuservice` into `cluster` (a DPUCluster name or `in-cluster`), kept in the
    operator `namespace`. `chart` is already mirrored, `values` are dpuservice.helm_values(). Pure."""
    meta = dpuservice["metadata"]
    source = dpuservice["spec"]["helmChart"]["source"]
    helm_source: dict[str, Any] = {"valuesObject": dict(values)}
    if source.get("releaseName"):
        helm_source["releaseName"] = source["releaseName"]
    argo_source: dict[str, Any] = {"repoURL": argo_repo_url(chart), "targetRevision": chart.version,
                                   "helm": helm_source}
    if chart.chart:
        argo_source["chart"] = chart.chart
    if chart.path:
        argo_source["path"] = chart.path
    app_meta: dict[str, Any] = {
        "name": application_name(cluster, meta["name"]), "namespace": namespace,
        "labels": {CLUSTER_LABEL: cluster, SERVICE_NAME_LABEL: meta["name"],
                   SERVICE_NAMESPACE_LABEL: meta["namespace"], COMPONENT_LABEL: COMPONENT},
        "finalizers": [APP_FINALIZER],
    }
    if paused:
        app_meta["annotations"] = {SKIP_RECONCILE: "true"}
    return {"apiVersion": APPLICATION.api_version, "kind": APPLICATION.kind, "metadata": app_meta,
            "spec": {"project": PROJECT_HOST if cluster == IN_CLUSTER else PROJECT_DPU,
                     "source": argo_source,
                     "destination": {"name": cluster, "namespace": meta["namespace"]},
                     "syncPolicy": {"automated": {"prune": True, "selfHeal": True}}}}


def app_project(name: str, namespace: str, destinations: Sequence[str]) -> Obj:
    """AppProject `name` allowing any source and any resource into the named clusters (any namespace). Pure."""
    return {"apiVersion": APP_PROJECT.api_version, "kind": APP_PROJECT.kind,
            "metadata": {"name": name, "namespace": namespace, "labels": {COMPONENT_LABEL: COMPONENT}},
            "spec": {"description": "Installing DPU Services", "sourceRepos": ["*"],
                     "clusterResourceWhitelist": [{"group": "*", "kind": "*"}],
                     "sourceNamespaces": [namespace],
                     "destinations": [{"name": d, "namespace": "*"} for d in destinations]}}


def cluster_secret_name(dpucluster_namespace: str, dpucluster_name: str) -> str:
    return f"{dpucluster_namespace}-{dpucluster_name}"


def cluster_secret(namespace: str, dpucluster_namespace: str, dpucluster_name: str, admin_conf: Obj) -> Obj:
    """Argo's declarative cluster Secret for a DPUCluster from its kubeconfig Secret (`admin.conf`).

    `name` is the DPUCluster's name, which is what each Application's destination names. ArgoCD runs in its own
    pods, so the kubeconfig must carry its credentials inline (`*-data`, or a token); file paths are refused with
    the field named (raises clients.KubeconfigError). Pure.
    """
    document = clients.parse_admin_conf(admin_conf)
    where = f"Secret {dpucluster_namespace}/{admin_conf['metadata']['name']} key 'admin.conf'"
    cluster = document["clusters"][0].get("cluster") or {}
    user = document["users"][0].get("user") or {}
    for field, inline in (("certificate-authority", "certificate-authority-data"),
                          ("client-certificate", "client-certificate-data"), ("client-key", "client-key-data"),
                          ("tokenFile", "token")):
        if (cluster if field == "certificate-authority" else user).get(field):
            raise clients.KubeconfigError(f"{where} names a file ({field}); ArgoCD runs in its own pods and needs "
                                          f"the credential inline ({inline})")
    if not cluster.get("server"):
        raise clients.KubeconfigError(f"{where} has no cluster server")
    tls: dict[str, Any] = {}
    for argo_key, value in (("caData", cluster.get("certificate-authority-data")),
                            ("certData", user.get("client-certificate-data")),
                            ("keyData", user.get("client-key-data"))):
        if value:
            tls[argo_key] = value
    if cluster.get("insecure-skip-tls-verify"):
        tls["insecure"] = True
    config: dict[str, Any] = {"tlsClientConfig": tls}
    if user.get("token"):
        config["bearerToken"] = user["token"]
    data = {"name": dpucluster_name, "server": cluster["server"], "config": json.dumps(config, sort_keys=True)}
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": cluster_secret_name(dpucluster_namespace, dpucluster_name), "namespace": namespace,
                         "labels": {SECRET_TYPE: "cluster", CLUSTER_LABEL: dpucluster_name,
                                    COMPONENT_LABEL: COMPONENT}},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}


def readiness(app: Obj | None, desired: Obj | None = None) -> str:
    """'' when ArgoCD reports the Application Synced and Healthy, else why not (upstream's ApplicationsReady).

    With `desired` (the Application as just written), Synced counts only if ArgoCD compared that spec: its
    `status.sync.comparedTo` names the source and destination it compared. Right after a change ArgoCD's status is
    still that of the previous spec (Synced, Healthy), and reading it alone made a DPUService Ready before ArgoCD
    had even rendered the new values (found running ArgoCD v3.6.2, tests/services/test_dpuservice_argocd_real.py).
    """
    if app is None:
        return "Application is not yet deployed."
    status = app.get("status") or {}
    sync = (status.get("sync") or {}).get("status") or "Unknown"
    health = (status.get("health") or {}).get("status") or "Unknown"
    if (sync, health) != ("Synced", "Healthy"):
        return f"sync {sync}, health {health}"
    if desired is not None:
        compared = (status.get("sync") or {}).get("comparedTo") or {}
        for field in ("source", "destination"):
            have = compared.get(field) or {}
            if any(have.get(k) != v for k, v in desired["spec"][field].items()):
                return f"ArgoCD has not yet compared the current {field} (its Synced, Healthy are of a previous one)"
    return ""
