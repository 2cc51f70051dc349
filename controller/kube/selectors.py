"""metav1.LabelSelector matching, as the apiserver defines it: matchLabels and matchExpressions are ANDed,
a nil or empty selector selects everything. Pure; callers: the per-node set reconcilers (nodeSelector over
DPU-cluster Nodes) and chain port resolution (matchLabels over ServiceInterfaces).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


class SelectorError(ValueError):
    """A selector the apiserver would refuse; the message names the field and the fix."""


def validate(selector: Mapping[str, Any] | None, field: str = "nodeSelector") -> None:
    for i, expr in enumerate((selector or {}).get("matchExpressions") or ()):
        where = f"{field}.matchExpressions[{i}]"
        op, values = expr.get("operator"), expr.get("values") or []
        if op not in OPERATORS:
            raise SelectorError(f"{where}.operator {op!r} is not one of {', '.join(OPERATORS)}")
        if op in ("In", "NotIn") and not values:
            raise SelectorError(f"{where}.values must be non-empty for operator {op}")
        if op in ("Exists", "DoesNotExist") and values:
            raise SelectorError(f"{where}.values must be empty for operator {op}")


def matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str] | None) -> bool:
    """True if `labels` satisfy `selector` (validate() it first: unknown operators match nothing)."""
    labels = labels or {}
    if selector is None:
        return True
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or ():
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
        if op not in OPERATORS:
            return False
    return True


def describe(match_labels: Mapping[str, str]) -> str:
    """A selector as users write it on the command line: `a=b,c=d` (sorted)."""
    return ",".join(f"{k}={v}" for k, v in sorted(match_labels.items()))
