"""Model class → structural OpenAPI v3 schema, the form a CRD version needs.

Walks the pydantic field annotations (not pydantic's JSON schema) and emits what Kubernetes accepts in
a structural schema: every node typed, no `$ref`/`anyOf`/`oneOf`, maps as `additionalProperties`,
int-or-string as `x-kubernetes-int-or-string`, free-form dicts as `x-kubernetes-preserve-unknown-fields`.
Constraints (ge/le, min/max length, pattern), `Literal` enums, scalar defaults, docstrings and our
`Cel`/`SchemaExtra` markers are carried over. Used by `crdgen.py`; never does I/O.
"""

from __future__ import annotations

import inspect
import types
import typing
from datetime import datetime
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types as at
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from dpf.controller.api.meta import Cel, DefaultInCrd, Model, SchemaExtra

_SCALARS: dict[type, dict[str, Any]] = {
    bool: {"type": "boolean"},  # before int: bool is a subclass of int
    int: {"type": "integer"},
    float: {"type": "number"},
    str: {"type": "string"},
    datetime: {"type": "string"},
}


class SchemaError(TypeError):
    pass


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The object schema of a model: its fields, required list, docstring and object-level CEL."""
    node: dict[str, Any] = {"type": "object"}
    doc = _docstring(model)
    if doc:
        node["description"] = doc
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, info in model.model_fields.items():
        wire = info.alias or name
        properties[wire] = field_schema(model, name, info)
        if info.is_required():
            required.append(wire)
    node["properties"] = properties
    if required:
        node["required"] = required
    node.update(getattr(model, "SCHEMA", {}))
    rules = list(getattr(model, "CEL", ()))
    if rules:
        node["x-kubernetes-validations"] = [rule.to_schema() for rule in rules]
    return node


def field_schema(model: type[BaseModel], name: str, info: FieldInfo) -> dict[str, Any]:
    try:
        node = type_schema(info.annotation)
        _apply_metadata(node, info.metadata)
    except SchemaError as error:
        raise SchemaError(f"{model.__name__}.{name}: {error}") from None
    if info.description:
        node["description"] = info.description
    default = _crd_default(info)
    if default is not None:
        node["default"] = default
    return node


def type_schema(tp: Any) -> dict[str, Any]:
    origin = get_origin(tp)
    if origin is Annotated:
        base, *metadata = get_args(tp)
        node = type_schema(base)
        _apply_metadata(node, metadata)
        return node
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return type_schema(args[0])
        if set(args) == {int, str}:
            return {"x-kubernetes-int-or-string": True}
        raise SchemaError(f"unions other than Optional[T] and int | str have no structural form: {tp}")
    if origin is Literal:
        values = list(get_args(tp))
        if not all(isinstance(v, str) for v in values):
            raise SchemaError(f"only string enums are supported: {tp}")
        return {"type": "string", "enum": values}
    if origin is list:
        (item,) = get_args(tp)
        return {"type": "array", "items": type_schema(item)}
    if origin is dict:
        key, value = get_args(tp)
        if key is not str:
            raise SchemaError(f"map keys must be strings: {tp}")
        if value is Any:
            return {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        return {"type": "object", "additionalProperties": type_schema(value)}
    if inspect.isclass(tp) and issubclass(tp, BaseModel):
        return model_schema(tp)
    for scalar, node in _SCALARS.items():
        if tp is scalar:
            return dict(node)
    raise SchemaError(f"no schema for type {tp!r}")


def _apply_metadata(node: dict[str, Any], metadata: typing.Iterable[Any]) -> None:
    for item in metadata:
        if isinstance(item, FieldInfo):
            _apply_metadata(node, item.metadata)
            if item.description:
                node["description"] = item.description
        elif isinstance(item, Cel):
            node.setdefault("x-kubernetes-validations", []).append(item.to_schema())
        elif isinstance(item, SchemaExtra):
            node.update(item.values)
        elif isinstance(item, at.Ge):
            node["minimum"] = item.ge
        elif isinstance(item, at.Gt):
            node.update(minimum=item.gt, exclusiveMinimum=True)
        elif isinstance(item, at.Le):
            node["maximum"] = item.le
        elif isinstance(item, at.Lt):
            node.update(maximum=item.lt, exclusiveMaximum=True)
        elif isinstance(item, at.MinLen):
            node[_length_key(node, "min")] = item.min_length
        elif isinstance(item, at.MaxLen):
            node[_length_key(node, "max")] = item.max_length
        elif getattr(item, "pattern", None) is not None:
            node["pattern"] = item.pattern


def _length_key(node: dict[str, Any], bound: str) -> str:
    kind = node.get("type")
    suffix = {"string": "Length", "array": "Items", "object": "Properties"}.get(kind) if isinstance(kind, str) else None
    if suffix is None:
        raise SchemaError(f"a length bound needs a string, array or map, not {kind}")
    return f"{bound}{suffix}"


def _crd_default(info: FieldInfo) -> Any:
    if info.default_factory is not None:
        if not any(isinstance(m, DefaultInCrd) for m in info.metadata):
            return None
        value = info.default_factory()  # type: ignore[call-arg]
    elif info.default is PydanticUndefined:
        return None
    else:
        value = info.default
    if isinstance(value, Model):
        return value.to_json() or None
    return value


def _docstring(model: type[BaseModel]) -> str | None:
    doc = model.__dict__.get("__doc__")
    return inspect.cleandoc(doc) if doc else None
