"""Bad objects are refused by the real apiserver, and the message names the field (and says what is wrong).

Each case starts from a valid minimal object of its kind and breaks one thing. Creates are dry runs
(validation and admission run in full, nothing is stored); rules about changes patch a stored object.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from dpf.controller.api import KINDS, kind_by_name
from dpf.lab.bed.kube import ControlPlane
from tests.api.helpers import api, coords, create, merged, patch, refusal

PORT = {"serviceInterface": {"matchLabels": {"uplink": "p0"}}}
CHAIN = {"switches": [{"ports": [PORT]}]}
SOURCE = {"repoURL": "https://helm.ngc.nvidia.com/nvidia/doca", "version": "1.0.1", "chart": "doca-hbn"}
VALID: dict[str, dict[str, Any]] = {
    "BFB": {"url": "https://example.com/bf-bundle.bfb"},
    "DPU": {"nodeName": "worker1", "bfb": "bf-bundle"},
    "DPUSet": {"dpuTemplate": {"spec": {"bfb": {"name": "bf-bundle"}}}},
    "DPUFlavor": {"dpuResources": {"cpu": 16, "memory": "32Gi"}},
    "DPUCluster": {"type": "static", "version": "v1.30.2"},
    "DPUService": {"helmChart": {"source": SOURCE}},
    "DPUDeployment": {"dpus": {"bfb": "bf-bundle", "flavor": "hbn"}, "services": {},
                      "serviceChains": [{"ports": [PORT]}]},
    "DPUServiceTemplate": {"deploymentServiceName": "hbn", "helmChart": {"source": SOURCE}},
    "DPUServiceConfiguration": {"deploymentServiceName": "hbn"},
    "DPUServiceCredentialRequest": {"serviceAccount": {"name": "sa", "namespace": "ns"}, "type": "tokenFile",
                                    "secret": {"name": "s", "namespace": "ns"}},
    "DPUServiceInterface": {"template": {"spec": {"template": {"spec": {"interfaceType": "ovn"}}}}},
    "ServiceInterfaceSet": {"template": {"spec": {"interfaceType": "ovn"}}},
    "ServiceInterface": {"interfaceType": "ovn"},
    "DPUServiceChain": {"template": {"spec": {"template": {"spec": CHAIN}}}},
    "ServiceChainSet": {"template": {"spec": CHAIN}},
    "ServiceChain": CHAIN,
    "DPUServiceIPAM": {"ipv4Network": {"network": "10.0.120.0/22", "prefixSize": 29}},
    "DPUServiceNAD": {"resourceType": "veth"},
    "DPFOperatorConfig": {"provisioningController": {"bfbPVCName": "bfb-pvc"}},
}
TCP_PORT = {"name": "web", "port": 80, "protocol": "TCP"}


def configports(port: dict[str, Any], **config: Any) -> dict[str, Any]:
    """A DPUService spec change: configPorts with one port, TCP_PORT changed by `port` (None deletes a key)."""
    changed = {k: v for k, v in {**TCP_PORT, **port}.items() if v is not None}
    return {"configPorts": {**config, "ports": [changed]}}


SUBNET = {"ipv4Network": None, "ipv4Subnet": {"subnet": "10.0.0.0/16", "gateway": "10.0.0.1", "perNodeIPCount": 8}}


@dataclass
class Bad:
    kind: str
    change: dict[str, Any]  # merged into the valid spec (None deletes a key)
    field: str  # the field path the message must name
    says: str  # what the message must also say
    update: dict[str, Any] | None = None  # when set: create `change` for real, then this merge patch is refused
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.kind}:{self.field}:{self.says[:24]}"


def ipam(**network: Any) -> dict[str, Any]:
    return {"ipv4Network": network}


DSI_SPEC = "spec.template.spec.template.spec"


def dsi(**spec: Any) -> dict[str, Any]:
    """A DPUServiceInterface spec whose interface spec is `spec`."""
    return {"template": {"spec": {"template": {"spec": spec}}}}


CASES = [
    Bad("BFB", {"url": "ftp://example.com/bf-bundle.bfb"}, "spec.url", "should match"),
    Bad("BFB", {"url": "https://example.com/bf-bundle.iso"}, "spec.url", "should match"),
    Bad("BFB", {"fileName": "bundle.img"}, "spec.fileName", "should match"),
    Bad("BFB", {}, "spec", "BFB spec is immutable", update={"spec": {"url": "https://example.com/other.bfb"}}),
    Bad("DPU", {"nodeName": None}, "spec.nodeName", "Required value"),
    Bad("DPU", {"nodeEffect": {"taint": {"key": "dpu", "effect": "NoSchedule"}, "noEffect": True}},
        "spec.nodeEffect", "at most one of taint, noEffect, customLabel and drain"),
    Bad("DPU", {}, "metadata.annotations[provisioning.dpu.nvidia.com/host-power-cycle-required]", "boolean",
        metadata={"annotations": {"provisioning.dpu.nvidia.com/host-power-cycle-required": "maybe"}}),
    Bad("DPU", {}, "spec.nodeName", "nodeName is immutable", update={"spec": {"nodeName": "worker2"}}),
    Bad("DPU", {"cluster": {"name": "c1", "namespace": "ns"}}, "spec.cluster.name",
        "cluster.name is immutable once set", update={"spec": {"cluster": {"name": "c2"}}}),
    Bad("DPUSet", {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0}}},
        "spec.strategy.rollingUpdate.maxUnavailable", "integer > 0 or a percentage"),
    Bad("DPUSet", {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "150%"}}},
        "spec.strategy.rollingUpdate.maxUnavailable", "(0%, 100%]"),
    Bad("DPUSet", {"strategy": {"type": "Replace"}}, "spec.strategy.type", "supported values"),
    Bad("DPUSet", {"dpuTemplate": {"annotations": {"provisioning.dpu.nvidia.com/host-power-cycle-required": "yes"}}},
        "spec.dpuTemplate.annotations", "must be a boolean"),
    Bad("DPUSet", {"dpuTemplate": {"spec": {"nodeEffect": {"drain": {}, "customLabel": {"a": "b"}}}}},
        "spec.dpuTemplate.spec.nodeEffect", "at most one of"),
    Bad("DPUFlavor", {"nvconfig": [{"device": "*", "parameters": ["A=1"]}, {"device": "*", "parameters": ["B=1"]}]},
        "spec.nvconfig", "at most one nvconfig entry"),
    Bad("DPUFlavor", {"nvconfig": [{"device": "/dev/mst/mt41692", "parameters": ["A=1"]}]},
        "spec.nvconfig[0].device", "device must be '*'"),
    Bad("DPUFlavor", {"systemReservedResources": {"cpu": 32}}, "spec.systemReservedResources", "fit inside"),
    Bad("DPUFlavor", {"dpuResources": None, "systemReservedResources": {"cpu": 1}},
        "spec.systemReservedResources", "needs dpuResources"),
    Bad("DPUFlavor", {"dpuResources": {"memory": "lots"}}, "spec.dpuResources.memory", "should match"),
    Bad("DPUFlavor", {"configFiles": [{"path": "/x", "operation": "replace", "raw": "", "permissions": "0644"}]},
        "spec.configFiles[0].operation", "supported values"),
    Bad("DPUFlavor", {}, "spec", "DPUFlavor spec is immutable", update={"spec": {"bfcfgParameters": ["X=1"]}}),
    Bad("DPUCluster", {"maxNodes": 0}, "spec.maxNodes", "greater than or equal to 1"),
    Bad("DPUCluster", {"maxNodes": 1001}, "spec.maxNodes", "less than or equal to 1000"),
    Bad("DPUCluster", {"type": "openshift"}, "spec.type", "should match"),
    Bad("DPUCluster", {"clusterEndpoint": {"keepalived": {"vip": "10.0.0.9", "virtualRouterID": 256,
                                                          "interface": "eno1"}}},
        "spec.clusterEndpoint.keepalived.virtualRouterID", "less than or equal to 255"),
    Bad("DPUCluster", {"clusterEndpoint": {"keepalived": {"vip": "10.0.0.9", "virtualRouterID": 1, "interface": ""}}},
        "spec.clusterEndpoint.keepalived.interface", "at least 1 chars"),
    Bad("DPUCluster", {"kubeconfig": "admin-kubeconfig"}, "spec.kubeconfig", "kubeconfig is immutable once set",
        update={"spec": {"kubeconfig": "other"}}),
    Bad("DPUService", {"helmChart": {"source": {"repoURL": "http://charts.example.com"}}},
        "spec.helmChart.source.repoURL", "should match"),
    Bad("DPUService", {"interfaces": ["p0-sf"]}, "spec.serviceID", "serviceID is required when interfaces is set"),
    Bad("DPUService", {"helmChart": {"source": {"version": ""}}}, "spec.helmChart.source.version",
        "at least 1 chars"),
    Bad("DPUService", {"serviceID": "x", "interfaces": [f"i{n}" for n in range(51)]}, "spec.interfaces",
        "must have at most 50 items"),
    *(Bad("DPUService", configports(port), f"spec.configPorts.ports[0].{key}", says)
      for port, key, says in (({"port": 0}, "port", "greater than or equal to 1"),
                              ({"port": 65536}, "port", "less than or equal to 65535"),
                              ({"nodePort": 0}, "nodePort", "greater than or equal to 1"),
                              ({"nodePort": 70000}, "nodePort", "less than or equal to 65535"),
                              ({"protocol": "SCTP"}, "protocol", "supported values"),
                              ({"name": "Web_1"}, "name", "should match"),
                              ({"name": ""}, "name", "at least 1 chars"),
                              ({"port": None}, "port", "Required value"))),
    Bad("DPUService", {"configPorts": {"ports": [TCP_PORT, {**TCP_PORT, "port": 81}]}}, "spec.configPorts.ports",
        "port names must be unique"),
    Bad("DPUService", configports({"nodePort": 30080}, serviceType="ClusterIP"), "spec.configPorts.ports",
        "nodePort can only be set when serviceType is NodePort"),
    Bad("DPUService", configports({"nodePort": 30080}, serviceType="None"), "spec.configPorts.ports",
        "nodePort can only be set when serviceType is NodePort"),
    Bad("DPUService", configports({}, serviceType="LoadBalancer"), "spec.configPorts.serviceType",
        "supported values"),
    Bad("DPUService", {"configPorts": {"serviceType": "NodePort"}}, "spec.configPorts.ports", "Required value"),
    Bad("DPUService", {"deployInCluster": True, **configports({})}, "spec.configPorts",
        "configPorts cannot be set when deployInCluster is true"),
    Bad("DPUService", configports({}), "spec.configPorts.serviceType", "serviceType is immutable",
        update={"spec": {"configPorts": {"serviceType": "ClusterIP"}}}),
    Bad("DPUDeployment", {"serviceChains": [{"ports": [{"service": {"name": "hbn", "interface": "p0_if"},
                                                        **PORT}]}]},
        "spec.serviceChains[0].ports[0]", "exactly one of service and serviceInterface"),
    Bad("DPUDeployment", {"serviceChains": [{"ports": [{}]}]}, "spec.serviceChains[0].ports[0]",
        "exactly one of service and serviceInterface"),
    Bad("DPUDeployment", {"serviceChains": []}, "spec.serviceChains", "at least 1 items"),
    Bad("DPUDeployment", {"dpus": {"dpuSets": [{"nameSuffix": ""}]}}, "spec.dpus.dpuSets[0].nameSuffix",
        "at least 1 chars"),
    Bad("DPUServiceTemplate", {"helmChart": None}, "spec.helmChart", "Required value"),
    Bad("DPUServiceTemplate", {"resourceRequirements": {"memory": "6 GB"}}, "spec.resourceRequirements.memory",
        "should match"),
    Bad("DPUServiceConfiguration", {"deploymentServiceName": None}, "spec.deploymentServiceName", "Required value"),
    Bad("DPUServiceConfiguration", {"interfaces": []}, "spec.interfaces", "at least 1 items"),
    Bad("DPUServiceCredentialRequest", {"type": "token"}, "spec.type", "supported values"),
    Bad("DPUServiceCredentialRequest", {"duration": "1 day"}, "spec.duration", "should match"),
    Bad("DPUServiceCredentialRequest", {"secret": None}, "spec.secret", "Required value"),
    Bad("DPUServiceInterface", {"template": {"spec": {"template": {"spec": {"interfaceType": "vlan"}}}}},
        "spec.template.spec.template.spec.vlan", "vlan is required when interfaceType is vlan"),
    Bad("DPUServiceInterface", {"template": {"spec": {"template": {"spec": {"interfaceType": "bridge"}}}}},
        "spec.template.spec.template.spec.interfaceType", "supported values"),
    Bad("ServiceInterfaceSet", {"template": {"spec": {"interfaceType": "service"}}},
        "spec.template.spec.service", "service is required when interfaceType is service"),
    Bad("ServiceInterfaceSet", {"template": {"spec": {"interfaceType": "physical"}}},
        "spec.template.spec.physical", "physical is required when interfaceType is physical"),
    Bad("ServiceInterface", {"interfaceType": "vf"}, "spec.vf", "vf is required when interfaceType is vf"),
    Bad("ServiceInterface", {"interfaceType": "service", "service": {"serviceID": "hbn", "interfaceName": "p0_if"}},
        "spec.service.network", "Required value"),
    # Bounds the controller and the DPU agent need (issue: these were accepted, then blocked every node).
    *(Bad("DPUServiceInterface", dsi(interfaceType="vf", vf={"pfID": 0, "vfID": value}),
          f"{DSI_SPEC}.vf.vfID", says) for value, says in (
        (2**31, "less than or equal to 4095"), (2**53 + 1, "less than or equal to 4095"),
        (-(2**31) - 1, "greater than or equal to 0"), (-1, "greater than or equal to 0"))),
    Bad("DPUServiceInterface", dsi(interfaceType="vf", vf={"pfID": 4096, "vfID": 0}), f"{DSI_SPEC}.vf.pfID",
        "less than or equal to 4095"),
    Bad("DPUServiceInterface", dsi(interfaceType="pf", pf={"pfID": -1}), f"{DSI_SPEC}.pf.pfID",
        "greater than or equal to 0"),
    Bad("DPUServiceInterface", dsi(interfaceType="vlan", vlan={"vlanID": 4095, "parentInterfaceRef": "p0"}),
        f"{DSI_SPEC}.vlan.vlanID", "less than or equal to 4094"),
    Bad("DPUServiceInterface", dsi(interfaceType="physical", physical={"interfaceName": "p0-much-too-long"}),
        f"{DSI_SPEC}.physical.interfaceName", "may not be more than 15"),
    Bad("DPUServiceInterface", dsi(interfaceType="physical", physical={"interfaceName": "p0 p1"}),
        f"{DSI_SPEC}.physical.interfaceName", "should match"),
    Bad("ServiceInterface", {"interfaceType": "service", "service": {"serviceID": "hbn", "network": "mybrhbn",
                                                                     "interfaceName": "p0_if_in_the_pod"}},
        "spec.service.interfaceName", "may not be more than 15"),
    Bad("ServiceInterface", {"interfaceType": "service", "service": {"serviceID": "hbn service", "network": "n",
                                                                     "interfaceName": "p0_if"}},
        "spec.service.serviceID", "should match"),
    Bad("ServiceInterface", {"interfaceType": "vf", "vf": {"pfID": 0, "vfID": 2**31}}, "spec.vf.vfID",
        "less than or equal to 4095"),
    Bad("DPUServiceChain", {"template": {"spec": {"template": {"spec": {"switches": []}}}}},
        "spec.template.spec.template.spec.switches", "at least 1 items"),
    Bad("DPUServiceChain", {"template": {"spec": {"template": {"spec": {"switches": [
        {"ports": [{"serviceInterface": {"matchLabels": {}}}]}]}}}}},
        "spec.template.spec.template.spec.switches[0].ports[0].serviceInterface.matchLabels", "at least 1 properties"),
    Bad("ServiceChainSet", {"template": {"spec": {"switches": [{"ports": []}]}}},
        "spec.template.spec.switches[0].ports", "at least 1 items"),
    Bad("ServiceChainSet", {"template": None}, "spec.template", "Required value"),
    Bad("ServiceChain", {"switches": None}, "spec.switches", "Required value"),
    Bad("ServiceChain", {"switches": [{"ports": [{"serviceInterface": {
        "matchLabels": {f"k{n}": "v" for n in range(51)}}}]}]},
        "spec.switches[0].ports[0].serviceInterface.matchLabels", "Too many: 51"),
    Bad("DPUServiceNAD", {"resourceType": "macvlan"}, "spec.resourceType", "supported values"),
    Bad("DPUServiceNAD", {"resourceType": None}, "spec.resourceType", "Required value"),
    Bad("DPUServiceNAD", {"mtu": 65000}, "spec.mtu", "less than or equal to 9216"),
    Bad("DPUServiceNAD", {"ipam": "yes"}, "spec.ipam", "boolean"),
    Bad("DPUServiceIPAM", {"ipv4Subnet": SUBNET["ipv4Subnet"]}, "spec", "exactly one of ipv4Network and ipv4Subnet"),
    Bad("DPUServiceIPAM", {"ipv4Network": None}, "spec", "exactly one of ipv4Network and ipv4Subnet"),
    Bad("DPUServiceIPAM", ipam(network="10.0.120.0/33", prefixSize=29), "spec.ipv4Network.network",
        "network must be a CIDR"),
    Bad("DPUServiceIPAM", ipam(network="10.0.120.0/22", prefixSize=16), "spec.ipv4Network.prefixSize",
        "must not be smaller than the network's prefix length"),
    Bad("DPUServiceIPAM", ipam(network="10.0.120.0/22", prefixSize=33), "spec.ipv4Network.prefixSize",
        "at most 32 for an IPv4 network"),
    Bad("DPUServiceIPAM", ipam(network="fd00::/64", prefixSize=129), "spec.ipv4Network.prefixSize",
        "less than or equal to 128"),
    Bad("DPUServiceIPAM", ipam(network="10.0.120.0/22", prefixSize=29, gatewayIndex=-1),
        "spec.ipv4Network.gatewayIndex", "greater than or equal to 0"),
    Bad("DPUServiceIPAM", {**SUBNET, "ipv4Subnet": {**SUBNET["ipv4Subnet"], "perNodeIPCount": 0}},
        "spec.ipv4Subnet.perNodeIPCount", "greater than or equal to 1"),
    Bad("DPUServiceIPAM", {**SUBNET, "ipv4Subnet": {**SUBNET["ipv4Subnet"], "perNodeIPCount": 2**53 + 1}},
        "spec.ipv4Subnet.perNodeIPCount", "less than or equal to 2147483647"),
    Bad("DPUServiceIPAM", ipam(network="10.0.120.0/22", prefixSize=29, exclusions=["10.0.200.1"]),
        "spec.ipv4Network.exclusions", "single IP inside 10.0.120.0/22"),
    Bad("DPUServiceIPAM", ipam(network="10.0.120.0/22", prefixSize=29, allocations={"worker1": "10.0.120.0/28"}),
        "spec.ipv4Network.allocations", "inside 10.0.120.0/22 whose prefix length is prefixSize"),
    Bad("DPUServiceIPAM", ipam(network="10.0.120.0/22", prefixSize=29, routes=[{"dst": "fd00::/64"}]),
        "spec.ipv4Network.routes", "same IP family"),
    Bad("DPUServiceIPAM", ipam(network="10.0.120.0/22", prefixSize=29, defaultGateway=True,
                               routes=[{"dst": "0.0.0.0/0"}]),
        "spec.ipv4Network.routes", "default route"),
    Bad("DPUServiceIPAM", {**SUBNET, "ipv4Subnet": {**SUBNET["ipv4Subnet"], "gateway": "10.1.0.1"}},
        "spec.ipv4Subnet.gateway", "gateway must be an IP inside subnet"),
    Bad("DPUServiceIPAM", {}, "spec.ipv4Network.network", "may only grow",
        update={"spec": {"ipv4Network": {"network": "10.0.120.0/24"}}}),
    Bad("DPUServiceIPAM", {}, "spec", "switching between ipv4Network and ipv4Subnet",
        update={"spec": SUBNET}),
    Bad("DPFOperatorConfig", {"networking": {"controlPlaneMTU": 9217}}, "spec.networking.controlPlaneMTU",
        "less than or equal to 9216"),
    Bad("DPFOperatorConfig", {"networking": {"highSpeedMTU": -1}}, "spec.networking.highSpeedMTU",
        "greater than or equal to 0"),
    Bad("DPFOperatorConfig", {"provisioningController": {"bfbPVCName": "bfb-pvc", "dmsTimeout": 0}},
        "spec.provisioningController.dmsTimeout", "greater than or equal to 1"),
    Bad("DPFOperatorConfig", {"provisioningController": {"bfbPVCName": None}},
        "spec.provisioningController.bfbPVCName", "Required value"),
    Bad("DPFOperatorConfig", {"multus": {"image": "Registry.Example.com/Multus:v1 latest"}},
        "spec.multus.image", "should match"),
    Bad("DPFOperatorConfig", {"flannel": {"helmChart": "git://example.com/flannel"}}, "spec.flannel.helmChart",
        "should match"),
]


def manifest(kind: str, name: str, spec: dict[str, Any], metadata: dict[str, Any]) -> dict[str, Any]:
    model = kind_by_name(kind)
    return {"apiVersion": model.api_version_string(), "kind": kind, "metadata": {"name": name, **metadata},
            "spec": spec}


def test_every_kind_has_at_least_two_bad_cases() -> None:
    counts = {m.KIND: sum(1 for c in CASES if c.kind == m.KIND) for m in KINDS}
    assert {k: n for k, n in counts.items() if n < 2} == {}


@pytest.mark.parametrize("kind", sorted(VALID))
def test_the_valid_starting_point_is_accepted(api_kube: ControlPlane, kind: str) -> None:
    create(api_kube, "default", manifest(kind, "valid", VALID[kind], {}), dry_run=True)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_is_refused_naming_the_field(api_kube: ControlPlane, request: pytest.FixtureRequest,
                                               case: Bad) -> None:
    obj = manifest(case.kind, "bad", merged(VALID[case.kind], case.change), case.metadata)
    if case.update is None:
        namespace = "default"  # a dry run stores nothing
        group, version, plural = coords(obj)
        message = refusal(api(api_kube).create_namespaced_custom_object, group, version, namespace, plural, obj,
                          dry_run="All")
    else:
        namespace = request.getfixturevalue("namespace")
        create(api_kube, namespace, obj)
        message = refusal(patch, api_kube, namespace, case.kind, "bad", case.update, dry_run=True)
    assert f"{case.field}:" in message or f"{case.field} " in message, message
    assert case.says in message, message
