"""The agent's one OVSDB connection: the python-ovs IDL, the thread that owns it, port transactions.

The only module that imports `ovs`. One `Ovsdb` serves the whole agent process: the SFC programmer
(blocking calls from its worker thread: `ensure_bridge`, `apply_ports`, `set_bridge_ids`) and the CNI
server (`submit`, awaited through `asyncio.wrap_future`, see `dpf.agent.cni.ovs_ports`). Callers never
touch the IDL: they hand a transaction builder to the IDL thread, which runs it on the replica, commits
(TRY_AGAIN: the builder runs again on the refreshed replica, so what it read and `verify`d is re-read),
and resolves a future with a deadline. Whoever drives the IDL holds the IDL lock: when the IDL is idle,
`submit` builds and sends the transaction on the caller's thread (one thread wake-up less), and the IDL
thread reads the answer. One request is one transaction; transactions commit one at a
time (one IDL, one transaction in flight), but a committed port change waiting for ovs-vswitchd does
not hold up the next commit. After a port change we bump `next_cfg` and wait for ovs-vswitchd to report
`cur_cfg >= next_cfg` (committed is not realised); that wait is woken by the IDL's own update of
`cur_cfg`, never by polling. Replica changes are published as an immutable `SwitchView` (readable from
any thread) and announced to subscribers through `"update" | "reconnected"` (the callbacks run on the
IDL thread, or a submitter's, and must only enqueue). Each user pairs `start` with `stop`: the first start connects, the
last stop disconnects.

Why python-ovs rather than ovsdbapp: ovsdbapp wraps this same IDL in a command/threading layer made for
Neutron (its own connection thread, command objects, pbr/fixtures/netaddr dependencies). We need
exactly one IDL on one thread, one hand-built transaction per change set, map mutations that leave
other writers' keys alone, and the raw `next_cfg`/`cur_cfg` handshake; python-ovs gives all of that
directly, and measured 0.55 ms per transaction.

Reading rows: python-ovs's `Row.__getattr__` rebuilds a column's value through the open transaction's
overlay on every read, and turns a set of references into sorted Row objects; on the IDL thread that was
the largest cost of a CNI batch after JSON parsing. Our own reads (`scalar`, `uuids`, `mapping`) take the
value the server last sent straight from the row's data (what the replica shows is the database, never a
transaction still being built), and builders find ports by name through the replica's index (`find_ports`)
instead of scanning every bridge's ports. python-ovs's stream parser is replaced by the C-json one of
`dpf.agent.sfc.ovsjson` when the installed python-ovs has no C parser.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ovs.db.idl
import ovs.poller

from dpf.agent.sfc import ovsjson
from dpf.agent.sfc.desired import OWNER_KEY, PortChange
from dpf.agent.sfc.settings import SfcSettings
from dpf.agent.sfc.view import ObservedBridge, ObservedPort, SwitchView

log = logging.getLogger(__name__)
ovsjson.install()

SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")
COLUMNS = {
    "Open_vSwitch": ["bridges", "cur_cfg", "next_cfg"],
    "Bridge": ["name", "ports", "fail_mode", "datapath_type", "external_ids"],
    "Port": ["name", "interfaces", "external_ids", "tag", "trunks"],
    "Interface": ["name", "type", "options", "external_ids", "ofport", "ofport_request", "error"],
}
_RETRIES = 5  # TRY_AGAIN (a concurrent writer or a reconnect) before a transaction is given up
_TICK_MS = 100  # the loop's longest sleep: deadlines are checked at least this often


class OvsdbError(RuntimeError):
    """A transaction failed or timed out; the message names it and the server's error.

    `transient`: the switch was unreachable, slow or busy (worth a retry), not a refusal of the change."""

    def __init__(self, msg: str, transient: bool = False) -> None:
        super().__init__(msg)
        self.transient = transient


class NotRealized(OvsdbError):
    """The transaction committed but ovs-vswitchd did not apply it in time (is it running?)."""

    def __init__(self, msg: str) -> None:
        super().__init__(msg, transient=True)


@dataclass(frozen=True)
class OvsdbSettings:
    remote: str
    """OVSDB remote, e.g. `unix:/var/run/openvswitch/db.sock`."""
    connect_timeout: float = 10.0
    """Start-up bound for the first replica."""
    txn_timeout: float = 10.0
    """Bound for one transaction to commit (including waiting for a lost connection to come back)."""
    realize_timeout: float = 10.0
    """Bound for ovs-vswitchd to apply a committed port change (`cur_cfg` reaching our `next_cfg`)."""

    @classmethod
    def of_sfc(cls, settings: SfcSettings) -> OvsdbSettings:
        return cls(remote=settings.remote, connect_timeout=settings.ovsdb_connect_timeout,
                   txn_timeout=settings.ovsdb_txn_timeout, realize_timeout=settings.realize_timeout)


Builder = Callable[[ovs.db.idl.Idl, ovs.db.idl.Transaction], None]
"""Fills a transaction from the replica (under the IDL lock, on the IDL thread or the submitter's); may run
again after TRY_AGAIN."""


@dataclass
class _Request:
    what: str
    build: Builder
    realize: bool
    future: Future = field(default_factory=Future)
    txn: ovs.db.idl.Transaction | None = None
    target_cfg: int | None = None
    attempts: int = 0
    deadline: float = 0.0


class Ovsdb:
    def __init__(self, settings: OvsdbSettings, on_event: Callable[[str], None] | None = None,
                 schema: Path = SCHEMA) -> None:
        self.settings = settings
        self._listeners: list[Callable[[str], None]] = [on_event] if on_event else []
        helper = ovs.db.idl.SchemaHelper(location=str(schema))
        for table, columns in COLUMNS.items():
            helper.register_columns(table, columns)
        self._replica = _Replica()
        self._idl = _NotifyingIdl(settings.remote, helper, self._replica.note)
        self._view = SwitchView()
        self._synced = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # the queue and the user count
        self._idl_lock = threading.Lock()  # the IDL and everything it feeds: held by whoever drives it
        self._users = 0
        self._closed = False
        self._queue: deque[_Request] = deque()
        self._active: _Request | None = None  # built and committing (the IDL allows one at a time)
        self._realizing: list[_Request] = []  # committed, waiting for ovs-vswitchd's cur_cfg
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._thread = threading.Thread(target=self._run, name="agent-ovsdb", daemon=True)
        self._published_seqno = 0
        self._session_seqno: int | None = None
        self._reconnected = False
        self._connected = False

    # -- lifecycle ----------------------------------------------------------------------------

    def subscribe(self, on_event: Callable[[str], None]) -> None:
        """Also call `on_event("update" | "reconnected")` (under the IDL lock, on any thread: it must only enqueue)."""
        self._listeners.append(on_event)

    def start(self) -> None:
        """Join as a user; the first one connects. Returns once the first replica is in (or raises)."""
        with self._lock:
            if self._closed:
                raise OvsdbError(f"OVSDB client of {self.settings.remote} was stopped", transient=True)
            self._users += 1
            if self._users == 1:
                self._thread.start()
        if not self._synced.wait(self.settings.connect_timeout):
            self.stop()
            raise OvsdbError(f"no OVSDB replica from {self.settings.remote} within "
                             f"{self.settings.connect_timeout:.0f}s: is ovsdb-server running?", transient=True)

    def stop(self) -> None:
        """Leave as a user; the last one disconnects and fails what is still pending."""
        with self._lock:
            self._users = max(0, self._users - 1)
            if self._users or self._closed:
                return
            self._closed = True
        self._stopping.set()
        self._wake()
        if self._thread.is_alive():
            self._thread.join(5)
        with self._idl_lock:
            self._idl.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        with self._lock:
            pending = [*self._queue, *([self._active] if self._active else []), *self._realizing]
            self._queue.clear()
            self._realizing.clear()
            self._active = None
        for request in pending:
            if not request.future.done():
                request.future.set_exception(OvsdbError(f"{request.what}: OVSDB client stopped", transient=True))

    @property
    def view(self) -> SwitchView:
        return self._view

    @property
    def connected(self) -> bool:
        """Connected and monitoring: `view` follows the database (when False it is the last state seen)."""
        return self._connected

    # -- transactions (any thread) -----------------------------------------------------------------

    def ensure_bridge(self, name: str, datapath_type: str, owner: str) -> bool:
        """Create bridge `name` (fail_mode=secure) unless it exists; True when it was created."""
        created: list[str] = []

        def build(idl: ovs.db.idl.Idl, txn: ovs.db.idl.Transaction) -> None:
            created.clear()
            verify(_root(idl), "bridges")  # "no such bridge" is a read: a concurrent create means TRY_AGAIN
            if any(scalar(row, "name") == name for row in idl.tables["Bridge"].rows.values()):
                return
            iface = txn.insert(idl.tables["Interface"])
            iface.name, iface.type = name, "internal"
            port = txn.insert(idl.tables["Port"])
            port.name, port.interfaces = name, [iface]
            bridge = txn.insert(idl.tables["Bridge"])
            bridge.name, bridge.fail_mode, bridge.datapath_type = name, "secure", datapath_type
            bridge.ports = [port]
            bridge.external_ids = {OWNER_KEY: owner}
            _root(idl).addvalue("bridges", bridge.uuid)
            created.append(name)

        self._call(f"create bridge {name}", build, realize=True)
        return bool(created)

    def apply_ports(self, change: PortChange, owner: str) -> None:
        """One transaction for the whole change set, then wait until ovs-vswitchd has applied it."""

        def build(idl: ovs.db.idl.Idl, txn: ovs.db.idl.Transaction) -> None:
            bridges = bridge_rows(idl)
            found = self.find_ports([*change.delete, *(want.name for want in change.fix)])
            interfaces = idl.tables["Interface"].rows
            for name in change.delete:
                row, home = found.get(name, (None, None))
                # Ownership is re-checked against the replica the transaction is built on.
                if row is None or mapping(row, "external_ids").get(OWNER_KEY) != owner:
                    continue
                verify(row, "external_ids")
                if home is not None:
                    home.delvalue("ports", row.uuid)
                for iface_uuid in uuids(row, "interfaces"):
                    iface_row = interfaces.get(iface_uuid)
                    if iface_row is not None:
                        iface_row.delete()
                row.delete()
            for want in change.fix:
                row = found[want.name][0]
                iface = interfaces[uuids(row, "interfaces")[0]]
                iface.type = want.iface_type
                for key, value in want.options:
                    iface.setkey("options", key, value)
                for key, value in want.iface_external_ids:
                    iface.setkey("external_ids", key, value)
                for key, value in want.port_external_ids:
                    row.setkey("external_ids", key, value)
            for want in change.create:
                bridge = bridges.get(want.bridge)
                if bridge is None:
                    raise OvsdbError(f"cannot create port {want.name}: bridge {want.bridge} does not exist")
                iface = txn.insert(idl.tables["Interface"])
                iface.name, iface.type = want.name, want.iface_type
                iface.options, iface.external_ids = dict(want.options), dict(want.iface_external_ids)
                port = txn.insert(idl.tables["Port"])
                port.name, port.interfaces, port.external_ids = want.name, [iface], dict(want.port_external_ids)
                bridge.addvalue("ports", port.uuid)

        self._call(f"ports: {change.describe()}", build, realize=True)

    def set_bridge_ids(self, bridge: str, set_ids: Mapping[str, str], remove: Iterable[str] = ()) -> None:
        """Set and remove keys of Bridge external_ids (mutations: other writers' keys are untouched)."""
        remove = list(remove)
        if not set_ids and not remove:
            return

        def build(idl: ovs.db.idl.Idl, txn: ovs.db.idl.Transaction) -> None:
            row = bridge_rows(idl).get(bridge)
            if row is None:
                raise OvsdbError(f"bridge {bridge} does not exist")
            for key in remove:
                row.delkey("external_ids", key)
            for key, value in set_ids.items():
                row.setkey("external_ids", key, value)

        # Bridge external_ids are not read by ovs-vswitchd: nothing to wait for.
        self._call(f"bridge {bridge} external_ids: +{len(set_ids)} -{len(remove)}", build, realize=False)

    def submit(self, what: str, build: Builder, realize: bool) -> Future:
        """Queue one transaction; the future resolves (None) once it committed and, with `realize`, once
        ovs-vswitchd applied it, or fails with OvsdbError. `view` already shows the change when it resolves.
        `build` should `verify` (this module's helper) the columns whose values it decided on."""
        request = _Request(what, build, realize)
        request.future.set_running_or_notify_cancel()  # a caller giving up must not cancel it under us
        with self._lock:
            if self._closed or self._stopping.is_set():
                request.future.set_exception(OvsdbError(f"{what}: OVSDB client stopped", transient=True))
                return request.future
            self._queue.append(request)
        if not self._send_here():
            self._wake()
        return request.future

    def _send_here(self) -> bool:
        """Build and send the request just queued on the caller's thread when the IDL is idle; True if done.

        Saves waking the IDL thread for it, which on a loaded machine is a scheduling delay per transaction
        (a CNI DEL is one commit). The IDL thread still reads the answer, as for any other transaction."""
        if threading.get_ident() == self._thread.ident or not self._connected:
            return False
        if not self._idl_lock.acquire(blocking=False):
            return False  # the IDL thread is at work: it takes the request from the queue
        try:
            if self._stopping.is_set() or self._active is not None or not self._synced.is_set():
                return False
            self._step()
            # Output that did not fit the socket needs the IDL thread to wait for POLLOUT: wake it.
            return not self._idl._session.get_backlog()
        finally:
            self._idl_lock.release()

    def find_ports(self, names: Iterable[str]) -> dict[str, tuple[ovs.db.idl.Row, ovs.db.idl.Row | None]]:
        """Port name → (its Port row, the Bridge row listing it or None), for the names that exist.

        For builders only (under the IDL lock): answered from the replica's name index, which follows every
        IDL change before a builder runs, so no bridge's port set is scanned."""
        if self._idl.change_seqno != self._published_seqno:
            self._publish()  # not expected (builders run after the loop published), but never read a stale index
        ports, bridges = self._idl.tables["Port"].rows, self._idl.tables["Bridge"].rows
        found: dict[str, tuple[ovs.db.idl.Row, ovs.db.idl.Row | None]] = {}
        for name in names:
            port_uuid = self._replica.uuid_of.get(name)
            row = ports.get(port_uuid) if port_uuid is not None else None
            if row is None:
                continue
            bridge_uuid = self._replica.home_uuid.get(port_uuid)
            found[name] = (row, bridges.get(bridge_uuid) if bridge_uuid is not None else None)
        return found

    def _call(self, what: str, build: Builder, realize: bool) -> None:
        timeout = self.settings.txn_timeout + (self.settings.realize_timeout if realize else 0)
        self.submit(what, build, realize).result(timeout + 1)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # pipe full (already woken) or closed (stopped)
            os.write(self._wake_w, b"x")

    def _drain_wake(self) -> None:
        with contextlib.suppress(OSError):  # nothing to read
            os.read(self._wake_r, 4096)

    # -- the IDL thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                with self._idl_lock:
                    poller = self._iterate()
                poller.block()
                self._drain_wake()
            except Exception:  # the thread must survive; the request in flight gets the error
                log.exception("OVSDB loop error")
                with self._idl_lock:
                    if self._active is not None:
                        self._finish(self._active, OvsdbError("internal error in the OVSDB loop (see log)"))
                time.sleep(0.1)

    def _iterate(self) -> ovs.poller.Poller:
        """One turn of the IDL thread (holding the IDL lock): read, publish, move transactions on; returns the
        poller to sleep on (outside the lock, so a submitter may send meanwhile: see `_send_here`)."""
        self._idl.run()
        self._track_session()
        if self._idl.change_seqno != self._published_seqno:
            self._publish()
        self._check_realizing()
        self._step()
        poller = ovs.poller.Poller()
        self._idl.wait(poller)
        if self._active and self._active.txn:
            self._active.txn.wait(poller)
        elif self._connected and (self._active or self._queue):
            poller.immediate_wake()  # a request to (re)build now: do not sleep on it
        poller.fd_wait(self._wake_r, ovs.poller.POLLIN)
        poller.timer_wait(_TICK_MS)
        return poller

    def _track_session(self) -> None:
        # python-ovs exposes reconnects only through the session's seqno (it moves on connect and disconnect).
        session = self._idl._session
        seqno = session.get_seqno()
        if seqno != self._session_seqno:
            if self._session_seqno is not None and session.is_connected():
                self._reconnected = True
                self._replica.reset()  # the IDL reloads everything without per-row notices
                log.warning("OVSDB connection to %s re-established", self.settings.remote)
            self._session_seqno = seqno
        self._connected = session.is_connected() and self._idl.state == self._idl.IDL_S_MONITORING

    def _publish(self) -> None:
        self._published_seqno = self._idl.change_seqno
        self._view = self._replica.publish(self._idl)
        first = not self._synced.is_set()
        self._synced.set()
        if first:
            return
        kind = "reconnected" if self._reconnected else "update"
        self._reconnected = False
        for listener in self._listeners:
            listener(kind)

    def _step(self) -> None:
        """Move the committing request on; when it is done, start the next one in the queue."""
        while True:
            request = self._active
            if request is None:
                with self._lock:
                    if not self._queue:
                        return
                    request = self._active = self._queue.popleft()
                request.deadline = time.monotonic() + self.settings.txn_timeout
            if request.txn is None:
                if not self._connected or not self._synced.is_set():
                    self._check_deadline(request, "not connected to OVSDB")
                    return
                txn = ovs.db.idl.Transaction(self._idl)
                txn.add_comment(f"dpf: {request.what}")
                try:
                    request.build(self._idl, txn)
                except Exception as exc:  # noqa: BLE001 - a builder error fails only its own request
                    txn.abort()
                    self._finish(request, exc if isinstance(exc, OvsdbError) else OvsdbError(f"{request.what}: {exc}"))
                    continue
                if request.realize:
                    _root(self._idl).increment("next_cfg")
                request.txn = txn
            status = request.txn.commit()
            if status == ovs.db.idl.Transaction.INCOMPLETE:
                self._check_deadline(request, "commit did not complete")
                return
            if status == ovs.db.idl.Transaction.SUCCESS and request.realize:
                self._active = None
                request.target_cfg = request.txn.get_increment_new_value()
                request.deadline = time.monotonic() + self.settings.realize_timeout
                self._realizing.append(request)
                self._check_realizing()
            elif status in (ovs.db.idl.Transaction.SUCCESS, ovs.db.idl.Transaction.UNCHANGED):
                self._finish(request, None)
            elif status == ovs.db.idl.Transaction.TRY_AGAIN and request.attempts < _RETRIES:
                request.attempts += 1
                request.txn = None  # built again from the replica, which has the other writer's change
                return
            else:
                error = request.txn.get_error() or ovs.db.idl.Transaction.status_to_string(status)
                self._finish(request, OvsdbError(f"{request.what}: transaction failed: {error}",
                                                 transient=status == ovs.db.idl.Transaction.TRY_AGAIN))

    def _check_realizing(self) -> None:
        if not self._realizing or not self._idl.tables["Open_vSwitch"].rows:
            return
        cur_cfg = _root(self._idl).cur_cfg
        now = time.monotonic()
        for request in list(self._realizing):
            if cur_cfg >= request.target_cfg:
                self._finish(request, None)
            elif now > request.deadline:
                self._finish(request, NotRealized(
                    f"{request.what}: committed, but ovs-vswitchd has not applied it after "
                    f"{self.settings.realize_timeout:.0f}s (next_cfg {request.target_cfg}, cur_cfg {cur_cfg}); "
                    "is ovs-vswitchd running?"))

    def _check_deadline(self, request: _Request, why: str) -> None:
        if time.monotonic() > request.deadline:
            self._finish(request, OvsdbError(f"{request.what}: {why} within {self.settings.txn_timeout:.0f}s",
                                             transient=True))

    def _finish(self, request: _Request, error: BaseException | None) -> None:
        if self._active is request:
            self._active = None
        with contextlib.suppress(ValueError):
            self._realizing.remove(request)
        if request.future.done():
            return
        if self._idl.change_seqno != self._published_seqno:
            self._publish()  # the caller reads `view` next: it must already show this transaction
        if error is None:
            request.future.set_result(None)
        else:
            request.future.set_exception(error)


class _NotifyingIdl(ovs.db.idl.Idl):
    def __init__(self, remote: str, helper: ovs.db.idl.SchemaHelper,
                 on_row: Callable[[str, ovs.db.idl.Row, ovs.db.idl.Row | None], None]) -> None:
        super().__init__(remote, helper)
        self._on_row = on_row

    def notify(self, event: str, row: ovs.db.idl.Row, updates: ovs.db.idl.Row | None = None) -> None:
        self._on_row(event, row, updates)


def verify(row: ovs.db.idl.Row, *columns: str) -> None:
    """Make the transaction in progress fail with TRY_AGAIN if `columns` of `row` changed since it was read.

    python-ovs's `Row.verify` only records the prerequisite; it is sent only for rows the transaction
    also changes, so the row is enrolled here too (an unchanged enrolled row sends nothing else)."""
    for column in columns:
        row.verify(column)
    row._idl.txn._txn_rows[row.uuid] = row


def scalar(row: ovs.db.idl.Row, column: str) -> Any:
    """The value of a column with at most one value, as the server last sent it (None when empty).

    These readers skip python-ovs's `Row.__getattr__` (see the module docstring); only for rows of the
    replica (a row inserted by the transaction being built has no server data yet)."""
    values = row._data[column].values
    return next(iter(values)).value if values else None


def uuids(row: ovs.db.idl.Row, column: str) -> list[uuid.UUID]:
    """The UUIDs of a set-of-references column (e.g. Bridge ports), as the server last sent them."""
    return [atom.value for atom in row._data[column].values]


def mapping(row: ovs.db.idl.Row, column: str) -> dict:
    """A map column (e.g. external_ids) as a new dict, as the server last sent it."""
    return {key.value: value.value for key, value in row._data[column].values.items()}


def bridge_rows(idl: ovs.db.idl.Idl) -> dict[str, ovs.db.idl.Row]:
    """Bridge name → row (a switch has a handful of bridges)."""
    return {scalar(row, "name"): row for row in idl.tables["Bridge"].rows.values()}


def _root(idl: ovs.db.idl.Idl) -> ovs.db.idl.Row:
    return next(iter(idl.tables["Open_vSwitch"].rows.values()))


def _empty_to_none(value: Any) -> Any:
    return value if value else None


class _Replica:
    """The SwitchView, kept up to date row by row from the IDL's change notices.

    Rebuilding every port on each change costs about 10 ms per 1,000 ports in pure Python, and every
    transaction of ours (a chain record on the bridge) is a change; so only ports whose Port or
    Interface rows (or bridge membership) changed are rebuilt, and an unchanged `ports` mapping is
    published as the same object, which tells the programmer it may skip its port pass.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.full = True
        self.dirty: set[Any] = set()
        self.bridges_dirty = True
        self.members: dict[Any, set[Any]] = {}  # bridge uuid → port uuids
        self.home: dict[object, str] = {}  # port uuid → bridge name
        self.home_uuid: dict[object, object] = {}  # port uuid → bridge uuid
        self.name_of: dict[object, str] = {}  # port uuid → port name
        self.uuid_of: dict[str, object] = {}  # port name → port uuid (names are unique in the Port table)
        self.iface_owner: dict[object, object] = {}  # interface uuid → port uuid
        self.view = SwitchView()

    def note(self, event: str, row: ovs.db.idl.Row, updates: ovs.db.idl.Row | None) -> None:
        table = row._table.name
        if table == "Port":
            self.dirty.add(row.uuid)
        elif table == "Interface":
            owner = self.iface_owner.get(row.uuid)
            if owner is not None:
                self.dirty.add(owner)
        elif table == "Bridge":
            self.bridges_dirty = True
            if event != ovs.db.idl.ROW_UPDATE or updates is None or "ports" in updates._data:
                new = set() if event == ovs.db.idl.ROW_DELETE else set(uuids(row, "ports"))
                old = self.members.get(row.uuid, set())
                self.dirty |= old ^ new
                for port in old - new:
                    if self.home_uuid.get(port) == row.uuid:
                        self.home.pop(port, None)
                        self.home_uuid.pop(port, None)
                name = scalar(row, "name")
                for port in new:
                    self.home[port] = name
                    self.home_uuid[port] = row.uuid
                self.members[row.uuid] = new

    def publish(self, idl: ovs.db.idl.Idl) -> SwitchView:
        tables = idl.tables
        if self.full:
            self.members = {b.uuid: set(uuids(b, "ports")) for b in tables["Bridge"].rows.values()}
            self.home = {p: scalar(b, "name") for b in tables["Bridge"].rows.values()
                         for p in self.members[b.uuid]}
            self.home_uuid = {p: b for b, members in self.members.items() for p in members}
            self.dirty = set(tables["Port"].rows) | set(self.name_of)
        view = self.view
        bridges = view.bridges
        if self.bridges_dirty or self.full:
            bridges = {}
            for row in tables["Bridge"].rows.values():
                name = scalar(row, "name")
                bridges[name] = ObservedBridge(name, scalar(row, "fail_mode"),
                                               scalar(row, "datapath_type"),
                                               mapping(row, "external_ids"))
        ports, by_dpf_id = view.ports, view.by_dpf_id
        if self.dirty:
            ports, by_dpf_id = dict(view.ports) if not self.full else {}, dict(view.by_dpf_id) if not self.full else {}
            for port_uuid in self.dirty:  # first unindex every changed row: a name may move to a new row (replace)
                old_name = self.name_of.pop(port_uuid, None)
                if old_name is not None:
                    if self.uuid_of.get(old_name) == port_uuid:
                        del self.uuid_of[old_name]
                    if old_name in ports:
                        _unindex(by_dpf_id, ports.pop(old_name))
            interfaces = tables["Interface"].rows
            for port_uuid in self.dirty:
                row = tables["Port"].rows.get(port_uuid)
                if row is None:
                    continue
                iface_uuids = uuids(row, "interfaces")
                for iface_uuid in iface_uuids:
                    self.iface_owner[iface_uuid] = port_uuid
                port = _observe(row, interfaces.get(iface_uuids[0]) if iface_uuids else None,
                                self.home.get(port_uuid))
                self.name_of[port_uuid] = port.name
                self.uuid_of[port.name] = port_uuid
                ports[port.name] = port
                dpf_id = port.iface_external_ids.get("dpf-id")
                if dpf_id:
                    by_dpf_id[dpf_id] = tuple(sorted({*by_dpf_id.get(dpf_id, ()), port.name}))
        rows = list(tables["Open_vSwitch"].rows.values())
        self.view = SwitchView(bridges=bridges, ports=ports, by_dpf_id=by_dpf_id,
                               cur_cfg=scalar(rows[0], "cur_cfg") if rows else 0)
        self.full, self.bridges_dirty = False, False
        self.dirty = set()
        return self.view


def _unindex(by_dpf_id: dict[str, tuple[str, ...]], port: ObservedPort) -> None:
    dpf_id = port.iface_external_ids.get("dpf-id")
    if dpf_id and dpf_id in by_dpf_id:
        rest = tuple(n for n in by_dpf_id[dpf_id] if n != port.name)
        if rest:
            by_dpf_id[dpf_id] = rest
        else:
            del by_dpf_id[dpf_id]


def _observe(row: ovs.db.idl.Row, iface: ovs.db.idl.Row | None, bridge: str | None) -> ObservedPort:
    """The Port row and its first Interface row (None: not in the replica) as plain data."""
    return ObservedPort(
        name=scalar(row, "name"), bridge=bridge, external_ids=mapping(row, "external_ids"),
        iface_type=scalar(iface, "type") if iface else "",
        iface_options=mapping(iface, "options") if iface else {},
        iface_external_ids=mapping(iface, "external_ids") if iface else {},
        ofport=_empty_to_none(scalar(iface, "ofport")) if iface else None,
        error=scalar(iface, "error") if iface else None)
