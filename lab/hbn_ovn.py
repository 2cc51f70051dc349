"""What the lab adds for upstream's hbn_ovn use case (05.2, the DPUDeployment flow) to apply unchanged on emulated
DPUs: the parts upstream's operator installs itself, and the places its charts come from.

- Charts: the lab's stand-ins (`charts/`) under upstream's names and versions. `doca-hbn`, `doca-telemetry` and
  `doca-blueman` are served by the lab's http chart repository (`bed/chart_repo.py`), the controller's mirror of
  `https://helm.ngc.nvidia.com/nvidia/doca`; `ovn-kubernetes-chart` is pushed with `helm push` to the lab's OCI
  registry (`bed/oci_registry.py`), the mirror of `oci://ghcr.io/nvidia`. `mirrors()` gives the controller's
  `--chart-mirror` pairs and `ca_bundle()` the one SSL_CERT_FILE its Helm trusts both with.
- The built-in DPUFlavor `dpf-provisioning-hbn-ovn` (`manifests/hbn_ovn_flavor.yaml`, upstream's spec), whose OVS
  script gives every DPU br-ovn, the bridge the `ovn` DPUServiceInterface patches to br-sfc.
- The DPU cluster's system NADs upstream's operator deploys (its multus chart): `mybrhbn`, the network of HBN's
  interfaces, and `iprequest`, through which HBN's pods only fetch addresses from DPUServiceIPAM pools
  (`system_nads()`).
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from dpf.lab import chains
from dpf.lab.bed.chart_repo import ChartRepo
from dpf.lab.bed.oci_registry import OciRegistry
from dpf.lab.dpus import CNI_PLUGIN

CHARTS = Path(__file__).resolve().parent / "charts"
HTTP_REPO = "https://helm.ngc.nvidia.com/nvidia/doca"
"""Upstream's repository of doca-hbn, doca-telemetry and doca-blueman (05.2's templates); unreachable here."""
OCI_REPO = "oci://ghcr.io/nvidia"
"""Upstream's registry of ovn-kubernetes-chart (05.2's dpuservicetemplate_ovn.yaml); unreachable here."""
OCI_CHARTS = ("ovn-kubernetes-chart",)
OCI_PATH = "nvidia"
"""Where the lab's registry holds the OCI charts (oci://<registry>/nvidia/<chart>)."""
IPAM_PLUGIN = "dpf-ipam"
"""The DPU agent's IPAM as a CNI plugin of its own: the same binary as CNI_PLUGIN, called by its name."""
IPREQUEST_BRIDGE = "iprequest"


def http_charts() -> list[Path]:
    """The stand-in charts the http chart repository serves (every chart but the OCI ones)."""
    return sorted(p.parent for p in CHARTS.glob("*/Chart.yaml") if p.parent.name not in OCI_CHARTS)


def oci_charts() -> list[Path]:
    return [CHARTS / name for name in OCI_CHARTS]


def push_oci_charts(registry: OciRegistry, helm: str) -> None:
    for chart in oci_charts():
        registry.push_chart(helm, chart, OCI_PATH)


def mirrors(charts: ChartRepo, registry: OciRegistry) -> tuple[tuple[str, str], ...]:
    """The controller's `--chart-mirror` pairs: upstream's repositories onto the lab's."""
    return ((HTTP_REPO, charts.url), (OCI_REPO, registry.url(OCI_PATH)))


def ca_bundle(path: Path, charts: ChartRepo, registry: OciRegistry) -> Path:
    """One CA file for SSL_CERT_FILE (it names a single file): the chart repository's CA and the registry's."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(ca.read_text() for ca in (charts.ca_file, registry.ca_file)))
    return path


def flavor(namespace: str) -> chains.Obj:
    doc = yaml.safe_load((chains.MANIFESTS / "hbn_ovn_flavor.yaml").read_text())
    doc["metadata"]["namespace"] = namespace
    return dict(doc)


def system_nads(namespace: str) -> list[chains.Obj]:
    """The DPU cluster's NADs hbn_ovn's HBN names.

    `mybrhbn`: upstream's is ovs-cni on br-hbn with SF representors, and a patch pair per port to br-sfc; our
    plugin plugs veths on br-sfc directly (no br-hbn patch ports, as `hbn_only.yaml` says), so the chains reach
    the same port. `iprequest`: upstream's is the `dummy` plugin with nv-ipam, used only to fetch addresses (HBN
    configures them itself); Debian's plugins have no `dummy`, so the standard `bridge` plugin (on a bridge of its
    own, no gateway, no masquerade) carries the interface and the DPU agent's IPAM (`dpf-ipam`, nv-ipam's
    cni-args poolNames/poolType/allocateDefaultGateway) gives the address, from the DPUServiceIPAM pools."""
    hbn = {"cniVersion": "1.0.0", "name": "mybrhbn", "type": CNI_PLUGIN, "bridge": "br-sfc"}
    iprequest = {"cniVersion": "1.0.0", "name": "iprequest", "type": "bridge", "bridge": IPREQUEST_BRIDGE,
                 "isGateway": False, "ipMasq": False, "ipam": {"type": IPAM_PLUGIN}}
    return [{"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
             "metadata": {"name": config["name"], "namespace": namespace}, "spec": {"config": json.dumps(config)}}
            for config in (hbn, iprequest)]
