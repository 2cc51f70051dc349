"""The typed models themselves: wire names, defaults, refusals in Python, and the upstream examples parse."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from dpf.controller.api import (
    BFB,
    DPU,
    DPFOperatorConfig,
    DPUCluster,
    DPUServiceInterface,
    DPUSet,
    kind_by_name,
)
from tests.api.helpers import EXAMPLES


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_upstream_examples_parse_into_models(example: str) -> None:
    for doc in yaml.safe_load_all((EXAMPLES / example).read_text()):
        if doc:
            kind_by_name(doc["kind"]).model_validate(doc)


def test_irregular_wire_names() -> None:
    cluster = DPUCluster.model_validate({"metadata": {"name": "c"}, "spec": {
        "type": "kamaji", "version": "v1.30.2",
        "clusterEndpoint": {"keepalived": {"vip": "10.0.0.9", "virtualRouterID": 126, "interface": "eno1"}}}})
    assert cluster.spec.cluster_endpoint.keepalived.virtual_router_id == 126  # type: ignore[union-attr]
    config = DPFOperatorConfig.model_validate({"spec": {"provisioningController": {"bfbPVCName": "p"},
                                                        "ovsCNI": {"disable": True},
                                                        "dpuDetector": {"collectors": {"psID": True}}}})
    wire = config.to_json()["spec"]
    assert wire["ovsCNI"] == {"disable": True}
    assert wire["dpuDetector"]["collectors"] == {"psID": True}
    assert wire["networking"] == {"controlPlaneMTU": 1500, "highSpeedMTU": 1500}
    assert wire["provisioningController"] == {"bfbPVCName": "p"}


def test_python_defaults_match_the_crd_defaults() -> None:
    dpu = DPU.model_validate({"spec": {"nodeName": "w1", "bfb": "b"}})
    assert dpu.to_json()["spec"] == {"nodeName": "w1", "bfb": "b", "automaticNodeReboot": True,
                                     "nodeEffect": {"drain": {"automaticNodeReboot": True}}}
    assert dpu.status.phase == "Initializing"
    assert DPUSet.model_validate({}).spec.strategy.type == "Recreate"
    assert dpu.api_version == "provisioning.dpu.nvidia.com/v1alpha1"
    assert dpu.kind == "DPU"


@pytest.mark.parametrize(("model", "wire", "where"), [
    (BFB, {"spec": {"url": "ftp://x/a.bfb"}}, "spec.url"),
    (DPU, {"spec": {"nodeName": "w", "bfb": "b", "nodeEfect": {}}}, "spec.nodeEfect"),  # typo: extra forbidden
    (DPUCluster, {"spec": {"type": "static", "version": "v1", "maxNodes": 0}}, "spec.maxNodes"),
    (DPUServiceInterface, {"spec": {"template": {"spec": {"template": {"spec": {"interfaceType": "x"}}}}}},
     "spec.template.spec.template.spec.interfaceType"),
    (DPFOperatorConfig, {"spec": {"provisioningController": {"bfbPVCName": "p"},
                                  "multus": {"image": "Bad Image"}}}, "spec.multus.image"),
    (BFB, {"apiVersion": "provisioning.dpu.nvidia.com/v1", "spec": {"url": "https://x/a.bfb"}}, "apiVersion"),
])
def test_models_refuse_bad_input_naming_the_field(model: type, wire: dict, where: str) -> None:
    with pytest.raises(ValidationError) as refused:
        model.model_validate(wire)
    assert where in str(refused.value)


def test_object_meta_preserves_server_fields() -> None:
    wire = {"metadata": {"name": "b", "namespace": "ns", "uid": "u", "resourceVersion": "7",
                         "managedFields": [{"manager": "kubectl"}]}, "spec": {"url": "https://x/a.bfb"}}
    assert BFB.model_validate(wire).to_json()["metadata"]["managedFields"] == [{"manager": "kubectl"}]
