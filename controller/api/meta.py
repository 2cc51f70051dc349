"""Shared building blocks of every DPF kind: the model base, CRD markers and the Kubernetes core types.

Why pydantic v2: the controller needs typed objects it can parse from and dump to the apiserver's JSON,
with camelCase names, defaults and enum/pattern/range checks; pydantic does all of that in a compiled
core, and keeps per-field metadata (constraints, descriptions from attribute docstrings, our own
markers) that `schema.py` walks to emit the CRD. Its own JSON-schema output is not used: it produces
`$ref`/`anyOf`, which Kubernetes refuses in a structural schema.

Extra fields: spec and status models forbid unknown fields (the apiserver prunes them anyway, so an
unknown name in Python is always a bug); `ObjectMeta` preserves them (managedFields and friends
survive a read-modify-write); free-form helm values are `dict[str, Any]` and preserved as-is.

Rules the apiserver must enforce but pydantic cannot (CEL `x-kubernetes-validations`, immutability)
are declared next to the field they guard with `Cel` markers, so the models stay the single source.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainSerializer, model_validator
from pydantic.alias_generators import to_camel

# -- markers read by schema.py ---------------------------------------------------------------------


@dataclass(frozen=True)
class Cel:
    """One `x-kubernetes-validations` rule, attached to the schema node of the field it annotates."""

    rule: str
    message: str | None = None
    message_expression: str | None = None
    field_path: str | None = None
    reason: str | None = None  # FieldValueInvalid (default), FieldValueForbidden, FieldValueRequired, ...

    def to_schema(self) -> dict[str, str]:
        out = {"rule": self.rule}
        for key, value in (("message", self.message), ("messageExpression", self.message_expression),
                           ("fieldPath", self.field_path), ("reason", self.reason)):
            if value is not None:
                out[key] = value
        return out


def immutable(what: str) -> Cel:
    return Cel("self == oldSelf", message=f"{what} is immutable")


def settable_once(what: str) -> Cel:
    return Cel('oldSelf == "" || self == oldSelf', message=f"{what} is immutable once set")


@dataclass(frozen=True)
class SchemaExtra:
    """Keys merged verbatim into the emitted schema node (format, list-type, patterns on unions...)."""

    values: dict[str, Any] = field(default_factory=dict)

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.values)))


class DefaultInCrd:
    """Marker: also publish this field's object default (its default_factory) as the CRD default."""


DEFAULT_IN_CRD = DefaultInCrd()


@dataclass(frozen=True)
class Column:
    """An `additionalPrinterColumns` entry."""

    name: str
    json_path: str
    type: str = "string"
    description: str | None = None
    priority: int = 0


# -- the model base ---------------------------------------------------------------------------------


class Model(BaseModel):
    """Base of every spec/status struct: camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(alias_generator=to_camel, validate_by_name=True, validate_by_alias=True,
                              extra="forbid", use_attribute_docstrings=True)
    # Object-level CEL rules (the struct's own x-kubernetes-validations).
    CEL: ClassVar[tuple[Cel, ...]] = ()
    # Keys merged into the struct's own schema node (e.g. x-kubernetes-map-type).
    SCHEMA: ClassVar[dict[str, Any]] = {}

    def to_json(self) -> dict[str, Any]:
        """The wire form: aliases, absent instead of null."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def _second_precision(value: datetime) -> datetime:
    # metav1.Time has second precision; keeping more would make round trips lossy.
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).replace(microsecond=0)


Time = Annotated[
    datetime,
    AfterValidator(_second_precision),
    PlainSerializer(lambda v: v.strftime("%Y-%m-%dT%H:%M:%SZ"), return_type=str, when_used="json"),
    SchemaExtra({"format": "date-time"}),
]

# Kubernetes resource.Quantity: an integer or a decimal/binary-SI string, kept as written.
QUANTITY_PATTERN = (r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|"
                    r"([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$")


def _quantity(value: int | str) -> int | str:
    if isinstance(value, str) and not re.match(QUANTITY_PATTERN, value):
        raise ValueError(f"{value!r} is not a quantity (e.g. 2, 500m, 6Gi)")
    return value


# Integer widths as upstream's Go types publish them (`format` in the CRD); the range is the type's.
def _width(bits: int) -> AfterValidator:
    def check(value: int) -> int:
        if not -(2 ** (bits - 1)) <= value < 2 ** (bits - 1):
            raise ValueError(f"{value} does not fit in int{bits}")
        return value
    return AfterValidator(check)


Int32 = Annotated[int, _width(32), SchemaExtra({"format": "int32"})]
Int64 = Annotated[int, _width(64), SchemaExtra({"format": "int64"})]
# Kubernetes' merge markers as controller-gen emits them for the core types (`+listType=atomic`,
# `+structType=atomic`): server-side apply replaces these lists and structs as a whole.
ATOMIC_LIST = SchemaExtra({"x-kubernetes-list-type": "atomic"})
ATOMIC_MAP = {"x-kubernetes-map-type": "atomic"}

Quantity = Annotated[int | str, AfterValidator(_quantity), SchemaExtra({"pattern": QUANTITY_PATTERN, "maxLength": 64})]
ResourceList = dict[str, Quantity]
IntOrString = int | str
Labels = dict[str, str]

# -- Kubernetes core types used inside DPF specs ----------------------------------------------------


class LabelSelectorRequirement(Model):
    key: str
    operator: str
    """In, NotIn, Exists or DoesNotExist."""
    values: Annotated[list[str], ATOMIC_LIST] | None = None


class LabelSelector(Model):
    """metav1.LabelSelector: matchLabels and matchExpressions are ANDed; empty selects everything."""

    SCHEMA: ClassVar[dict[str, Any]] = ATOMIC_MAP
    match_labels: Labels | None = None
    match_expressions: Annotated[list[LabelSelectorRequirement], ATOMIC_LIST] | None = None


class NodeSelectorRequirement(Model):
    key: str
    operator: str
    """In, NotIn, Exists, DoesNotExist, Gt or Lt."""
    values: Annotated[list[str], ATOMIC_LIST] | None = None


class NodeSelectorTerm(Model):
    SCHEMA: ClassVar[dict[str, Any]] = ATOMIC_MAP
    match_expressions: Annotated[list[NodeSelectorRequirement], ATOMIC_LIST] | None = None
    match_fields: Annotated[list[NodeSelectorRequirement], ATOMIC_LIST] | None = None


class NodeSelector(Model):
    """corev1.NodeSelector: the terms are ORed."""

    SCHEMA: ClassVar[dict[str, Any]] = ATOMIC_MAP
    node_selector_terms: Annotated[list[NodeSelectorTerm], ATOMIC_LIST]


class Taint(Model):
    """corev1.Taint."""

    key: str
    value: str | None = None
    effect: str
    """NoSchedule, PreferNoSchedule or NoExecute."""
    time_added: Time | None = None


class RollingUpdateDaemonSet(Model):
    max_unavailable: IntOrString | None = None
    max_surge: IntOrString | None = None


class DaemonSetUpdateStrategy(Model):
    """appsv1.DaemonSetUpdateStrategy."""

    type: str | None = None
    """RollingUpdate or OnDelete."""
    rolling_update: RollingUpdateDaemonSet | None = None


class NamespacedName(Model):
    name: str
    namespace: str


class TemplateMeta(Model):
    """The labels and annotations copied onto the objects made from a template."""

    labels: Labels | None = None
    annotations: Labels | None = None


CONDITION_TYPE_PATTERN = (r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                          r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$")
CONDITION_REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"


class Condition(Model):
    """metav1.Condition."""

    type: Annotated[str, Field(max_length=316, pattern=CONDITION_TYPE_PATTERN)]
    status: Literal["True", "False", "Unknown"]
    observed_generation: Annotated[Int64, Field(ge=0)] | None = None
    last_transition_time: Time
    reason: Annotated[str, Field(min_length=1, max_length=1024, pattern=CONDITION_REASON_PATTERN)]
    message: Annotated[str, Field(max_length=32768)]


Conditions = Annotated[list[Condition], SchemaExtra({"x-kubernetes-list-type": "map",
                                                     "x-kubernetes-list-map-keys": ["type"]})]


class OwnerReference(Model):
    model_config = ConfigDict(extra="allow")
    api_version: str
    kind: str
    name: str
    uid: str
    controller: bool | None = None
    block_owner_deletion: bool | None = None


class ObjectMeta(Model):
    """metav1.ObjectMeta; fields the server manages and we do not model are preserved, not dropped."""

    model_config = ConfigDict(extra="allow")
    name: str | None = None
    generate_name: str | None = None
    namespace: str | None = None
    labels: Labels | None = None
    annotations: Labels | None = None
    finalizers: list[str] | None = None
    owner_references: list[OwnerReference] | None = None
    uid: str | None = None
    resource_version: str | None = None
    generation: int | None = None
    creation_timestamp: str | None = None
    deletion_timestamp: str | None = None


# -- the kind base ------------------------------------------------------------------------------------


class Resource(Model):
    """A top-level DPF kind. Subclasses set the ClassVars and declare `spec` (and `status`)."""

    GROUP: ClassVar[str]
    VERSION: ClassVar[str] = "v1alpha1"
    KIND: ClassVar[str]
    PLURAL: ClassVar[str]
    COLUMNS: ClassVar[tuple[Column, ...]] = ()
    FINALIZERS: ClassVar[tuple[str, ...]] = ()
    CONDITION_TYPES: ClassVar[tuple[str, ...]] = ()
    CRD_ANNOTATIONS: ClassVar[dict[str, str]] = {}

    api_version: str = ""
    kind: str = ""
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)

    @classmethod
    def api_version_string(cls) -> str:
        return f"{cls.GROUP}/{cls.VERSION}"

    @model_validator(mode="after")
    def _type_meta(self) -> Resource:
        for attr, expected in (("api_version", self.api_version_string()), ("kind", self.KIND)):
            value = getattr(self, attr)
            if not value:
                object.__setattr__(self, attr, expected)
            elif value != expected:
                raise ValueError(f"{to_camel(attr)} must be {expected!r} for {self.KIND}, got {value!r}")
        return self
