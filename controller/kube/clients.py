"""Build cluster clients: the host cluster from a kubeconfig file (or in-cluster), and a DPU cluster from the
`admin.conf` kubeconfig in the Secret a DPUCluster names (upstream's static cluster manager).

We use kubernetes_asyncio: the controller is asyncio throughout, and its ApiClient gives non-blocking,
cancellable watches with the official client's configuration handling (kubeconfig, exec/token auth, TLS);
the sync `kubernetes` package would need a thread per watch that cannot be cancelled cleanly.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import yaml
from kubernetes_asyncio import config as kconfig
from kubernetes_asyncio.client import ApiClient, Configuration

from dpf.controller.kube.rest import Rest


async def from_kubeconfig_file(path: Path | None, name: str = "host", request_timeout: float = 30.0,
                               pool_size: int = 100) -> Rest:
    configuration = Configuration()
    if path is None:
        kconfig.load_incluster_config(client_configuration=configuration)
    else:
        await kconfig.load_kube_config(config_file=str(path), client_configuration=configuration)
    configuration.connection_pool_maxsize = pool_size
    return Rest(ApiClient(configuration), name, request_timeout)


class KubeconfigError(ValueError):
    """A DPUCluster kubeconfig Secret that cannot be used; the message names the Secret and the fix."""


def parse_admin_conf(secret: dict[str, Any]) -> dict[str, Any]:
    """The kubeconfig dict in a DPUCluster Secret's `admin.conf` key (exactly one cluster and one user)."""
    where = f"Secret {secret['metadata'].get('namespace')}/{secret['metadata']['name']}"
    raw = (secret.get("data") or {}).get("admin.conf")
    if not raw:
        raise KubeconfigError(f"{where} has no data key 'admin.conf'; put the DPU cluster's kubeconfig there")
    try:
        document = yaml.safe_load(base64.b64decode(raw))
    except (ValueError, yaml.YAMLError) as exc:
        raise KubeconfigError(f"{where} key 'admin.conf' is not a kubeconfig: {exc}") from None
    if not isinstance(document, dict):
        raise KubeconfigError(f"{where} key 'admin.conf' is not a kubeconfig document")
    clusters, users = document.get("clusters") or [], document.get("users") or []
    if len(clusters) != 1 or len(users) != 1:
        raise KubeconfigError(f"{where} key 'admin.conf' must hold exactly one cluster and one user "
                              f"(has {len(clusters)} clusters, {len(users)} users)")
    return document


async def from_kubeconfig_dict(document: dict[str, Any], name: str, request_timeout: float = 30.0) -> Rest:
    configuration = Configuration()
    await kconfig.load_kube_config_from_dict(document, client_configuration=configuration)
    return Rest(ApiClient(configuration), name, request_timeout)
