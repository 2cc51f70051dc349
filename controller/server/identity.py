"""Node identity from the peer's client certificate (never from the request body).

grpc has already verified the chain against our CA (require_client_auth); here we read who it is:
CN = node name, O must be "dpf:agents", OU = role, and the certificate must allow clientAuth.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dpf.controller.pki import AGENT_ORG, ROLES


class IdentityError(Exception):
    """The peer's certificate does not name an agent; the message says why."""


@dataclass(frozen=True)
class NodeIdentity:
    node: str
    role: str  # "host" | "dpu"


def _attr(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> list[str]:
    return [str(a.value) for a in cert.subject.get_attributes_for_oid(oid)]


def from_pem(pem: bytes) -> NodeIdentity:
    cert = x509.load_pem_x509_certificate(pem)
    if AGENT_ORG not in _attr(cert, NameOID.ORGANIZATION_NAME):
        raise IdentityError(f"client certificate {cert.subject.rfc4514_string()} is not an agent certificate "
                            f"(O={AGENT_ORG} missing); issue one with `dpf controller issue-node-cert`")
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usages = None
    if usages is None or ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
        raise IdentityError(f"client certificate {cert.subject.rfc4514_string()} does not allow clientAuth")
    names, roles = _attr(cert, NameOID.COMMON_NAME), _attr(cert, NameOID.ORGANIZATIONAL_UNIT_NAME)
    if len(names) != 1 or not names[0]:
        raise IdentityError("client certificate must carry exactly one CN (the node name)")
    if len(roles) != 1 or roles[0] not in ROLES:
        raise IdentityError(f"client certificate OU must be one of {', '.join(ROLES)} (the agent role)")
    return NodeIdentity(names[0], roles[0])


def from_auth_context(auth: dict[str, list[bytes]]) -> NodeIdentity:
    """Identity from grpc's `context.auth_context()`; IdentityError if there is no usable certificate."""
    pems = auth.get("x509_pem_cert") or []
    if not pems:
        raise IdentityError("no client certificate presented")
    return from_pem(pems[0])
