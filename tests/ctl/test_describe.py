"""`dpfctl describe` against the real apiserver: DPUSets and DPUs whose status the test writes (as the DPU
reconciler would), read by the installed `dpfctl` console script; the tree text and the JSON are asserted whole,
and each error a user can meet (no kubeconfig, CRDs missing, forbidden, no such object) is explained."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s

from dpf.lab.bed.kube import ControlPlane

DPFCTL = Path(sys.executable).parent / "dpfctl"
GROUP, VERSION = "provisioning.dpu.nvidia.com", "v1alpha1"
T0 = "2026-01-02T03:04:05Z"
PROGRESS = "flashing bf-bundle-2.9.1.bfb: 1.2 GiB of 2.0 GiB (60%), 410 MiB/s, ETA 2s"


def dpfctl(*args: str, kubeconfig: Path | None = None, env: dict[str, str] | None = None
           ) -> subprocess.CompletedProcess[str]:
    flags = ["--kubeconfig", str(kubeconfig)] if kubeconfig else []
    return subprocess.run([str(DPFCTL), *args, *flags], capture_output=True, text=True, timeout=60,
                          env=env if env is not None else {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"})


def condition(type_: str, status: str = "True", reason: str = "Success", message: str = "") -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": T0}


def create(kube: ControlPlane, namespace: str, plural: str, body: dict[str, Any],
           status: dict[str, Any] | None = None) -> dict[str, Any]:
    api = k8s.CustomObjectsApi(kube.client)
    created = api.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body)
    if status is not None:
        created = api.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, plural,
                                                            body["metadata"]["name"], {"status": status})
    return created


def dpuset(name: str) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "DPUSet", "metadata": {"name": name},
            "spec": {"dpuTemplate": {"spec": {"bfb": {"name": "bf-bundle"}}}}}


def dpu(name: str, node: str, owner: dict[str, Any] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if owner is not None:
        meta["ownerReferences"] = [{"apiVersion": f"{GROUP}/{VERSION}", "kind": "DPUSet", "controller": True,
                                    "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"]}]
        meta["labels"] = {f"{GROUP}/dpuset-name": owner["metadata"]["name"],
                          f"{GROUP}/dpuset-namespace": owner["metadata"]["namespace"]}
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "DPU", "metadata": meta,
            "spec": {"nodeName": node, "bfb": "bf-bundle"}}


def populate(kube: ControlPlane, namespace: str) -> None:
    """A DPUSet with a Ready DPU and one flashing; a DPU of no DPUSet in Error."""
    hbn = create(kube, namespace, "dpusets", dpuset("hbn"), {
        "dpuStatistics": {"Ready": 1, "OS Installing": 1},
        "conditions": [condition("Ready", "False", "DPUsNotReady", "1 of 2 DPUs not Ready: worker2-0000-08-00"),
                       condition("DPUsReconciled")]})
    ready = [condition(t) for t in ("Initialized", "NodeEffectReady", "BFBReady", "DMSRunning", "OSInstalled",
                                    "Rebooted", "HostNetworkReady", "Ready")]
    create(kube, namespace, "dpus", dpu("worker1-0000-08-00", "worker1", hbn),
           {"phase": "Ready", "conditions": ready})
    create(kube, namespace, "dpus", dpu("worker2-0000-08-00", "worker2", hbn), {
        "phase": "OS Installing",
        "conditions": [condition("Initialized"), condition("BFBReady"), condition("DMSRunning"),
                       condition("OSInstalled", "False", "Installing", PROGRESS),
                       condition("Ready", "False", "OSInstalling", "phase OS Installing")]})
    create(kube, namespace, "dpus", dpu("worker3-0000-08-00", "worker3"), {
        "phase": "Error",
        "conditions": [condition("Initialized"),
                       condition("OSInstalled", "False", "InstallationFailed",
                                 "3 attempts failed; last: ERR[BL2]: image checksum mismatch\n(misc log)"),
                       condition("Ready", "False", "Error", "phase Error")]})


def columns(text: str) -> list[tuple[str, ...]]:
    """The rows cut at the header's column starts (so a misaligned cell shows up in the wrong column); SINCE,
    relative to the time of the run, becomes "~" when it is an age (45s, 3m, 2h5m, 337d)."""
    header, *rows = text.splitlines()
    starts = [header.index(title) for title in ("NAME", "PHASE", "READY", "REASON", "SINCE", "MESSAGE")]
    cut = [(a, b) for a, b in zip(starts, [*starts[1:], None], strict=True)]
    out = []
    for row in rows:
        cells = [row[a:b].strip() for a, b in cut]
        cells[0] = row[:starts[1]].rstrip()
        cells[4] = re.sub(r"^\d+[smhd](\d+m)?$", "~", cells[4])
        out.append(tuple(cells))
    return out


def test_tree_of_dpusets_dpus_and_the_conditions_that_are_not_true(kube: ControlPlane, namespace: str) -> None:
    populate(kube, namespace)
    result = dpfctl("describe", "-n", namespace, kubeconfig=kube.kubeconfig)
    assert result.returncode == 0, result.stderr
    assert columns(result.stdout) == [
        ("DPUSet/hbn", "1 OS Installing, 1 Ready", "False", "DPUsNotReady", "~",
         "1 of 2 DPUs not Ready: worker2-0000-08-00"),
        ("├─DPU/worker1-0000-08-00", "Ready", "True", "", "~", ""),
        ("└─DPU/worker2-0000-08-00", "OS Installing", "False", "OSInstalling", "~", "phase OS Installing"),
        ("  └─OSInstalled", "", "False", "Installing", "~", PROGRESS),
        ("DPUs without a DPUSet", "", "", "", "", ""),
        ("└─DPU/worker3-0000-08-00", "Error", "False", "Error", "~", "phase Error"),
        ("  └─OSInstalled", "", "False", "InstallationFailed", "~",
         "3 attempts failed; last: ERR[BL2]: image checksum mismatch (misc log)"),  # one line per condition
    ]


def test_json_shape(kube: ControlPlane, namespace: str) -> None:
    populate(kube, namespace)
    result = dpfctl("describe", "-n", namespace, "-o", "json", kubeconfig=kube.kubeconfig)
    assert result.returncode == 0, result.stderr

    def cond(type_: str, status: str, reason: str, message: str) -> dict[str, Any]:
        return {"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": T0}

    def entry(name: str, node: str, phase: str, ready: str, reason: str | None, message: str | None,
              conditions: list[dict[str, Any]], progress: str | None = None) -> dict[str, Any]:
        return {"namespace": namespace, "name": name, "nodeName": node, "phase": phase, "ready": ready,
                "readyReason": reason, "readyMessage": message, "progress": progress, "conditions": conditions}

    assert json.loads(result.stdout) == {
        "apiVersion": "dpfctl.dpu.nvidia.com/v1", "kind": "Describe",
        "dpuSets": [{
            "namespace": namespace, "name": "hbn", "ready": "False", "readyReason": "DPUsNotReady",
            "readyMessage": "1 of 2 DPUs not Ready: worker2-0000-08-00",
            "dpuStatistics": {"OS Installing": 1, "Ready": 1}, "conditions": [],
            "dpus": [
                entry("worker1-0000-08-00", "worker1", "Ready", "True", "Success", "", []),
                entry("worker2-0000-08-00", "worker2", "OS Installing", "False", "OSInstalling",
                      "phase OS Installing", [cond("OSInstalled", "False", "Installing", PROGRESS)], PROGRESS),
            ]}],
        "dpusWithoutDPUSet": [
            entry("worker3-0000-08-00", "worker3", "Error", "False", "Error", "phase Error",
                  [cond("OSInstalled", "False", "InstallationFailed",
                        "3 attempts failed; last: ERR[BL2]: image checksum mismatch\n(misc log)")]),
        ],
    }


def test_one_dpuset_one_dpu_and_all_namespaces(kube: ControlPlane, namespace: str) -> None:
    populate(kube, namespace)
    one_set = dpfctl("describe", "dpuset", "hbn", "-n", namespace, "-o", "json", kubeconfig=kube.kubeconfig)
    assert one_set.returncode == 0, one_set.stderr
    tree = json.loads(one_set.stdout)
    assert [d["name"] for d in tree["dpuSets"][0]["dpus"]] == ["worker1-0000-08-00", "worker2-0000-08-00"]
    assert tree["dpusWithoutDPUSet"] == []

    one_dpu = dpfctl("describe", "dpu", "worker2-0000-08-00", "-n", namespace, kubeconfig=kube.kubeconfig)
    assert one_dpu.returncode == 0, one_dpu.stderr
    names = [line.split()[0] for line in one_dpu.stdout.splitlines()[1:]]
    assert names == ["DPUSet/hbn", "└─DPU/worker2-0000-08-00", "└─OSInstalled"]
    orphan = dpfctl("describe", "dpu", "worker3-0000-08-00", "-n", namespace, kubeconfig=kube.kubeconfig)
    assert [line.split()[0] for line in orphan.stdout.splitlines()[1:]] == [
        "DPUs", "└─DPU/worker3-0000-08-00", "└─OSInstalled"]

    # -A: both namespaces, names qualified by namespace; the context's namespace is not consulted.
    other = f"{namespace[:50]}-b"
    k8s.CoreV1Api(kube.client).create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=other)))
    try:
        create(kube, other, "dpus", dpu("solo", "worker9"))
        everything = dpfctl("describe", "-A", kubeconfig=kube.kubeconfig)
        assert everything.returncode == 0, everything.stderr
        assert f"DPUSet/{namespace}/hbn " in everything.stdout
        assert f"DPU/{other}/solo " in everything.stdout
        assert f"DPU/{namespace}/worker3-0000-08-00 " in everything.stdout
    finally:
        k8s.CoreV1Api(kube.client).delete_namespace(other)


def test_namespace_and_context_from_the_kubeconfig(kube: ControlPlane, namespace: str, tmp_path: Path) -> None:
    populate(kube, namespace)
    config = yaml.safe_load(kube.kubeconfig.read_text())
    admin = config["contexts"][0]
    config["contexts"].append({"name": "tests", "context": {**admin["context"], "namespace": namespace}})
    (tmp_path / "config").write_text(yaml.safe_dump({**config, "current-context": "tests"}))
    # Found through $KUBECONFIG (its first existing file); the namespace is the current context's.
    env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "KUBECONFIG": f"{tmp_path}/missing:{tmp_path}/config"}
    result = dpfctl("describe", "-o", "json", env=env)
    assert result.returncode == 0, result.stderr
    assert [s["name"] for s in json.loads(result.stdout)["dpuSets"]] == ["hbn"]
    # --context picks another context of the file (and its namespace).
    (tmp_path / "config").write_text(yaml.safe_dump({**config, "current-context": admin["name"]}))
    chosen = dpfctl("describe", "-o", "json", "--context", "tests", kubeconfig=tmp_path / "config")
    assert chosen.returncode == 0, chosen.stderr
    assert [s["name"] for s in json.loads(chosen.stdout)["dpuSets"]] == ["hbn"]
    unknown = dpfctl("describe", "--context", "nope", kubeconfig=tmp_path / "config")
    assert unknown.returncode == 1
    assert unknown.stderr == (f"dpfctl: kubeconfig {tmp_path}/config has no context 'nope' "
                              f"(its contexts: {admin['name']}, tests)\n")


def test_empty_namespace(kube: ControlPlane, namespace: str) -> None:
    result = dpfctl("describe", "-n", namespace, kubeconfig=kube.kubeconfig)
    assert (result.returncode, result.stdout) == (0, "No DPUSets or DPUs found.\n")


# ---- errors a user can meet -------------------------------------------------------------------------------
def test_no_kubeconfig(tmp_path: Path) -> None:
    result = dpfctl("describe", env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert result.returncode == 1
    assert result.stderr == (f"dpfctl: no kubeconfig: pass --kubeconfig, set $KUBECONFIG, or create "
                             f"{tmp_path}/.kube/config\n")
    missing = dpfctl("describe", kubeconfig=tmp_path / "nope")
    assert missing.returncode == 1
    assert "kubeconfig" in missing.stderr
    assert "does not exist" in missing.stderr


def test_no_such_object(kube: ControlPlane, namespace: str) -> None:
    result = dpfctl("describe", "dpu", "ghost", "-n", namespace, kubeconfig=kube.kubeconfig)
    assert (result.returncode, result.stderr) == (1, f"dpfctl: DPU {namespace}/ghost not found\n")


def test_forbidden(kube: ControlPlane, namespace: str, tmp_path: Path) -> None:
    """A ServiceAccount without any Role: the apiserver's 403 is named as such, with what is missing."""
    core = k8s.CoreV1Api(kube.client)
    core.create_namespaced_service_account(namespace, k8s.V1ServiceAccount(metadata=k8s.V1ObjectMeta(name="nobody")))
    token = core.create_namespaced_service_account_token(
        "nobody", namespace, k8s.AuthenticationV1TokenRequest(spec=k8s.V1TokenRequestSpec(audiences=[]))).status.token
    config = yaml.safe_load(kube.kubeconfig.read_text())
    config["users"][0]["user"] = {"token": token}
    (tmp_path / "config").write_text(yaml.safe_dump(config))
    result = dpfctl("describe", "-n", namespace, kubeconfig=tmp_path / "config")
    assert result.returncode == 1
    assert result.stderr.startswith(f"dpfctl: forbidden: you may not list dpusets.{GROUP} in namespace {namespace} "
                                    f"(ask for a Role granting get/list on dpus and dpusets.{GROUP}): ")
    assert f"system:serviceaccount:{namespace}:nobody" in result.stderr


@pytest.fixture(scope="module")
def bare_kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """An apiserver without DPF's CRDs."""
    with ControlPlane(tmp_path_factory.mktemp("kube-bare"), name="bare", crd_dir=None) as cluster:
        yield cluster


@pytest.mark.slow
def test_crds_not_installed(bare_kube: ControlPlane) -> None:
    result = dpfctl("describe", "-n", "default", kubeconfig=bare_kube.kubeconfig)
    assert result.returncode == 1
    assert result.stderr == (f"dpfctl: the DPF CRDs are not installed in this cluster (list dpusets.{GROUP}: the "
                             f"API {GROUP}/{VERSION} was not found); install them with "
                             "`kubectl apply --server-side -k packaging/crds`\n")


def test_unreachable_apiserver(kube: ControlPlane, tmp_path: Path) -> None:
    config = yaml.safe_load(kube.kubeconfig.read_text())
    config["clusters"][0]["cluster"]["server"] = "https://127.0.0.1:1"
    (tmp_path / "config").write_text(yaml.safe_dump(config))
    result = dpfctl("describe", "-n", "default", kubeconfig=tmp_path / "config")
    assert result.returncode == 1
    assert result.stderr.startswith("dpfctl: cannot reach the apiserver: ")


def test_help_explains() -> None:
    result = dpfctl("describe", "--help")
    assert result.returncode == 0
    for words in ("dpfctl describe dpuset", "--output", "--all-namespaces", "$KUBECONFIG", "OS Installing",
                  "not True", "no DPUSet", "Exit status"):
        assert words.replace("\n", " ") in " ".join(result.stdout.split()), words
    usage = dpfctl("describe", "dpu")
    assert usage.returncode == 2
    assert "needs a NAME" in usage.stderr
