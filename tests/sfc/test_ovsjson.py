"""The C-json stream parser gives python-ovs exactly what its own parser gives, however the stream is cut."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import ovs.json
import pytest

from dpf.agent.sfc.ovsjson import PYTHON_PARSER, StreamParser

MESSAGES = [
    # shapes ovsdb-server sends: a monitor update with maps, sets, uuids, escapes and brackets inside strings
    {"id": None, "method": "update3", "params": [["monid", "Open_vSwitch"], "00000000-0000-0000-0000-000000000000", {
        "Interface": {"9b0c7a4e-1f7b-4a52-9a9d-1d0b7cc8c5a1": {"insert": {
            "name": "vethab[1]{x}", "external_ids": ["map", [["dpf-owner", "dpf-cni"], ["k\"q", "v\\\\w]"]]],
            "ofport": 7, "error": ["set", []], "options": ["map", []]}}},
        "Open_vSwitch": {"5c6d1b0e-7a3e-4c10-8c53-2f7a5b0f6e11": {"modify": {"cur_cfg": 12}}}}]},
    {"id": 3, "result": [{}, {"uuid": ["uuid", "0f0e0d0c-0b0a-0908-0706-050403020100"]}], "error": None},
    {"id": "echo", "method": "echo", "params": []},
    [1, 2.5, -3e2, True, False, None, "\u00e9\u4e2d \t tab", {"": [[], {}]}],
]


def texts() -> list[str]:
    return [json.dumps(m, separators=(",", ":")) for m in MESSAGES] + [json.dumps(m, indent=2) for m in MESSAGES]


def run(parser_class: Callable[[], Any], stream: str, cuts: list[int]) -> list[object]:
    """Feed `stream` cut at `cuts` the way python-ovs's Connection.recv does; the values parsed, in order."""
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    out, parser, pending = [], None, ""
    for piece in pieces:
        pending += piece
        while pending:
            parser = parser or parser_class()
            pending = pending[parser.feed(pending):]
            if parser.is_done():
                out.append(parser.finish())
                parser = None
    if parser is not None:
        out.append(parser.finish())
    return out


@pytest.mark.parametrize("text", texts())
def test_every_cut_gives_the_same_values(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    stream = text + "\n" + text
    with monkeypatch.context() as patch:  # python-ovs's own parser finds its class through ovs.json, where ours is
        patch.setattr(ovs.json, "Parser", PYTHON_PARSER)
        expected = run(PYTHON_PARSER, stream, [])
    assert expected == [json.loads(text)] * 2
    for cut in range(1, len(stream)):
        assert run(StreamParser, stream, [cut]) == expected, cut
    every_char = list(range(1, len(stream)))
    assert run(StreamParser, stream, every_char) == expected


def test_errors_are_strings_like_python_ovs() -> None:
    for bad in ('{"a": tru}', '{"a" 1}', "7 ", '"a string"'):
        parser = StreamParser()
        parser.feed(bad)
        assert isinstance(parser.finish(), str), bad
    parser = StreamParser()
    parser.feed('{"open": [1, 2')
    assert not parser.is_done()
    assert parser.finish() == "unexpected end of input"
