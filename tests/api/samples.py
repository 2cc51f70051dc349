"""One fully populated object per kind (spec and status), for the round-trip test.

Written in wire form and parsed by the models, so every optional struct, map, int-or-string, quantity
and timestamp is exercised.
"""

from __future__ import annotations

from typing import Any

from dpf.controller.api import KINDS, Resource

T0 = "2026-01-02T03:04:05Z"
LABELS = {"app": "dpf", "dpu.nvidia.com/cluster": "c1"}
SELECTOR = {"matchLabels": {"feature.node.kubernetes.io/dpu-enabled": "true"},
            "matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]}]}
NODE_SELECTOR = {"nodeSelectorTerms": [{"matchExpressions": [{"key": "role", "operator": "Exists"}],
                                        "matchFields": [{"key": "metadata.name", "operator": "In",
                                                         "values": ["w1"]}]}]}


def condition(type_: str, status: str = "True", reason: str = "Success") -> dict[str, Any]:
    return {"type": type_, "status": status, "observedGeneration": 1, "lastTransitionTime": T0,
            "reason": reason, "message": "" if status == "True" else f"{type_} is waiting"}


def svc_status(model: type[Resource], **extra: Any) -> dict[str, Any]:
    conds = [condition(t) if i % 2 else condition(t, "False", "Pending") for i, t in
             enumerate(model.CONDITION_TYPES)]
    return {"conditions": conds, "observedGeneration": 1, **extra}


INTERFACE_SPEC = {"node": "dpu-1", "interfaceType": "vf",
                  "vf": {"vfID": 2, "pfID": 0, "parentInterfaceRef": "pf0"},
                  "vlan": {"vlanID": 100, "parentInterfaceRef": "p0"}, "pf": {"pfID": 1},
                  "physical": {"interfaceName": "p0"},
                  "service": {"serviceID": "hbn", "network": "ns/mybrhbn", "interfaceName": "p0_if"}}
IPAM = {"matchLabels": {"svc.dpu.nvidia.com/pool": "pool1"}, "defaultGateway": True, "setDefaultRoute": False}
CHAIN_SPEC = {"node": "dpu-1", "switches": [
    {"ports": [{"serviceInterface": {"matchLabels": {"uplink": "p0"}, "ipam": IPAM}},
               {"serviceInterface": {"matchLabels": {"svc.dpu.nvidia.com/interface": "p0_sf"}}}]},
    {"ports": [{"serviceInterface": {"matchLabels": {"uplink": "p1"}}}]}]}
META = {"labels": LABELS, "annotations": {"note": "x"}}
SOURCE = {"repoURL": "oci://ghcr.io/nvidia", "path": "charts/x", "version": "v24.10.0", "chart": "ovn",
          "releaseName": "ovn-dpu"}
VALUES = {"tags": {"ovnkube-node-dpu": True}, "resources": {"memory": "6Gi", "nvidia.com/bf_sf": 3},
          "list": [1, "two", {"three": None}], "ratio": 0.5}
NODE_EFFECT = {"taint": {"key": "dpu", "value": "provisioning", "effect": "NoSchedule", "timeAdded": T0}}

SPECS: dict[str, dict[str, Any]] = {
    "BFB": {"spec": {"url": "https://example.com/bf-bundle-2.9.1.bfb", "fileName": "my-bundle.bfb"},
            "status": {"phase": "Downloading"}},
    "DPU": {"spec": {"nodeName": "worker1", "bfb": "bf-bundle", "pciAddress": "0000-08-00",
                     "nodeEffect": NODE_EFFECT,
                     "cluster": {"name": "c1", "namespace": "dpu-cplane", "nodeLabels": LABELS},
                     "dpuFlavor": "hbn", "automaticNodeReboot": False},
            "status": {"phase": "DMS Deployment", "conditions": [condition("Initialized"),
                                                                 condition("DMSRunning", "False", "DMSRunning")],
                       "bfbVersion": "2.9.1", "pciDevice": "0000:08:00.0", "requiredReset": True,
                       "firmware": {"bmc": "1", "nic": "2", "uefi": "3"}}},
    "DPUSet": {"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "10%"}},
                        "nodeSelector": SELECTOR,
                        "dpuSelector": {"feature.node.kubernetes.io/dpu-0-pci-address": "0000-08-00"},
                        "dpuTemplate": {"annotations": {"provisioning.dpu.nvidia.com/host-power-cycle-required":
                                                        "false"},
                                        "spec": {"bfb": {"name": "bf-bundle"}, "nodeEffect": {"customLabel": LABELS},
                                                 "cluster": {"nodeLabels": LABELS}, "dpuFlavor": "hbn",
                                                 "automaticNodeReboot": True}}},
               "status": {"dpuStatistics": {"Ready": 3, "OS Installing": 1}}},
    "DPUFlavor": {"spec": {"grub": {"kernelParameters": ["hugepages=3072"]},
                           "sysctl": {"parameters": ["net.ipv4.ip_forward=1"]},
                           "nvconfig": [{"device": "*", "parameters": ["PF_TOTAL_SF=20"],
                                         "hostPowerCycleRequired": False}],
                           "ovs": {"rawConfigScript": "ovs-vsctl add-br br-sfc\n"},
                           "bfcfgParameters": ["UPDATE_DPU_OS=yes"],
                           "configFiles": [{"path": "/etc/x.conf", "operation": "append", "raw": "a=1\n",
                                            "permissions": "0644"}],
                           "containerdConfig": {"registryEndpoint": "https://registry.example.com"},
                           "dpuResources": {"cpu": 16, "memory": "32Gi", "nvidia.com/sf": "500m"},
                           "systemReservedResources": {"cpu": "1500m", "memory": "4Gi"}}},
    "DPUCluster": {"spec": {"type": "nvidia/static-plus", "maxNodes": 10, "version": "v1.30.2",
                            "kubeconfig": "c1-admin-kubeconfig",
                            "clusterEndpoint": {"keepalived": {"vip": "10.0.110.200", "virtualRouterID": 126,
                                                               "interface": "eno1",
                                                               "nodeSelector": {"node-role": ""}}}},
                   "status": {"phase": "Ready", "conditions": [condition("Created"), condition("Ready")]}},
    "DPUService": {"spec": {"helmChart": {"source": SOURCE, "values": VALUES}, "serviceID": "hbn",
                            "serviceDaemonSet": {"nodeSelector": NODE_SELECTOR,
                                                 "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {
                                                     "maxUnavailable": 1, "maxSurge": "25%"}},
                                                 "labels": LABELS, "annotations": {"a": "b"}},
                            "deployInCluster": False, "interfaces": ["p0-sf", "p1-sf"], "paused": True}},
    "DPUDeployment": {"spec": {"dpus": {"bfb": "bf-bundle", "flavor": "hbn", "dpuSets": [
        {"nameSuffix": "dpuset1", "nodeSelector": SELECTOR, "dpuSelector": {"a": "b"}, "dpuAnnotations": {"c": "d"}}]},
        "services": {"hbn": {"serviceTemplate": "hbn", "serviceConfiguration": "hbn"}},
        "serviceChains": [{"ports": [{"service": {"name": "hbn", "interface": "p0_if", "ipam": IPAM}},
                                     {"serviceInterface": {"matchLabels": {"uplink": "p0"}, "ipam": IPAM}}]}]}},
    "DPUServiceTemplate": {"spec": {"deploymentServiceName": "hbn", "helmChart": {"source": SOURCE, "values": VALUES},
                                    "resourceRequirements": {"memory": "6Gi", "nvidia.com/bf_sf": 3}}},
    "DPUServiceConfiguration": {"spec": {"deploymentServiceName": "hbn", "serviceConfiguration": {
        "helmChart": {"values": VALUES}, "serviceDaemonSet": {"labels": LABELS, "annotations": {"a": "b"}},
        "deployInCluster": True}, "interfaces": [{"name": "p0_if", "network": "mybrhbn"}]}},
    "DPUServiceCredentialRequest": {
        "spec": {"serviceAccount": {"name": "ovn-dpu", "namespace": "ns"}, "duration": "24h30m",
                 "targetCluster": {"name": "c1", "namespace": "dpu-cplane"}, "type": "kubeconfig",
                 "secret": {"name": "ovn-dpu", "namespace": "ns"}, "metadata": META},
        "status": None},  # filled in below (needs the model)
    "DPUServiceInterface": {"spec": {"clusterSelector": SELECTOR, "template": {"metadata": META, "spec": {
        "nodeSelector": SELECTOR, "template": {"metadata": META, "spec": INTERFACE_SPEC}}}}},
    "ServiceInterfaceSet": {"spec": {"nodeSelector": SELECTOR, "template": {"metadata": META, "spec": INTERFACE_SPEC}}},
    "ServiceInterface": {"spec": INTERFACE_SPEC},
    "DPUServiceChain": {"spec": {"clusterSelector": SELECTOR, "template": {"metadata": META, "spec": {
        "nodeSelector": SELECTOR, "template": {"metadata": META, "spec": CHAIN_SPEC}}}}},
    "ServiceChainSet": {"spec": {"nodeSelector": SELECTOR, "template": {"metadata": META, "spec": CHAIN_SPEC}}},
    "ServiceChain": {"spec": CHAIN_SPEC},
    "DPUServiceIPAM": {"spec": {"metadata": META, "ipv4Network": {
        "network": "10.0.120.0/22", "prefixSize": 29, "gatewayIndex": 3, "exclusions": ["10.0.120.1"],
        "allocations": {"worker1": "10.0.121.0/29"}, "defaultGateway": True, "routes": [{"dst": "10.1.0.0/16"}]},
        "clusterSelector": SELECTOR, "nodeSelector": NODE_SELECTOR}},
    "DPUServiceNAD": {"spec": {"metadata": META, "resourceType": "sf", "bridge": "br-sfc", "mtu": 1500,
                               "ipam": True}},
    "DPFOperatorConfig": {"spec": {
        "overrides": {"paused": False}, "networking": {"controlPlaneMTU": 1450, "highSpeedMTU": 9000},
        "imagePullSecrets": ["dpf-pull-secret"],
        "provisioningController": {"disable": False, "image": "nvcr.io/nvidia/doca/provisioning:v24.10.0",
                                   "bfbPVCName": "bfb-pvc", "dmsTimeout": 900},
        "dpuServiceController": {"image": "ghcr.io/nvidia/dpuservice@sha256:" + "a" * 64},
        "serviceSetController": {"helmChart": "oci://ghcr.io/nvidia/dpu-networking"},
        "dpuDetector": {"disable": True, "collectors": {"psID": True}},
        "multus": {"image": "localhost:5000/multus:v4"}, "sriovDevicePlugin": {"disable": True},
        "flannel": {"helmChart": "https://helm.example.com/flannel"}, "ovsCNI": {"disable": False},
        "nvipam": {"image": "nvipam"}, "sfcController": {"image": "sfc:dev"},
        "kamajiClusterManager": {"disable": False}, "staticClusterManager": {"disable": True},
        "ovsHelper": {"image": "ovs-helper:1"}}},
}


def samples() -> list[Resource]:
    out = []
    for model in KINDS:
        wire = dict(SPECS[model.KIND])
        if "status" in model.model_fields and wire.get("status") is None:
            extra = {"serviceAccount": "ns/ovn-dpu", "targetCluster": "dpu-cplane/c1",
                     "expirationTimestamp": T0, "issuedAt": T0, "secret": "ns/ovn-dpu"} \
                if model.KIND == "DPUServiceCredentialRequest" else {}
            wire["status"] = svc_status(model, **extra) if model.CONDITION_TYPES else {}
        wire = {k: v for k, v in wire.items() if v is not None}
        out.append(model.model_validate({"metadata": {"name": f"rt-{model.KIND.lower()}", "labels": LABELS,
                                                      "annotations": {"a": "b"}}, **wire}))
    return out
