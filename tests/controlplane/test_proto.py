"""The contract: checked-in stubs match the .proto files, and the protos follow buf's basic lint rules."""

from __future__ import annotations

import re

from google.protobuf import descriptor

from dpf.proto import build
from dpf.proto.v1 import nodestate_pb2, sfc_pb2


def test_generated_stubs_are_fresh() -> None:
    assert build.stale() == [], "stubs are stale: run `python -m dpf.proto.build` and check the result in"


def test_stubs_import_under_the_dpf_root() -> None:
    source = (build.HERE / "v1" / "nodestate_pb2_grpc.py").read_text()
    assert "from dpf.proto.v1 import nodestate_pb2" in source


def _lint(file: descriptor.FileDescriptor) -> list[str]:
    problems = []
    if not re.fullmatch(r"[a-z]+(\.[a-z0-9]+)*\.v\d+", file.package):
        problems.append(f"{file.name}: package {file.package} must end in a version (PACKAGE_VERSION_SUFFIX)")
    if not file.name.startswith(file.package.replace("dpf.", "dpf/proto/").replace(".", "/") + "/"):
        problems.append(f"{file.name}: directory must match package {file.package} (PACKAGE_DIRECTORY_MATCH)")
    for enum in file.enum_types_by_name.values():
        prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper() + "_"
        if enum.values[0].name != prefix + "UNSPECIFIED":
            problems.append(f"{enum.name}: first value must be {prefix}UNSPECIFIED (ENUM_ZERO_VALUE_SUFFIX)")
        problems += [f"{enum.name}.{v.name}: must start with {prefix} (ENUM_VALUE_PREFIX)"
                     for v in enum.values if not v.name.startswith(prefix)]
    for message in file.message_types_by_name.values():
        if not re.fullmatch(r"[A-Z][A-Za-z0-9]*", message.name):
            problems.append(f"{message.name}: message names are PascalCase (MESSAGE_PASCAL_CASE)")
        problems += [f"{message.name}.{f.name}: field names are lower_snake_case (FIELD_LOWER_SNAKE_CASE)"
                     for f in message.fields if not re.fullmatch(r"[a-z][a-z0-9_]*", f.name)]
    for service in file.services_by_name.values():
        for method in service.methods:
            if method.input_type.name != f"{method.name}Request" or method.output_type.name != f"{method.name}Response":
                problems.append(f"{service.name}.{method.name}: use {method.name}Request/{method.name}Response "
                                "(RPC_REQUEST_RESPONSE_UNIQUE)")
    return problems


def test_protos_pass_buf_style_lint() -> None:
    assert _lint(nodestate_pb2.DESCRIPTOR) + _lint(sfc_pb2.DESCRIPTOR) == []
