"""What a user sees with kubectl: defaults on read-back, printer columns, explain, and wait on Ready."""

from __future__ import annotations

from datetime import UTC, datetime

from dpf.controller.api import BFB, DPUService, conditions
from dpf.lab.bed.kube import ControlPlane
from dpf.lab.bed.process import wait_until
from tests.api.helpers import create, get, patch, refusal

PROV = "provisioning.dpu.nvidia.com/v1alpha1"
SVC = "svc.dpu.nvidia.com/v1alpha1"


def obj(api_version: str, kind: str, name: str, spec: dict, **metadata: object) -> dict:
    return {"apiVersion": api_version, "kind": kind, "metadata": {"name": name, **metadata}, "spec": spec}


def test_defaults_appear_on_read_back(api_kube: ControlPlane, namespace: str) -> None:
    dpu = create(api_kube, namespace, obj(PROV, "DPU", "worker1-0000-08-00", {"nodeName": "worker1", "bfb": "b"}))
    assert dpu["spec"]["nodeEffect"] == {"drain": {"automaticNodeReboot": True}}
    assert dpu["spec"]["automaticNodeReboot"] is True
    assert get(api_kube, namespace, "DPU", "worker1-0000-08-00")["status"] == {"phase": "Initializing"}

    drain = create(api_kube, namespace, obj(PROV, "DPU", "d2", {"nodeName": "w2", "bfb": "b",
                                                                "nodeEffect": {"drain": {}}}))
    assert drain["spec"]["nodeEffect"] == {"drain": {"automaticNodeReboot": True}}

    cluster = create(api_kube, namespace, obj(PROV, "DPUCluster", "c1", {"type": "static", "version": "v1.30.2"}))
    assert cluster["spec"]["maxNodes"] == 1000
    assert get(api_kube, namespace, "DPUCluster", "c1")["status"] == {"phase": "Pending"}

    recreate = create(api_kube, namespace, obj(PROV, "DPUSet", "s1", {}))
    assert recreate["spec"]["strategy"] == {"type": "Recreate"}
    rolling = create(api_kube, namespace, obj(PROV, "DPUSet", "s2", {"strategy": {"type": "RollingUpdate"}}))
    assert rolling["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}

    config = create(api_kube, namespace, obj("operator.dpu.nvidia.com/v1alpha1", "DPFOperatorConfig", "c",
                                             {"provisioningController": {"bfbPVCName": "bfb-pvc"}}))
    assert config["spec"]["networking"] == {"controlPlaneMTU": 1500, "highSpeedMTU": 1500}


def test_bfb_file_name_defaults_to_namespace_and_name(api_kube: ControlPlane, namespace: str) -> None:
    bfb = create(api_kube, namespace, obj(PROV, "BFB", "bf-bundle", {"url": "https://example.com/b.bfb"}))
    assert bfb["spec"]["fileName"] == f"{namespace}-bf-bundle.bfb"
    assert get(api_kube, namespace, "BFB", "bf-bundle")["status"] == {"phase": "Initializing"}

    # generateName: the name does not exist yet at admission; the controller fills fileName in, once.
    generated = create(api_kube, namespace, {**obj(PROV, "BFB", "", {"url": "https://example.com/b.bfb"}),
                                             "metadata": {"generateName": "bfb-"}})
    name = generated["metadata"]["name"]
    model = BFB.model_validate(generated)
    assert model.spec.file_name is None
    assert model.effective_file_name() == f"{namespace}-{name}.bfb"
    patch(api_kube, namespace, "BFB", name, {"spec": {"fileName": model.effective_file_name()}})
    message = refusal(patch, api_kube, namespace, "BFB", name, {"spec": {"fileName": "other.bfb"}})
    assert "spec: Invalid value" in message
    assert "BFB spec is immutable" in message


def _table(kube: ControlPlane, namespace: str, resource: str) -> tuple[list[str], list[dict[str, str]]]:
    """`kubectl get` as (header, rows); cells are cut at the header's column offsets, so empty cells and
    values with spaces ("OS Installing") come out right."""
    header, *lines = kube.kubectl("get", resource, "-n", namespace).stdout.splitlines()
    names = header.split()
    starts = [header.index(f"{n} " if i + 1 < len(names) else n) for i, n in enumerate(names)]
    bounds = [*starts[1:], None]
    return names, [{n: line[a:b].strip() for n, a, b in zip(names, starts, bounds, strict=True)} for line in lines]


def test_printer_columns(api_kube: ControlPlane, namespace: str) -> None:
    create(api_kube, namespace, obj(PROV, "DPUCluster", "c1", {"type": "kamaji", "maxNodes": 10,
                                                               "version": "v1.30.2"}))
    header, (row,) = _table(api_kube, namespace, "dpuclusters")
    assert header == ["NAME", "READY", "PHASE", "TYPE", "MAXNODES", "VERSION", "AGE"]
    assert row | {"AGE": ""} == {"NAME": "c1", "READY": "", "PHASE": "Pending", "TYPE": "kamaji", "MAXNODES": "10",
                                 "VERSION": "v1.30.2", "AGE": ""}

    create(api_kube, namespace, obj(PROV, "DPU", "worker1-0000-08-00", {"nodeName": "worker1", "bfb": "b"}))
    patch(api_kube, namespace, "DPU", "worker1-0000-08-00", {"status": {"phase": "OS Installing"}}, status=True)
    header, (row,) = _table(api_kube, namespace, "dpus")
    assert header == ["NAME", "READY", "PHASE", "AGE"]
    assert (row["NAME"], row["PHASE"]) == ("worker1-0000-08-00", "OS Installing")

    create(api_kube, namespace, obj(SVC, "DPUServiceInterface", "p0", {"template": {"spec": {"template": {"spec": {
        "interfaceType": "service", "service": {"serviceID": "hbn", "network": "mybrhbn",
                                                "interfaceName": "p0_if"}}}}}}))
    header, (row,) = _table(api_kube, namespace, "dpuserviceinterfaces")
    assert header == ["NAME", "IFTYPE", "IFNAME", "READY", "PHASE", "AGE"]
    assert (row["NAME"], row["IFTYPE"], row["IFNAME"]) == ("p0", "service", "p0_if")


def test_kubectl_explain_shows_descriptions(api_kube: ControlPlane) -> None:
    def explain(path: str) -> str:
        result = api_kube.kubectl("explain", path, check=False)
        return result.stdout if result.returncode == 0 else ""

    # The apiserver publishes a new CRD's OpenAPI asynchronously.
    text = wait_until(lambda: explain("dpu.spec.nodeEffect"), 30, "kubectl explain dpu.spec.nodeEffect")
    assert "What provisioning does to the host node" in str(text)
    assert "taint" in str(text)
    assert "customLabel" in str(text)
    prefix = wait_until(lambda: explain("dpuserviceipam.spec.ipv4Network.prefixSize"), 30, "explain prefixSize")
    assert "Prefix length each node gets" in str(prefix)
    kind = wait_until(lambda: explain("dpudeployment"), 30, "explain dpudeployment")
    assert "A bundle: DPUs from a BFB and flavor" in str(kind)


def test_kubectl_wait_for_ready(api_kube: ControlPlane, namespace: str) -> None:
    service = DPUService.model_validate(obj(SVC, "DPUService", "doca-hbn", {"helmChart": {"source": {
        "repoURL": "https://helm.ngc.nvidia.com/nvidia/doca", "version": "1.0.1", "chart": "doca-hbn"}}}))
    stored = create(api_kube, namespace, service.to_json())
    wait = ("wait", "--for=condition=Ready", "-n", namespace, "dpuservice/doca-hbn")
    assert api_kube.kubectl(*wait, "--timeout=1s", check=False).returncode != 0  # not Ready yet

    now = datetime.now(UTC)
    generation = stored["metadata"]["generation"]
    status = conditions.ensure(None, DPUService.CONDITION_TYPES, now=now, generation=generation)
    for type_ in DPUService.CONDITION_TYPES[1:]:
        status = conditions.mark_true(status, type_, now=now, generation=generation)
    status = conditions.summarize(status, now=now, generation=generation)
    patch(api_kube, namespace, "DPUService", "doca-hbn", {"status": {
        "conditions": [c.to_json() for c in status], "observedGeneration": generation}}, status=True)

    result = api_kube.kubectl(*wait, "--timeout=30s", check=False)
    assert result.returncode == 0, result.stderr
    _, (row,) = _table(api_kube, namespace, "dpuservices")
    assert (row["READY"], row["PHASE"]) == ("True", "Success")
