"""Kubelet serving certificates in DPU clusters: approve a DPU node's CSR once it is checked against the DPU.

A kubelet started with `serverTLSBootstrap` asks for its serving certificate with a CSR of signer
`kubernetes.io/kubelet-serving`; nothing in Kubernetes approves those (until then `kubectl logs/exec` to that
node fail). Approving one lets whoever holds the node's credentials serve TLS under the names it asks for, so we
approve only when all of these hold:
- the requester is `system:node:<name>` in group `system:nodes` (the kubelet's own client certificate);
- the CSR's subject is `CN=system:node:<name>, O=system:nodes`, its usages are serving ones, its signature valid;
- its DNS names are exactly the node name, its IP addresses among the Node's InternalIP/ExternalIP addresses
  (no e-mail or URI names);
- a DPU `<name>` exists in the host cluster, is not being deleted, and does not name another DPU cluster: a DPU
  we provisioned into this cluster.
Anything else is left alone, pending, never denied: a CSR that fails now may pass once its Node has its
addresses or its DPU appears, and a human may still approve it. Each refusal reason is logged once per CSR.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import logging
from collections.abc import Hashable, Iterable

from cryptography import x509
from cryptography.x509.oid import NameOID

from dpf.controller.clusters import Cluster
from dpf.controller.errors import TemporaryError
from dpf.controller.kube.informer import Informer
from dpf.controller.kube.rest import Kind, Obj
from dpf.controller.reconcilers.base import Reconciler
from dpf.controller.reconcilers.keys import ClusterObjectKey
from dpf.controller.reconcilers.kinds import DPU, NODE

log = logging.getLogger(__name__)

CSR = Kind("certificates.k8s.io", "v1", "certificatesigningrequests", "CertificateSigningRequest", namespaced=False)
KUBELET_SERVING = "kubernetes.io/kubelet-serving"
NODE_PREFIX = "system:node:"
NODES_GROUP = "system:nodes"
SERVING_USAGES = {"digital signature", "key encipherment", "server auth"}
APPROVED_REASON = "DPFDPUNodeServingCertificate"
REQUESTER_INDEX = "requester-node"


def requester_node(csr: Obj) -> str:
    """The node a CSR's requester claims to be ("" if the requester is not a node)."""
    username = (csr.get("spec") or {}).get("username") or ""
    return username.removeprefix(NODE_PREFIX) if username.startswith(NODE_PREFIX) else ""


def pending_serving(csr: Obj) -> bool:
    spec, status = csr.get("spec") or {}, csr.get("status") or {}
    return spec.get("signerName") == KUBELET_SERVING and not status.get("conditions") and not status.get("certificate")


def _cluster_of(dpu: Obj) -> str:
    cluster = (dpu.get("spec") or {}).get("cluster") or {}
    if not cluster.get("name"):
        return ""
    return f"{cluster.get('namespace') or dpu['metadata'].get('namespace', '')}/{cluster['name']}"


def refusal(csr: Obj, node: Obj | None, dpus: list[Obj], cluster: str) -> str:
    """Why the serving CSR must not be approved ("" when it may): the module docstring's checks, in order."""
    spec = csr.get("spec") or {}
    name = requester_node(csr)
    if not name or NODES_GROUP not in (spec.get("groups") or []):
        return f"requester {spec.get('username')!r} is not a node (system:node:<name> in group system:nodes)"
    usages = set(spec.get("usages") or [])
    if "server auth" not in usages or not usages <= SERVING_USAGES:
        return f"usages {sorted(usages)} are not those of a serving certificate"
    try:
        request = x509.load_pem_x509_csr(base64.b64decode(spec.get("request") or ""))
    except ValueError as exc:
        return f"request is not a PEM certificate request: {exc}"
    if not request.is_signature_valid:
        return "request signature is invalid"
    common = [a.value for a in request.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    orgs = [a.value for a in request.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    if common != [f"{NODE_PREFIX}{name}"] or orgs != [NODES_GROUP]:
        return f"subject {request.subject.rfc4514_string()} is not CN={NODE_PREFIX}{name},O={NODES_GROUP}"
    try:
        sans = request.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "request names no DNS name or IP address"
    dns = sans.get_values_for_type(x509.DNSName)
    ips = {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    if len(dns) + len(ips) != len(list(sans)):
        return "request names something other than DNS names and IP addresses"
    if any(d != name for d in dns):
        return f"DNS names {dns} are not the node name {name!r}"
    if node is None:
        return f"Node {name} does not exist"
    listed = (node.get("status") or {}).get("addresses") or []
    addresses = {ipaddress.ip_address(a["address"]).compressed for a in listed
                 if a.get("type") in ("InternalIP", "ExternalIP")}
    if not ips <= addresses:
        return f"IP addresses {sorted(ips - addresses)} are not addresses of Node {name} ({sorted(addresses)})"
    ours = [d for d in dpus if not d["metadata"].get("deletionTimestamp") and _cluster_of(d) in ("", cluster)]
    if not ours:
        if dpus:
            return f"DPU {name} is being deleted or belongs to another DPU cluster"
        return f"no DPU named {name} in the host cluster: not a DPU we provisioned"
    return ""


class CSRReconciler(Reconciler):
    name = "csr"
    kind = "CertificateSigningRequest"

    def setup(self) -> None:
        self.dpus: Informer = self.ctx.clusters.host.informer(DPU)
        self.dpus.add_handler(lambda _t, old, new: self._enqueue_node((new or old)["metadata"]["name"]))  # type: ignore[index]
        self.need_dpu_kind(CSR)
        self.need_dpu_kind(NODE)
        self.ctx.clusters.on_dpu_added(self._attach)
        self._logged: dict[tuple[str, str], str] = {}  # (cluster, CSR uid) -> the refusal last logged

    def _attach(self, cluster: Cluster) -> None:
        csrs = cluster.informer(CSR)
        csrs.add_index(REQUESTER_INDEX, lambda o: [n] if (n := requester_node(o)) else [])
        csrs.add_handler(lambda t, old, new: self._on_csr(cluster.name, t, old, new))
        cluster.informer(NODE).add_handler(
            lambda _t, old, new: self._enqueue_node((new or old)["metadata"]["name"], cluster))  # type: ignore[index]

    def _on_csr(self, cluster: str, type_: str, old: Obj | None, new: Obj | None) -> None:
        if type_ == "DELETED" and old is not None:
            self._logged.pop((cluster, old["metadata"].get("uid", "")), None)
        elif new is not None and pending_serving(new):
            self.ctx.queue.add(ClusterObjectKey(self.name, cluster, "", new["metadata"]["name"]))

    def _enqueue_node(self, node: str, only: Cluster | None = None) -> None:
        for cluster in [only] if only else list(self.ctx.clusters.dpu.values()):
            if not cluster.has(CSR):
                continue
            for csr in cluster.informer(CSR).by_index(REQUESTER_INDEX, node):
                if pending_serving(csr):
                    self.ctx.queue.add(ClusterObjectKey(self.name, cluster.name, "", csr["metadata"]["name"]))

    def all_keys(self) -> Iterable[Hashable]:
        return [ClusterObjectKey(self.name, cluster.name, "", csr["metadata"]["name"])
                for cluster, informer in self.ctx.clusters.dpu_informers(CSR)
                for csr in informer.list() if pending_serving(csr)]

    def synced(self) -> bool:
        return self.dpus.synced.is_set()

    async def reconcile(self, key: ClusterObjectKey) -> float | None:
        cluster = self.ctx.clusters.dpu.get(key.cluster)
        if cluster is None:
            return None
        if not (cluster.synced(self.dpu_kinds) and self.dpus.synced.is_set()):
            raise TemporaryError(f"caches of DPU cluster {key.cluster} or of DPUs not synced yet", delay=0.5)
        csr = cluster.informer(CSR).get("", key.name)
        if csr is None or not pending_serving(csr):
            return None
        node_name = requester_node(csr)
        node = cluster.informer(NODE).get("", node_name) if node_name else None
        dpus = [d for d in self.dpus.list() if d["metadata"]["name"] == node_name] if node_name else []
        reason = refusal(csr, node, dpus, key.cluster)
        uid = csr["metadata"].get("uid", "")
        if reason:
            if self._logged.get((key.cluster, uid)) != reason:
                self._logged[(key.cluster, uid)] = reason
                log.warning("DPU cluster %s: serving CSR %s left pending: %s", key.cluster, key.name, reason)
            return None
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        approval = {**csr, "status": {**(csr.get("status") or {}), "conditions": [{
            "type": "Approved", "status": "True", "reason": APPROVED_REASON, "lastUpdateTime": now,
            "message": f"kubelet serving certificate of DPU {node_name}, checked against its Node and DPU by DPF"}]}}
        await cluster.rest.replace(CSR, approval, subresource="approval")
        self._logged.pop((key.cluster, uid), None)
        log.info("DPU cluster %s: approved serving CSR %s of node %s", key.cluster, key.name, node_name)
        return None
