"""The upstream use-case guides' manifests apply unchanged, the way the guides apply them.

The guides run `cat manifests/... | envsubst | kubectl apply -f -`; the fixtures under lab/manifests/upstream/ are those
manifests with the $VARS substituted, and only the namespace is moved into the test's own.
"""

from __future__ import annotations

import pytest
import yaml

from dpf.controller.api import kind_by_name
from dpf.lab.bed.kube import ControlPlane
from tests.api.helpers import example_documents, get

EXAMPLES = ["hbn_ovn_system.yaml", "hbn_only.yaml", "hbn_ovn.yaml", "hbn_ovn_dpudeployment.yaml"]


@pytest.mark.parametrize("example", EXAMPLES)
def test_upstream_example_is_accepted(api_kube: ControlPlane, namespace: str, example: str) -> None:
    docs = example_documents(example, namespace)
    result = api_kube.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs), check=False)
    assert result.returncode == 0, result.stderr
    for doc in docs:
        stored = get(api_kube, namespace, doc["kind"], doc["metadata"]["name"])
        # The controller's typed model reads what the apiserver stored, and nothing the user wrote is lost.
        model = kind_by_name(doc["kind"]).model_validate(stored)
        assert _subset(_without_nulls(doc["spec"]), model.to_json()["spec"]), doc["metadata"]["name"]


def _without_nulls(value: object) -> object:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _subset(wanted: object, got: object) -> bool:
    """Every field the user wrote is present with the same value (defaults may add more)."""
    if isinstance(wanted, dict):
        return isinstance(got, dict) and all(k in got and _subset(v, got[k]) for k, v in wanted.items())
    if isinstance(wanted, list):
        return isinstance(got, list) and len(wanted) == len(got) and all(map(_subset, wanted, got))
    return wanted == got
