"""A JSON-RPC stream parser for python-ovs backed by the stdlib's C `json`, for wheels built without `ovs._json`.

python-ovs parses every message from ovsdb-server with `ovs.json.Parser`, which, without its optional C
extension (the PyPI wheel has none: `ovs.json.PARSER == "PYTHON"`), lexes one character per Python call,
about 1-2 µs a character. On the agent's IDL thread that is the largest cost of a CNI port batch (every
update of our rows and of vswitchd's answer is parsed), and it competes for the GIL with the asyncio loop.

`StreamParser` keeps python-ovs's contract (`feed(text)` consumes up to the end of one JSON value and
returns how many characters it took, `is_done()`, `finish()` returns the value or an error string). A value
that arrives whole in the first piece (most messages) is decoded in one `raw_decode` call; otherwise the
parser only finds where the top-level value ends, with a regular expression that steps over strings and
counts brackets, and hands the whole text to `json.loads` once. JSON-RPC messages are objects, so a
top-level value that is not an object or array is reported as an error, as a malformed message would be.
`install()` makes python-ovs use it when it has no C parser of its own.
"""

from __future__ import annotations

import json
import re

import ovs.json

# A whole string (escapes included), a bracket, or a lone quote: the start of a string this text does not finish.
_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[{}\[\]]|"', re.S)
_SPACE = " \t\r\n"
_DECODER = json.JSONDecoder()
PYTHON_PARSER = ovs.json.Parser
"""python-ovs's own parser class (pure Python without its C extension), kept for comparison."""


class StreamParser:
    """One JSON value from a stream fed in pieces (python-ovs's `ovs.json.Parser` interface)."""

    def __init__(self, check_trailer: bool = False) -> None:
        self.check_trailer = check_trailer  # accepted for the interface; jsonrpc never sets it
        self._parts: list[str] = []
        self._carry = ""  # an unterminated string at the end of the last piece: scanned again with the next
        self._depth = 0
        self._started = False
        self.done = False
        self._value: object = None
        self._error: str | None = None

    def feed(self, text: str) -> int:
        if self.done:
            return 0
        carried = len(self._carry)
        work = self._carry + text if carried else text
        self._carry = ""
        pos = 0
        if not self._started:
            stripped = work.lstrip(_SPACE)
            if not stripped:
                return len(text)
            pos = len(work) - len(stripped)
            if stripped[0] not in "{[":
                self._fail(f"expected a JSON object or array, got {stripped[:20]!r}")
                return pos + 1 - carried
            self._started = True
            try:  # most messages arrive whole in one read: one C call, no scan
                self._value, end = _DECODER.raw_decode(work, pos)
            except ValueError:  # not whole yet (or malformed: the scan finds its end and json.loads says why)
                pass
            else:
                self.done = True
                return end
        depth = self._depth
        for match in _TOKEN.finditer(work, pos):
            token = match.group()
            if token == '"':  # a string that goes on in the next piece
                self._parts.append(work[:match.start()])
                self._carry = work[match.start():]
                self._depth = depth
                return len(text)
            if token in "{[":
                depth += 1
            elif token in "}]":
                depth -= 1
                if depth == 0:
                    end = match.end()
                    self._parts.append(work[:end])
                    self._finish_value("".join(self._parts))
                    return end - carried
        self._parts.append(work)
        self._depth = depth
        return len(text)

    def _finish_value(self, document: str) -> None:
        self.done = True
        self._parts = []
        try:
            self._value = json.loads(document)
        except ValueError as exc:
            self._error = f"syntax error: {exc}"

    def _fail(self, message: str) -> None:
        self.done = True
        self._error = message

    def is_done(self) -> bool:
        return self.done

    def finish(self) -> object:
        """The value, or a string describing the error (python-ovs's convention)."""
        if not self.done:
            self._fail("unexpected end of input" if self._started else "empty input stream")
        return self._error if self._error is not None else self._value


def install() -> bool:
    """Make python-ovs parse with `StreamParser` unless it has its C parser; True when installed."""
    if ovs.json.PARSER == ovs.json.PARSER_C:
        return False
    ovs.json.Parser = StreamParser  # python-ovs looks the class up for each message
    return True
