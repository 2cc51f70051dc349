"""Read DPUSets and DPUs from the host cluster for dpfctl, turning apiserver answers into errors a user can act on.

The kubeconfig is found as kubectl finds it: `--kubeconfig`, else the first existing file of `$KUBECONFIG`,
else `~/.kube/config`. The namespace defaults to the current context's, else "default".
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dpf.controller.kube import clients
from dpf.controller.kube.rest import Kind, KubeError, Rest

Obj = dict[str, Any]

GROUP, VERSION = "provisioning.dpu.nvidia.com", "v1alpha1"
DPU = Kind(GROUP, VERSION, "dpus", "DPU")
DPU_SET = Kind(GROUP, VERSION, "dpusets", "DPUSet")


class CtlError(Exception):
    """A failure explained for the user: printed as `dpfctl: <message>`, exit status 1."""


@dataclass(frozen=True)
class Target:
    kubeconfig: Path
    context: str | None
    namespace: str


def find_kubeconfig(flag: Path | None, environ: dict[str, str] | os._Environ[str] = os.environ) -> Path:
    if flag is not None:
        if not flag.is_file():
            raise CtlError(f"kubeconfig {flag} (--kubeconfig) does not exist or is not a file")
        return flag
    listed = [Path(p) for p in environ.get("KUBECONFIG", "").split(os.pathsep) if p]
    for path in listed:
        if path.is_file():
            return path
    if listed:
        raise CtlError(f"no kubeconfig: none of the files in $KUBECONFIG exists ({environ['KUBECONFIG']})")
    default = Path(environ.get("HOME", "~")).expanduser() / ".kube" / "config"
    if default.is_file():
        return default
    raise CtlError(f"no kubeconfig: pass --kubeconfig, set $KUBECONFIG, or create {default}")


def resolve(kubeconfig: Path | None, context: str | None, namespace: str | None) -> Target:
    path = find_kubeconfig(kubeconfig)
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise CtlError(f"kubeconfig {path} cannot be read: {exc}") from None
    if not isinstance(document, dict):
        raise CtlError(f"kubeconfig {path} is not a kubeconfig document")
    wanted = context or document.get("current-context") or ""
    contexts = {c.get("name"): c.get("context") or {} for c in document.get("contexts") or []}
    if wanted not in contexts:
        known = ", ".join(map(str, contexts)) or "none"
        if not wanted:
            raise CtlError(f"kubeconfig {path} sets no current-context: pass --context (its contexts: {known})")
        raise CtlError(f"kubeconfig {path} has no context {wanted!r} (its contexts: {known})")
    return Target(path, context, namespace or contexts[wanted].get("namespace") or "default")


async def connect(target: Target) -> Rest:
    from kubernetes_asyncio import config as kconfig

    try:
        if target.context is None:
            return await clients.from_kubeconfig_file(target.kubeconfig, "host", request_timeout=15.0)
        # clients.from_kubeconfig_file has no context argument; the same calls with one.
        from kubernetes_asyncio.client import ApiClient, Configuration

        configuration = Configuration()
        await kconfig.load_kube_config(config_file=str(target.kubeconfig), context=target.context,
                                       client_configuration=configuration)
        return Rest(ApiClient(configuration), "host", 15.0)
    except (kconfig.ConfigException, OSError, ValueError) as exc:
        raise CtlError(f"kubeconfig {target.kubeconfig}: {exc}") from None


async def list_objects(rest: Rest, kind: Kind, namespace: str | None) -> list[Obj]:
    """Every object of `kind` in `namespace` (None: all namespaces)."""
    try:
        return list((await rest.list(kind, namespace))["items"])
    except KubeError as exc:
        raise explain(exc, f"list {kind.plural}.{kind.group}", namespace) from None


async def get_object(rest: Rest, kind: Kind, name: str, namespace: str) -> Obj:
    try:
        found = await rest.get(kind, name, namespace)
    except KubeError as exc:
        raise explain(exc, f"get {kind.plural}.{kind.group} {name}", namespace) from None
    if found is None:
        await list_objects(rest, kind, namespace)  # tells "CRD not installed" from "no such object"
        raise CtlError(f"{kind.kind} {namespace}/{name} not found")
    return found


def explain(exc: KubeError, what: str, namespace: str | None) -> CtlError:
    scope = f"in namespace {namespace}" if namespace else "in all namespaces"
    if exc.status == 0:
        return CtlError(f"cannot reach the apiserver: {exc.message}")
    if exc.status == 401:
        return CtlError(f"the apiserver refused the kubeconfig's credentials (401 Unauthorized): {exc.message}")
    if exc.status == 403:
        return CtlError(f"forbidden: you may not {what} {scope} (ask for a Role granting get/list on "
                        f"dpus and dpusets.{GROUP}): {exc.message}")
    if exc.not_found:
        return CtlError(f"the DPF CRDs are not installed in this cluster ({what}: the API {GROUP}/{VERSION} "
                        "was not found); install them with `kubectl apply --server-side -k packaging/crds`")
    return CtlError(f"{what} {scope}: {exc}")
