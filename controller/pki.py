"""The controller's certificate authority for NodeState mTLS, kept in a Secret and generated if absent.

Agents authenticate with pre-provisioned files (`dpf controller issue-node-cert` writes ca.crt, tls.crt,
tls.key for one node). The node identity is the certificate's: CN = node name, O = "dpf:agents",
OU = role ("host" | "dpu"), extended key usage clientAuth. Each controller replica issues itself a fresh
server certificate from the CA at start-up (O = "dpf:controllers", serverAuth only), so a controller
certificate can never pass as an agent's.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dpf.controller.kube.rest import SECRET, KubeError, Rest

AGENT_ORG = "dpf:agents"
CONTROLLER_ORG = "dpf:controllers"
ROLES = ("host", "dpu")


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@dataclass(frozen=True)
class KeyPair:
    cert_pem: bytes
    key_pem: bytes


class CertificateAuthority:
    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.cert = cert
        self.key = key

    @classmethod
    def generate(cls, common_name: str = "dpf-controller-ca", validity_days: int = 3650) -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = dt.datetime.now(dt.UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=validity_days))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False,
                                             encipher_only=False, decipher_only=False), critical=True)
                .sign(key, hashes.SHA256()))
        return cls(cert, key)

    @classmethod
    def from_pem(cls, cert_pem: bytes, key_pem: bytes) -> CertificateAuthority:
        key = serialization.load_pem_private_key(key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("CA key must be an EC private key")
        return cls(x509.load_pem_x509_certificate(cert_pem), key)

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def _issue(self, subject: x509.Name, usage: x509.ObjectIdentifier, sans: list[x509.GeneralName],
               validity_days: int) -> KeyPair:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(self.cert.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(minutes=5))
                   .not_valid_after(now + dt.timedelta(days=validity_days))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))

    def issue_node(self, node: str, role: str, validity_days: int = 365) -> KeyPair:
        """A client certificate that identifies `node` (its agent of `role`) to the NodeState server."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        if not node or "/" in node:
            raise ValueError(f"node name {node!r} is not a valid Kubernetes node name")
        subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, AGENT_ORG),
                             x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
                             x509.NameAttribute(NameOID.COMMON_NAME, node)])
        return self._issue(subject, ExtendedKeyUsageOID.CLIENT_AUTH, [x509.DNSName(node)], validity_days)

    def issue_server(self, names: tuple[str, ...], common_name: str = "dpf-controller",
                     validity_days: int = 365) -> KeyPair:
        sans: list[x509.GeneralName] = []
        for name in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                sans.append(x509.DNSName(name))
        subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, CONTROLLER_ORG),
                             x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        return self._issue(subject, ExtendedKeyUsageOID.SERVER_AUTH, sans, validity_days)


def write_agent_files(out: Path, ca: CertificateAuthority, pair: KeyPair) -> None:
    """An agent's pre-provisioned files in `out`: ca.crt, tls.crt and tls.key (mode 0600 before the key is in it)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "ca.crt").write_bytes(ca.cert_pem)
    (out / "tls.crt").write_bytes(pair.cert_pem)
    key = out / "tls.key"
    key.touch(mode=0o600)
    key.chmod(0o600)
    key.write_bytes(pair.key_pem)


async def ensure_ca(rest: Rest, namespace: str, name: str) -> CertificateAuthority:
    """The CA in Secret namespace/name (type kubernetes.io/tls); created if absent. Safe with two replicas:
    the loser of a create race reads the winner's CA."""
    for _ in range(3):
        secret = await rest.get(SECRET, name, namespace)
        if secret is not None:
            data = secret.get("data") or {}
            if "tls.crt" not in data or "tls.key" not in data:
                raise ValueError(f"Secret {namespace}/{name} lacks tls.crt/tls.key; delete it to have a new CA made")
            return CertificateAuthority.from_pem(base64.b64decode(data["tls.crt"]), base64.b64decode(data["tls.key"]))
        ca = CertificateAuthority.generate()
        body = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                "metadata": {"name": name, "namespace": namespace,
                             "labels": {"app.kubernetes.io/managed-by": "dpf-controller"}},
                "data": {"tls.crt": base64.b64encode(ca.cert_pem).decode(),
                         "tls.key": base64.b64encode(_key_pem(ca.key)).decode()}}
        try:
            await rest.create(SECRET, body, namespace)
            return ca
        except KubeError as exc:
            if not exc.conflict:
                raise
    raise RuntimeError(f"could not create or read the CA Secret {namespace}/{name}")
