"""A persistent OpenFlow 1.3 connection to one bridge's management socket that applies flow-mod bundles atomically.

Used by `flows.py` alone (the SFC agent's OpenFlow door) for the bundles of incremental updates: an
`ovs-ofctl --bundle` process costs about 15 ms per bundle against a busy vswitchd, a bundle on an
open socket about 0.5 ms. Input is the typed flow mods `desired.py` builds (`flowspec.py`): each is sent
as its `to_wire()` bytes, framed by `ofwire.py`, and named in errors by its `to_ofctl()` text, which is
what operators see in `ovs-ofctl dump-flows`.

Atomicity: Open vSwitch validates bundled messages as they are added and simply leaves a rejected one
out of the bundle, so a pipelined open/add/commit would commit the rest. Like ovs-ofctl we send open
+ adds + barrier, and commit only when the barrier came back without an error; otherwise the bundle
is discarded and the switch's errors are raised, naming the refused flow mods.

Owned by one thread (the programmer's worker); every wait is bounded by `timeout`. A connection that
died while idle (ovs-vswitchd restarted, or it dropped us after unanswered echo probes) is noticed
before the next bundle and replaced; a loss before the commit was sent is retried once on a fresh
connection, a loss after it raises OpenFlowError (outcome unknown; `flows.py` then re-sends the bundle,
which is idempotent, through ovs-ofctl).
"""

from __future__ import annotations

import itertools
import logging
import selectors
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from dpf.agent.sfc import ofwire
from dpf.agent.sfc.flowspec import FlowMod
from dpf.agent.sfc.ofwire import HEADER

log = logging.getLogger(__name__)

__all__ = ["BundleRefused", "OpenFlowConnection", "OpenFlowError", "OpenFlowTimeout"]


class OpenFlowError(RuntimeError):
    """A bundle could not be applied; the message says why, in the switch's words where it gave any."""


class BundleRefused(OpenFlowError):
    """The switch answered with errors; nothing of the bundle was applied and the connection stays usable."""


class OpenFlowTimeout(OpenFlowError):
    """The switch did not answer in time (busy or hung); the connection is dropped."""


class _Lost(OpenFlowError):
    """The connection closed under us."""


class _Retry(OpenFlowError):
    """The connection was lost before the commit went out: nothing was applied, a fresh connection may retry."""


@dataclass
class _Replies:
    """What came back for one exchange: error names by the xid they answer."""

    errors: dict[int, list[str]] = field(default_factory=dict)


class OpenFlowConnection:
    """One OpenFlow 1.3 connection to `unix:<path>`, opened on first use and replaced when it dies."""

    def __init__(self, path: Path, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._inbuf = bytearray()
        self._xids = itertools.count(1)
        self._bundle_ids = itertools.count(1)
        self.connections = 0  # how many times a connection was established (for logs and tests)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock = None
        self._inbuf.clear()

    def bundle(self, flow_mods: Iterable[FlowMod]) -> int:
        """Apply the flow mods as one atomic bundle and return how many were sent.

        Raises BundleRefused with the switch's error names when it rejects the bundle, OpenFlowTimeout
        when it does not answer within `timeout`, and OpenFlowError when it cannot be reached.
        """
        flow_mods = list(flow_mods)
        if not flow_mods:
            return 0
        mods = [mod.to_wire() for mod in flow_mods]
        deadline = time.monotonic() + self.timeout
        for attempt in (1, 2):
            try:
                self._ensure(deadline)
                self._bundle(flow_mods, mods, deadline)
                return len(mods)
            except _Retry as exc:
                self.close()
                if attempt == 2:
                    raise OpenFlowError(f"{self._name()}: {exc}") from None
            except BundleRefused:
                raise
            except BaseException:
                self.close()  # a timeout or interrupt mid-exchange leaves the stream in an unknown state
                raise
        raise AssertionError("unreachable")

    # -- one bundle ---------------------------------------------------------------------------------

    def _bundle(self, flow_mods: list[FlowMod], mods: list[bytes], deadline: float) -> None:
        bundle_id = next(self._bundle_ids) & 0xFFFFFFFF
        what: dict[int, FlowMod | str] = {}  # xid → what it carried, to name refused flow mods in errors
        out = bytearray()
        xid = self._xid()
        out += ofwire.bundle_control(xid, bundle_id, ofwire.BUNDLE_OPEN)
        what[xid] = "bundle open"
        for flow_mod, mod in zip(flow_mods, mods, strict=True):
            xid = self._xid()
            out += ofwire.bundle_add(xid, bundle_id, mod)
            what[xid] = flow_mod
        barrier = self._xid()
        out += ofwire.barrier(barrier)
        try:
            self._send(out, deadline)
            replies = self._await(barrier, deadline)
            if replies.errors:
                self._discard(bundle_id, deadline)
                raise BundleRefused(self._refused(replies.errors, what, len(mods)))
            commit = self._xid()
            what[commit] = "bundle commit"
            self._send(ofwire.bundle_control(commit, bundle_id, ofwire.BUNDLE_COMMIT), deadline)
        except _Lost as exc:
            raise _Retry(f"lost before the commit was sent ({exc})") from None
        try:
            replies = self._await(commit, deadline)
        except _Lost as exc:
            raise OpenFlowError(f"{self._name()}: lost after the commit was sent, whether it applied is unknown "
                                f"({exc})") from None
        if replies.errors:
            raise BundleRefused(self._refused(replies.errors, what, len(mods)))

    def _discard(self, bundle_id: int, deadline: float) -> None:
        xid = self._xid()
        self._send(ofwire.bundle_control(xid, bundle_id, ofwire.BUNDLE_DISCARD), deadline)
        self._await(xid, deadline)  # an error here (the bundle never opened) changes nothing

    def _refused(self, errors: dict[int, list[str]], what: dict[int, FlowMod | str], count: int) -> str:
        def name(xid: int) -> str:
            carried = what.get(xid, f"xid {xid:#x}")
            return carried if isinstance(carried, str) else carried.to_ofctl()

        parts = [f"{', '.join(names)} for {name(xid)!r}" for xid, names in sorted(errors.items())]
        return (f"{self._name()}: the switch refused the bundle of {count} flow mods, nothing was applied: "
                + "; ".join(parts))

    def _xid(self) -> int:
        return next(self._xids) & 0xFFFFFFFF

    # -- connection lifecycle ----------------------------------------------------------------------

    def _name(self) -> str:
        return f"OpenFlow connection to unix:{self.path}"

    def _ensure(self, deadline: float) -> None:
        if self._sock is not None:
            try:
                self._poll()
            except _Lost:
                self.close()  # died while idle: vswitchd restarted, or dropped us after unanswered probes
        if self._sock is None:
            self._connect(deadline)

    def _connect(self, deadline: float) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            sock.connect(str(self.path))
        except OSError as exc:
            sock.close()
            reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
            raise OpenFlowError(f"cannot connect to unix:{self.path} ({reason}); is ovs-vswitchd running and the "
                                "bridge present?") from None
        sock.setblocking(False)
        self._sock, self._inbuf = sock, bytearray()
        try:
            self._handshake(deadline)
        except _Lost as exc:
            self.close()
            raise OpenFlowError(f"{self._name()}: closed during the hello ({exc})") from None
        except BaseException:
            self.close()
            raise
        self.connections += 1

    def _handshake(self, deadline: float) -> None:
        hello, no_async, barrier = self._xid(), self._xid(), self._xid()
        # A management connection gets port-status messages by default; we read none, so ask for none.
        self._send(ofwire.hello(hello) + ofwire.no_async(no_async) + ofwire.barrier(barrier), deadline)
        kind, _, message = self._read(deadline)
        if kind == ofwire.OFPT_ERROR:
            raise OpenFlowError(f"{self._name()}: the switch refused our hello: {ofwire.error_text(message)}")
        if kind != ofwire.OFPT_HELLO or not ofwire.offers_13(message):
            raise OpenFlowError(f"{self._name()}: the switch does not allow OpenFlow 1.3 (needed for bundles); "
                                "add OpenFlow13 to the bridge's `protocols` column")
        replies = self._await(barrier, deadline)
        if replies.errors:  # not fatal: anything unasked-for is skipped anyway
            log.warning("%s: the switch refused to silence async messages: %s", self._name(), replies.errors)

    # -- I/O ----------------------------------------------------------------------------------------

    def _await(self, xid: int, deadline: float) -> _Replies:
        """Read until `xid` is answered (its reply or an error); errors for earlier xids are collected on the way."""
        replies = _Replies()
        while True:
            kind, got, message = self._read(deadline)
            if kind == ofwire.OFPT_ERROR:
                replies.errors.setdefault(got, []).append(ofwire.error_text(message))
                if got == xid:
                    return replies
            elif kind == ofwire.OFPT_ECHO_REQUEST:
                self._send(ofwire.echo_reply(message), deadline)
            elif got == xid and (kind == ofwire.OFPT_BARRIER_REPLY or ofwire.bundle_reply_kind(message) is not None):
                return replies
            # Anything else (a port status sent before SET_ASYNC took effect, say) is none of our business.

    def _poll(self) -> None:
        """Handle what arrived while we were idle (echo probes) without blocking; raise _Lost on EOF."""
        self._fill(wait_until=None)
        while (message := self._take()) is not None:
            if message[0] == ofwire.OFPT_ECHO_REQUEST:
                self._send(ofwire.echo_reply(message[2]), time.monotonic() + self.timeout)

    def _read(self, deadline: float) -> tuple[int, int, bytes]:
        while (message := self._take()) is None:
            self._fill(wait_until=deadline)
        return message

    def _take(self) -> tuple[int, int, bytes] | None:
        """The next whole message in the input buffer: (type, xid, the message's bytes)."""
        if len(self._inbuf) < HEADER.size:
            return None
        _, kind, length, xid = HEADER.unpack_from(self._inbuf)
        if length < HEADER.size:
            raise _Lost(f"malformed message header (length {length})")
        if len(self._inbuf) < length:
            return None
        message = bytes(self._inbuf[:length])
        del self._inbuf[:length]
        return kind, xid, message

    def _fill(self, wait_until: float | None) -> None:
        """Append what the socket has to the input buffer, waiting for data until `wait_until` (None: no wait)."""
        assert self._sock is not None
        if wait_until is not None:
            self._wait(selectors.EVENT_READ, wait_until)
        while True:
            try:
                chunk = self._sock.recv(1 << 16)
            except BlockingIOError:
                return
            except OSError as exc:
                raise _Lost(exc.strerror or str(exc)) from None
            if not chunk:
                raise _Lost("the switch closed the connection")
            self._inbuf += chunk

    def _send(self, data: bytes | bytearray, deadline: float) -> None:
        """Write all of `data`; while the socket is full, keep reading so the switch's replies cannot stall it."""
        assert self._sock is not None
        view = memoryview(data)
        while view:
            try:
                view = view[self._sock.send(view):]
            except BlockingIOError:
                if self._wait(selectors.EVENT_READ | selectors.EVENT_WRITE, deadline) & selectors.EVENT_READ:
                    self._fill(wait_until=None)
            except OSError as exc:
                raise _Lost(exc.strerror or str(exc)) from None

    def _wait(self, events: int, deadline: float) -> int:
        assert self._sock is not None
        remaining = deadline - time.monotonic()
        if remaining > 0:
            with selectors.DefaultSelector() as selector:
                selector.register(self._sock, events)
                ready = selector.select(remaining)
            if ready:
                return ready[0][1]
        raise OpenFlowTimeout(f"{self._name()}: no answer within {self.timeout:g}s")
