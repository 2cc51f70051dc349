"""The SFC agent's one OVSDB connection: the python-ovs IDL, the thread that owns it, port transactions.

The only module that imports `ovs`. Callers (the programmer's worker thread) never touch the IDL:
they call `ensure_bridge`, `apply_ports` or `set_bridge_ids`, each of which hands a transaction
builder to the IDL thread and waits on a future with a deadline. One call is one transaction.
After a port change we bump `next_cfg` and wait for ovs-vswitchd to report `cur_cfg >= next_cfg`:
committed is not realised. Replica changes are published as an immutable `SwitchView` and announced
through `on_event("update" | "reconnected")`, which must only enqueue (it runs on the IDL thread).

Why python-ovs rather than ovsdbapp: ovsdbapp wraps this same IDL in a command/threading layer made for
Neutron (its own connection thread, command objects, pbr/fixtures/netaddr dependencies). We need
exactly one IDL on one thread, one hand-built transaction per change set, map mutations that leave
other writers' keys alone, and the raw `next_cfg`/`cur_cfg` handshake; python-ovs gives all of that
directly, and measured 0.55 ms per transaction here (shared/notes/environment.md §2).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import ovs.db.idl
import ovs.poller

from dpf.agent.sfc.desired import OWNER_KEY, PortChange
from dpf.agent.sfc.settings import SfcSettings
from dpf.agent.sfc.view import ObservedBridge, ObservedPort, SwitchView

log = logging.getLogger(__name__)

SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")
COLUMNS = {
    "Open_vSwitch": ["bridges", "cur_cfg", "next_cfg"],
    "Bridge": ["name", "ports", "fail_mode", "datapath_type", "external_ids"],
    "Port": ["name", "interfaces", "external_ids"],
    "Interface": ["name", "type", "options", "external_ids", "ofport", "error"],
}
_RETRIES = 5  # TRY_AGAIN (a concurrent writer or a reconnect) before a transaction is given up
_TICK_MS = 100  # the loop's longest sleep: deadlines are checked at least this often


class OvsdbError(RuntimeError):
    """A transaction failed or timed out; the message names it and the server's error."""


class NotRealized(OvsdbError):
    """The transaction committed but ovs-vswitchd did not apply it in time (is it running?)."""


Builder = Callable[[ovs.db.idl.Idl, ovs.db.idl.Transaction], None]


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
    def __init__(self, settings: SfcSettings, on_event: Callable[[str], None], schema: Path = SCHEMA) -> None:
        self.settings = settings
        self._on_event = on_event
        helper = ovs.db.idl.SchemaHelper(location=str(schema))
        for table, columns in COLUMNS.items():
            helper.register_columns(table, columns)
        self._replica = _Replica()
        self._idl = _NotifyingIdl(settings.remote, helper, self._replica.note)
        self._view = SwitchView()
        self._synced = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._queue: deque[_Request] = deque()
        self._active: _Request | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._thread = threading.Thread(target=self._run, name="sfc-ovsdb", daemon=True)
        self._published_seqno = 0
        self._session_seqno: int | None = None
        self._reconnected = False

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()
        if not self._synced.wait(self.settings.ovsdb_connect_timeout):
            self.stop()
            raise OvsdbError(f"no OVSDB replica from {self.settings.remote} within "
                             f"{self.settings.ovsdb_connect_timeout:.0f}s: is ovsdb-server running?")

    def stop(self) -> None:
        self._stopping.set()
        self._wake()
        if self._thread.is_alive():
            self._thread.join(5)
        self._idl.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        with self._lock:
            pending = [*self._queue, *([self._active] if self._active else [])]
            self._queue.clear()
            self._active = None
        for request in pending:
            if not request.future.done():
                request.future.set_exception(OvsdbError(f"{request.what}: OVSDB client stopped"))

    @property
    def view(self) -> SwitchView:
        return self._view

    # -- transactions (any thread) -----------------------------------------------------------------

    def ensure_bridge(self, name: str, datapath_type: str, owner: str) -> bool:
        """Create bridge `name` (fail_mode=secure) unless it exists; True when it was created."""
        created = []

        def build(idl: ovs.db.idl.Idl, txn: ovs.db.idl.Transaction) -> None:
            if any(row.name == name for row in idl.tables["Bridge"].rows.values()):
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
            bridges = {row.name: row for row in idl.tables["Bridge"].rows.values()}
            ports = {row.name: row for row in idl.tables["Port"].rows.values()}
            home = {port.uuid: bridge for bridge in bridges.values() for port in bridge.ports}
            for name in change.delete:
                row = ports.get(name)
                # Ownership is re-checked against the replica the transaction is built on.
                if row is None or row.external_ids.get(OWNER_KEY) != owner:
                    continue
                if row.uuid in home:
                    home[row.uuid].delvalue("ports", row.uuid)
                for iface in row.interfaces:
                    iface.delete()
                row.delete()
            for want in change.fix:
                row = ports[want.name]
                iface = row.interfaces[0]
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
            row = next((r for r in idl.tables["Bridge"].rows.values() if r.name == bridge), None)
            if row is None:
                raise OvsdbError(f"bridge {bridge} does not exist")
            for key in remove:
                row.delkey("external_ids", key)
            for key, value in set_ids.items():
                row.setkey("external_ids", key, value)

        # Bridge external_ids are not read by ovs-vswitchd: nothing to wait for.
        self._call(f"bridge {bridge} external_ids: +{len(set_ids)} -{len(remove)}", build, realize=False)

    def _call(self, what: str, build: Builder, realize: bool) -> None:
        if self._stopping.is_set():
            raise OvsdbError(f"{what}: OVSDB client stopped")
        request = _Request(what, build, realize)
        timeout = self.settings.ovsdb_txn_timeout + (self.settings.realize_timeout if realize else 0)
        with self._lock:
            self._queue.append(request)
        self._wake()
        request.future.result(timeout + 1)

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
                self._idl.run()
                self._track_session()
                self._step()
                if self._idl.change_seqno != self._published_seqno:
                    self._publish()
                poller = ovs.poller.Poller()
                self._idl.wait(poller)
                if self._active and self._active.txn:
                    self._active.txn.wait(poller)
                poller.fd_wait(self._wake_r, ovs.poller.POLLIN)
                poller.timer_wait(_TICK_MS)
                poller.block()
                self._drain_wake()
            except Exception:  # the thread must survive; the request in flight gets the error
                log.exception("OVSDB loop error")
                self._fail(OvsdbError("internal error in the OVSDB loop (see log)"))
                time.sleep(0.1)

    def _track_session(self) -> None:
        # python-ovs exposes reconnects only through the session's seqno (it moves on connect and disconnect).
        seqno = self._idl._session.get_seqno()
        if seqno != self._session_seqno:
            if self._session_seqno is not None and self._idl._session.is_connected():
                self._reconnected = True
                self._replica.reset()  # the IDL reloads everything without per-row notices
                log.warning("OVSDB connection to %s re-established", self.settings.remote)
            self._session_seqno = seqno

    def _publish(self) -> None:
        self._published_seqno = self._idl.change_seqno
        self._view = self._replica.publish(self._idl)
        first = not self._synced.is_set()
        self._synced.set()
        if first:
            return
        kind = "reconnected" if self._reconnected else "update"
        self._reconnected = False
        self._on_event(kind)

    def _step(self) -> None:
        request = self._active
        if request is None:
            with self._lock:
                if not self._queue:
                    return
                request = self._active = self._queue.popleft()
            request.deadline = time.monotonic() + self.settings.ovsdb_txn_timeout
        if request.target_cfg is not None:
            self._check_realized(request)
            return
        if request.txn is None:
            if not self._idl._session.is_connected() or not self._synced.is_set():
                self._check_deadline(request, "not connected to OVSDB")
                return
            txn = ovs.db.idl.Transaction(self._idl)
            txn.add_comment(f"dpf-sfc: {request.what}")
            try:
                request.build(self._idl, txn)
            except Exception as exc:  # noqa: BLE001 - a builder error fails only its own request
                txn.abort()
                self._finish(exc if isinstance(exc, OvsdbError) else OvsdbError(f"{request.what}: {exc}"))
                return
            if request.realize:
                _root(self._idl).increment("next_cfg")
            request.txn = txn
        status = request.txn.commit()
        if status == ovs.db.idl.Transaction.INCOMPLETE:
            self._check_deadline(request, "commit did not complete")
        elif status == ovs.db.idl.Transaction.SUCCESS and request.realize:
            request.target_cfg = request.txn.get_increment_new_value()
            request.deadline = time.monotonic() + self.settings.realize_timeout
            self._check_realized(request)
        elif status in (ovs.db.idl.Transaction.SUCCESS, ovs.db.idl.Transaction.UNCHANGED):
            self._finish(None)
        elif status == ovs.db.idl.Transaction.TRY_AGAIN and request.attempts < _RETRIES:
            request.attempts += 1
            request.txn = None
        else:
            error = request.txn.get_error() or ovs.db.idl.Transaction.status_to_string(status)
            self._finish(OvsdbError(f"{request.what}: transaction failed: {error}"))

    def _check_realized(self, request: _Request) -> None:
        if _root(self._idl).cur_cfg >= request.target_cfg:
            self._finish(None)
        elif time.monotonic() > request.deadline:
            self._finish(NotRealized(f"{request.what}: committed, but ovs-vswitchd has not applied it after "
                                     f"{self.settings.realize_timeout:.0f}s (next_cfg {request.target_cfg}, "
                                     f"cur_cfg {_root(self._idl).cur_cfg}); is ovs-vswitchd running?"))

    def _check_deadline(self, request: _Request, why: str) -> None:
        if time.monotonic() > request.deadline:
            self._finish(OvsdbError(f"{request.what}: {why} within {self.settings.ovsdb_txn_timeout:.0f}s"))

    def _finish(self, error: BaseException | None) -> None:
        request, self._active = self._active, None
        if request is None or request.future.done():
            return
        if self._idl.change_seqno != self._published_seqno:
            self._publish()  # the caller reads `view` next: it must already show this transaction
        if error is None:
            request.future.set_result(None)
        else:
            request.future.set_exception(error)

    def _fail(self, error: BaseException) -> None:
        if self._active is not None:
            self._finish(error)


class _NotifyingIdl(ovs.db.idl.Idl):
    def __init__(self, remote: str, helper: ovs.db.idl.SchemaHelper,
                 on_row: Callable[[str, ovs.db.idl.Row, ovs.db.idl.Row | None], None]) -> None:
        super().__init__(remote, helper)
        self._on_row = on_row

    def notify(self, event: str, row: ovs.db.idl.Row, updates: ovs.db.idl.Row | None = None) -> None:
        self._on_row(event, row, updates)


def _root(idl: ovs.db.idl.Idl) -> ovs.db.idl.Row:
    return next(iter(idl.tables["Open_vSwitch"].rows.values()))


def _first(value: list) -> object | None:
    return value[0] if value else None


class _Replica:
    """The SwitchView, kept up to date row by row from the IDL's change notices.

    Rebuilding every port on each change costs about 10 ms per 1,000 ports in pure Python, and every
    transaction of ours (a chain record on the bridge) is a change; so only ports whose Port or
    Interface rows (or bridge membership) changed are rebuilt, and an unchanged `ports` mapping is
    published as the same object, which tells the programmer it may skip its port pass.
    """

    def __init__(self) -> None:
        self.full = True
        self.dirty: set[object] = set()
        self.bridges_dirty = True
        self.members: dict[object, set[object]] = {}  # bridge uuid → port uuids
        self.home: dict[object, str] = {}  # port uuid → bridge name
        self.name_of: dict[object, str] = {}  # port uuid → port name
        self.iface_owner: dict[object, object] = {}  # interface uuid → port uuid
        self.view = SwitchView()

    def reset(self) -> None:
        self.__init__()

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
                new = set() if event == ovs.db.idl.ROW_DELETE else {p.uuid for p in row.ports}
                old = self.members.get(row.uuid, set())
                self.dirty |= old ^ new
                for uuid in old - new:
                    self.home.pop(uuid, None)
                for uuid in new:
                    self.home[uuid] = row.name
                self.members[row.uuid] = new

    def publish(self, idl: ovs.db.idl.Idl) -> SwitchView:
        tables = idl.tables
        if self.full:
            self.members = {b.uuid: {p.uuid for p in b.ports} for b in tables["Bridge"].rows.values()}
            self.home = {p: b.name for b in tables["Bridge"].rows.values() for p in self.members[b.uuid]}
            self.dirty = set(tables["Port"].rows) | set(self.name_of)
        view = self.view
        bridges = view.bridges
        if self.bridges_dirty or self.full:
            bridges = {row.name: ObservedBridge(row.name, _first(row.fail_mode), row.datapath_type,
                                                dict(row.external_ids)) for row in tables["Bridge"].rows.values()}
        ports, by_dpf_id = view.ports, view.by_dpf_id
        if self.dirty:
            ports, by_dpf_id = dict(view.ports) if not self.full else {}, dict(view.by_dpf_id) if not self.full else {}
            for uuid in self.dirty:
                old_name = self.name_of.pop(uuid, None)
                if old_name is not None and old_name in ports:
                    _unindex(by_dpf_id, ports.pop(old_name))
                row = tables["Port"].rows.get(uuid)
                if row is None:
                    continue
                port = _observe(row, self.home.get(uuid))
                for iface in row.interfaces:
                    self.iface_owner[iface.uuid] = uuid
                self.name_of[uuid] = port.name
                ports[port.name] = port
                dpf_id = port.iface_external_ids.get("dpf-id")
                if dpf_id:
                    by_dpf_id[dpf_id] = tuple(sorted({*by_dpf_id.get(dpf_id, ()), port.name}))
        rows = list(tables["Open_vSwitch"].rows.values())
        self.view = SwitchView(bridges=bridges, ports=ports, by_dpf_id=by_dpf_id,
                               cur_cfg=rows[0].cur_cfg if rows else 0)
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


def _observe(row: ovs.db.idl.Row, bridge: str | None) -> ObservedPort:
    ifaces = row.interfaces
    iface = ifaces[0] if ifaces else None
    ofport = _first(iface.ofport) if iface else None
    return ObservedPort(
        name=row.name, bridge=bridge, external_ids=dict(row.external_ids),
        iface_type=iface.type if iface else "", iface_options=dict(iface.options) if iface else {},
        iface_external_ids=dict(iface.external_ids) if iface else {},
        ofport=ofport if ofport else None, error=_first(iface.error) if iface else None)
