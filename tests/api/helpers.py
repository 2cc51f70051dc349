"""Talk to the bed's real kube-apiserver about DPF objects (create, dry-run, patch, read the refusal)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from dpf.controller.api import kind_by_name
from dpf.lab.bed.kube import ControlPlane

EXAMPLES = Path(__file__).parents[2] / "lab" / "manifests" / "upstream"
UPSTREAM_NAMESPACES = ("dpf-operator-system", "dpu-cplane-tenant1")


def coords(obj: dict[str, Any]) -> tuple[str, str, str]:
    model = kind_by_name(obj["kind"])
    return model.GROUP, model.VERSION, model.PLURAL


def api(kube: ControlPlane) -> k8s.CustomObjectsApi:
    return k8s.CustomObjectsApi(kube.client)


def create(kube: ControlPlane, namespace: str, obj: dict[str, Any], *, dry_run: bool = False) -> dict[str, Any]:
    group, version, plural = coords(obj)
    return api(kube).create_namespaced_custom_object(group, version, namespace, plural, obj,
                                                     dry_run="All" if dry_run else None)


def get(kube: ControlPlane, namespace: str, kind: str, name: str) -> dict[str, Any]:
    model = kind_by_name(kind)
    return api(kube).get_namespaced_custom_object(model.GROUP, model.VERSION, namespace, model.PLURAL, name)


def patch(kube: ControlPlane, namespace: str, kind: str, name: str, body: dict[str, Any], *,
          status: bool = False, dry_run: bool = False) -> dict[str, Any]:
    model = kind_by_name(kind)
    call = (api(kube).patch_namespaced_custom_object_status if status
            else api(kube).patch_namespaced_custom_object)
    return call(model.GROUP, model.VERSION, namespace, model.PLURAL, name, body,
                dry_run="All" if dry_run else None)


def refusal(call: Any, *args: Any, **kwargs: Any) -> str:
    """Run an API call that must be refused as invalid; return the apiserver's message."""
    with pytest.raises(ApiException) as refused:
        call(*args, **kwargs)
    error = refused.value
    assert error.status in (400, 422), f"expected a validation error, got {error.status}: {error.body}"
    return json.loads(error.body)["message"]


def merged(base: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of base with change merged in (a value of None deletes the key), like a merge patch."""
    out = copy.deepcopy(base)
    for key, value in change.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def example_documents(name: str, namespace: str) -> list[dict[str, Any]]:
    """An upstream example file's objects, moved into `namespace`."""
    docs = [d for d in yaml.safe_load_all((EXAMPLES / name).read_text()) if d]
    for doc in docs:
        assert doc["metadata"].get("namespace") in UPSTREAM_NAMESPACES
        doc["metadata"]["namespace"] = namespace
    return docs
