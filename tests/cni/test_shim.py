"""The shim's local behaviour: VERSION without the agent, and errors in the spec's JSON shape."""

from __future__ import annotations

import json
import subprocess

from hypothesis import given
from hypothesis import strategies as st

from dpf.cni.shim import loads, request_line, run
from tests.cni.conftest import PLUGIN

SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                    max_leaves=20)


def test_version_is_answered_locally_by_the_frozen_binary(cni_binary) -> None:
    out = subprocess.run([str(cni_binary)], input='{"cniVersion":"1.0.0"}', env={"CNI_COMMAND": "VERSION"},
                         capture_output=True, text=True, timeout=10)
    assert out.returncode == 0
    assert json.loads(out.stdout) == {"cniVersion": "1.1.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]}


def shim(env: dict, raw: str) -> tuple[int, dict | None, str]:
    rc, out, note = run(env, raw, PLUGIN)
    return rc, json.loads(out) if out else None, note


def test_errors_use_the_spec_shape_and_codes() -> None:
    rc, doc, _ = shim({"CNI_COMMAND": "BOGUS"}, '{"cniVersion":"1.0.0","name":"n"}')
    assert rc == 1
    assert doc["code"] == 4
    assert "CNI_COMMAND" in doc["msg"]
    assert doc["cniVersion"] == "1.0.0"
    rc, doc, _ = shim({"CNI_COMMAND": "ADD"}, "not json")
    assert doc["code"] == 6
    rc, doc, _ = shim({"CNI_COMMAND": "ADD"}, '{"cniVersion":"0.2.0","name":"n"}')
    assert doc["code"] == 1
    assert "cniVersion" in doc["msg"]
    rc, doc, _ = shim({"CNI_COMMAND": "ADD"}, '{"cniVersion":"1.0.0","name":"n","agentSocket":"rel/path"}')
    assert doc["code"] == 7
    assert "agentSocket" in doc["msg"]


def test_del_with_no_agent_succeeds_and_says_why(tmp_path) -> None:
    conf = json.dumps({"cniVersion": "1.0.0", "name": "n", "agentSocket": str(tmp_path / "none.sock")})
    rc, doc, note = shim({"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c", "CNI_IFNAME": "net1"}, conf)
    assert (rc, doc) == (0, None)
    assert "reclaims on start-up" in note


@given(JSON)
def test_the_shims_json_reader_agrees_with_json(value: object) -> None:
    text = json.dumps(value)
    assert loads(text) == json.loads(text)
    assert loads(f"  {text}\n") == value


@given(st.text(), st.text())
def test_the_request_line_is_json_the_agent_reads_back(config: str, netns: str) -> None:
    line = request_line("ADD", {"CNI_NETNS": netns, "CNI_IFNAME": "net1", "HOME": "/root"}, config, PLUGIN)
    assert line.endswith(b"\n")
    assert json.loads(line) == {"v": 1, "command": "ADD", "env": {"CNI_NETNS": netns, "CNI_IFNAME": "net1"},
                                "config": config, "plugin": PLUGIN}
