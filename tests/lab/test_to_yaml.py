"""What the lab and the tests pipe into kubectl keeps its strings strings: a label value made of digits with a
leading zero (a uuid's hex can be one) reached kubectl unquoted from PyYAML and was read as an integer."""

from __future__ import annotations

import json

from dpf.lab import chains
from dpf.lab.bed.kube import ControlPlane


def test_digit_strings_reach_the_apiserver_as_strings(kube: ControlPlane, namespace: str) -> None:
    config_map = {"apiVersion": "v1", "kind": "ConfigMap",
                  "metadata": {"name": "digits", "namespace": namespace, "labels": {"dpf.lab/group": "093396"}},
                  "data": {"octal-looking": "093396", "number": "12", "bool": "yes"}}
    kube.kubectl("apply", "--server-side", "-f", "-", input=chains.to_yaml([config_map]))
    stored = json.loads(kube.kubectl("get", "configmap", "digits", "-n", namespace, "-o", "json").stdout)
    assert stored["metadata"]["labels"]["dpf.lab/group"] == "093396"
    assert stored["data"] == {"octal-looking": "093396", "number": "12", "bool": "yes"}
