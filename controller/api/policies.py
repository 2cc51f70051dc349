"""Admission policies shipped next to the CRDs, for what CRD validation cannot do on its own.

CRD CEL sees only the object's own schema (not metadata.annotations) and cannot default one field from
another, so upstream's provisioning webhooks become:

- a ValidatingAdmissionPolicy: a DPU's host-power-cycle annotation must parse as a bool;
- MutatingAdmissionPolicies (admissionregistration.k8s.io/v1, served by default since Kubernetes 1.36):
  BFB spec.fileName defaults to <namespace>-<name>.bfb, and a DPUSet RollingUpdate strategy without a
  rollingUpdate block gets maxUnavailable 1.

Objects named by generateName have no name yet at admission, so their BFB fileName stays unset and the
controller uses `BFB.effective_file_name()` (the BFB immutability rule lets it persist that value once).
`crdgen.py` writes these into packaging/crds/ with the CRDs.
"""

from __future__ import annotations

from typing import Any

from dpf.controller.api.provisioning import BOOL_LIST, GROUP, POWER_CYCLE_ANNOTATION


def _policy(kind: str, name: str, resource: str, spec: dict[str, Any]) -> list[dict[str, Any]]:
    rules = {"resourceRules": [{"apiGroups": [GROUP], "apiVersions": ["v1alpha1"],
                                "operations": ["CREATE", "UPDATE"], "resources": [resource]}]}
    binding_spec: dict[str, Any] = {"policyName": name}
    if kind == "ValidatingAdmissionPolicy":
        binding_spec["validationActions"] = ["Deny"]
    api = "admissionregistration.k8s.io/v1"
    return [{"apiVersion": api, "kind": kind, "metadata": {"name": name},
             "spec": {"failurePolicy": "Fail", "matchConstraints": rules, **spec}},
            {"apiVersion": api, "kind": f"{kind}Binding", "metadata": {"name": name}, "spec": binding_spec}]


def admission_policies() -> list[dict[str, Any]]:
    """Every policy and its binding, in apply order."""
    annotations = "object.metadata.annotations"
    key = POWER_CYCLE_ANNOTATION
    validate = _policy("ValidatingAdmissionPolicy", "dpu-annotations.provisioning.dpu.nvidia.com", "dpus", {
        "validations": [{
            "expression": f"!has({annotations}) || !('{key}' in {annotations}) || "
                          f"{annotations}['{key}'] in {BOOL_LIST}",
            "messageExpression": f"'metadata.annotations[{key}]: Invalid value: \"' + {annotations}['{key}'] + "
                                 "'\": must be a boolean (true or false)'",
            "reason": "Invalid",
        }]})
    bfb = _policy("MutatingAdmissionPolicy", "bfb-defaults.provisioning.dpu.nvidia.com", "bfbs", {
        "reinvocationPolicy": "Never",
        "matchConditions": [{"name": "file-name-unset", "expression":
                             "!has(object.spec.fileName) && has(object.metadata.name) && object.metadata.name != ''"}],
        "mutations": [{"patchType": "ApplyConfiguration", "applyConfiguration": {"expression":
                       'Object{spec: Object.spec{fileName: object.metadata.namespace + "-" + '
                       'object.metadata.name + ".bfb"}}'}}]})
    strategy = "object.spec.strategy"
    dpuset = _policy("MutatingAdmissionPolicy", "dpuset-defaults.provisioning.dpu.nvidia.com", "dpusets", {
        "reinvocationPolicy": "Never",
        "matchConditions": [{"name": "rolling-update-without-parameters", "expression":
                             f"has({strategy}) && has({strategy}.type) && {strategy}.type == 'RollingUpdate' && "
                             f"!has({strategy}.rollingUpdate)"}],
        "mutations": [{"patchType": "JSONPatch", "jsonPatch": {"expression":
                       '[JSONPatch{op: "add", path: "/spec/strategy/rollingUpdate", value: {"maxUnavailable": 1}}]'}}]})
    return [*validate, *bfb, *dpuset]
