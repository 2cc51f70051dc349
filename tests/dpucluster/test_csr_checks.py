"""The serving-CSR checks on their own: each forged or mismatched request is refused with a reason naming what
is wrong, and the kubelet's genuine request (CN/O of the node, its name and addresses, serving usages) passes."""

from __future__ import annotations

import base64
import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dpf.controller.kube.rest import Obj
from dpf.controller.reconcilers.csr import refusal

CLUSTER = "dpf-system/dpu"
NODE_IP = "172.20.0.11"


def _csr(cn: str = "system:node:dpu-a", org: str = "system:nodes", dns: tuple[str, ...] = ("dpu-a",),
         ips: tuple[str, ...] = (NODE_IP,), username: str = "system:node:dpu-a",
         usages: tuple[str, ...] = ("digital signature", "server auth"), email: str = "") -> Obj:
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    if email:
        names.append(x509.RFC822Name(email))
    request = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
                                        x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
               .add_extension(x509.SubjectAlternativeName(names), critical=False)
               .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256()))
    pem = request.public_bytes(serialization.Encoding.PEM)
    return {"metadata": {"name": "csr-1", "uid": "u1"},
            "spec": {"signerName": "kubernetes.io/kubelet-serving", "username": username,
                     "groups": ["system:nodes", "system:authenticated"], "usages": list(usages),
                     "request": base64.b64encode(pem).decode()}}


def _node(ip: str = NODE_IP) -> Obj:
    return {"metadata": {"name": "dpu-a"}, "status": {"addresses": [
        {"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": "dpu-a"}]}}


def _dpu(cluster: str | None = "dpu", deleting: bool = False) -> Obj:
    meta: Obj = {"name": "dpu-a", "namespace": "dpf-system"}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-04T20:00:00Z"
    return {"metadata": meta, "spec": {"cluster": {"name": cluster} if cluster else {}}}


def test_the_kubelets_request_for_a_dpu_of_ours_passes() -> None:
    assert refusal(_csr(), _node(), [_dpu()], CLUSTER) == ""
    assert refusal(_csr(), _node(), [_dpu(cluster=None)], CLUSTER) == ""  # not allocated yet: any cluster


@pytest.mark.parametrize(("csr", "node", "dpus", "reason"), [
    (_csr(username="system:bootstrap:abcdef"), _node(), [_dpu()], "is not a node"),
    (_csr(usages=("digital signature", "client auth")), _node(), [_dpu()], "not those of a serving"),
    (_csr(cn="system:node:dpu-b"), _node(), [_dpu()], "is not CN=system:node:dpu-a"),
    (_csr(org="system:masters"), _node(), [_dpu()], "is not CN=system:node:dpu-a,O=system:nodes"),
    (_csr(dns=("dpu-a", "kubernetes.default")), _node(), [_dpu()], "are not the node name"),
    (_csr(ips=(NODE_IP, "10.96.0.1")), _node(), [_dpu()], "['10.96.0.1'] are not addresses of Node dpu-a"),
    (_csr(email="x@example.com"), _node(), [_dpu()], "other than DNS names and IP addresses"),
    (_csr(), None, [_dpu()], "Node dpu-a does not exist"),
    (_csr(), _node(), [], "no DPU named dpu-a in the host cluster"),
    (_csr(), _node(), [_dpu(cluster="other")], "belongs to another DPU cluster"),
    (_csr(), _node(), [_dpu(deleting=True)], "is being deleted"),
])
def test_a_mismatched_request_is_refused_naming_why(csr: Obj, node: Obj | None, dpus: list[Obj],
                                                    reason: str) -> None:
    assert reason in refusal(csr, node, dpus, CLUSTER)
