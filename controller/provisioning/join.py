"""The join material a DPU boots with: a bootstrap token in the DPU cluster and the `kubeadm join` command.

As `kubeadm token create --print-join-command` does: a Secret `kube-system/bootstrap-token-<id>` (type
`bootstrap.kubernetes.io/token`, usable for authentication and for signing `cluster-info`, in kubeadm's node
group, expiring after `ttl_seconds`: the token cleaner deletes it then) and the command carrying the token and
the pin of the cluster CA's public key, which the joining node checks `cluster-info` against.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import string
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from dpf.controller.kube.rest import SECRET, KubeError, Rest

NODE_BOOTSTRAP_GROUP = "system:bootstrappers:kubeadm:default-node-token"
TOKEN_TYPE = "bootstrap.kubernetes.io/token"
_ALPHABET = string.ascii_lowercase + string.digits
_ATTEMPTS = 5  # a token id already taken (36^6 of them) is retried with a new one


def ca_cert_hash(ca_pem: bytes) -> str:
    """`sha256:<hex>` of the CA certificate's DER SubjectPublicKeyInfo (kubeadm's discovery pin)."""
    spki = x509.load_pem_x509_certificate(ca_pem).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def _endpoint(server: str) -> str:
    """`host:port` of an apiserver URL (or of a bare `host:port`), as kubeadm join takes it."""
    parts = urlsplit(server if "://" in server else f"https://{server}")
    if not parts.hostname:
        raise ValueError(f"no host in DPU cluster server address {server!r}")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{parts.port or 443}"


def _random(length: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


async def join_command(rest: Rest, server: str, ca_pem: bytes, ttl_seconds: int = 3600) -> str:
    """Create a bootstrap token in the DPU cluster `rest` talks to; return the `kubeadm join` command using it."""
    endpoint, pin = _endpoint(server), ca_cert_hash(ca_pem)
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=ttl_seconds)
    for attempt in range(_ATTEMPTS):
        token_id, token_secret = _random(6), _random(16)
        secret = {
            "apiVersion": "v1", "kind": "Secret", "type": TOKEN_TYPE,
            "metadata": {"name": f"bootstrap-token-{token_id}", "namespace": "kube-system"},
            "stringData": {
                "token-id": token_id, "token-secret": token_secret,
                "expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "usage-bootstrap-authentication": "true", "usage-bootstrap-signing": "true",
                "auth-extra-groups": NODE_BOOTSTRAP_GROUP,
                "description": "DPF: join of a provisioned DPU",
            },
        }
        try:
            await rest.create(SECRET, secret, "kube-system")
        except KubeError as exc:
            if exc.conflict and attempt + 1 < _ATTEMPTS:
                continue
            raise
        return (f"kubeadm join {endpoint} --token {token_id}.{token_secret} "
                f"--discovery-token-ca-cert-hash {pin} --v=5")
    raise AssertionError("unreachable: the last attempt returns or raises")
