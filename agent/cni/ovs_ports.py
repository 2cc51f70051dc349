"""OVS ports of CNI attachments: add and delete them in batched transactions on the agent's OVSDB client.

Used by `dpf.agent.cni.attach`. Every transaction goes through the IDL of `dpf.agent.sfc.ovsdb`,
the process's one OVSDB connection (shared with the SFC programmer in the DPU agent, owned by us when
the CNI server runs alone: `OvsPorts.standalone`). Requests that arrive while a transaction is in
flight are merged into the next one (one OVSDB transaction and one vswitchd reconfiguration for a
burst of pods), and `add` returns only when vswitchd has realized the port with a live ofport (the
transaction bumps `next_cfg`; the client resolves it when the IDL sees `cur_cfg` catch up). Each
transaction is built from the replica and `verify`s what it decided on (the bridges' port sets), so a
concurrent writer makes it rebuild (TRY_AGAIN) instead of acting on a stale read. Every row carries
our owner marker so stale-port cleanup elsewhere can tell CNI ports from its own. A port of the same
name is replaced in the same transaction, so ADD is idempotent. Reads (`owned`, `bridges`,
`datapath`) come from the client's published view, without a round trip. Never touches flows or links.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from dpf.agent.cni.errors import SwitchError
from dpf.agent.sfc.ovsdb import Builder, Ovsdb, OvsdbError, OvsdbSettings, bridge_rows, verify
from dpf.agent.sfc.view import SwitchView

log = logging.getLogger(__name__)

OWNER_KEY = "dpf-owner"
OWNER = "dpf-cni"
MAX_BATCH = 64


@dataclass(frozen=True)
class PortSpec:
    bridge: str
    name: str
    iface_type: str = ""
    ofport_request: int | None = None
    vlan: int | None = None
    trunks: tuple[int, ...] = ()
    external_ids: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class OwnedPort:
    name: str
    ofport: int
    external_ids: dict[str, str]


@dataclass
class _Op:
    kind: str  # "add" | "del"
    name: str
    spec: PortSpec | None
    done: asyncio.Future = field(repr=False)


class OvsPorts:
    def __init__(self, ovsdb: Ovsdb) -> None:
        self.ovsdb = ovsdb
        self._queue: asyncio.Queue[_Op] = asyncio.Queue()
        self._held: _Op | None = None  # the op that ended the last batch: its port was already in it
        self._worker: asyncio.Task | None = None

    @classmethod
    def standalone(cls, remote: str, timeout: float = 10.0) -> OvsPorts:
        """For a CNI server run on its own (tests, the benchmark, debugging): a client of its own."""
        return cls(Ovsdb(OvsdbSettings(remote, connect_timeout=timeout, txn_timeout=timeout,
                                       realize_timeout=timeout)))

    async def start(self) -> None:
        """Join the client (connecting it if we are its first user); raises SwitchError if OVSDB is down."""
        try:
            await asyncio.to_thread(self.ovsdb.start)
        except OvsdbError as exc:
            raise SwitchError(str(exc), transient=True) from exc
        self._worker = asyncio.create_task(self._run(), name="cni-ovs-ports")

    async def stop(self) -> None:
        if self._worker:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None
            await asyncio.to_thread(self.ovsdb.stop)

    # -- public ---------------------------------------------------------------------------------

    async def add(self, spec: PortSpec) -> int:
        """Create (or replace) the port; return its ofport once vswitchd has it live."""
        return await self._submit(_Op("add", spec.name, spec, asyncio.get_running_loop().create_future()))

    async def delete(self, name: str) -> None:
        await self._submit(_Op("del", name, None, asyncio.get_running_loop().create_future()))

    async def owned(self) -> list[OwnedPort]:
        view = await self._view()
        return [OwnedPort(p.name, p.ofport or -1, dict(p.iface_external_ids)) for p in view.ports.values()
                if p.iface_external_ids.get(OWNER_KEY) == OWNER]

    async def bridges(self) -> dict[str, str]:
        """Bridge name -> datapath_type ('' is the kernel datapath, 'netdev' the userspace one).

        Answers at once (STATUS is a probe): SwitchError while the OVSDB connection is down."""
        if not self.ovsdb.connected:
            raise SwitchError(f"OVSDB at {self.ovsdb.settings.remote} is not reachable", transient=True)
        return {name: b.datapath_type for name, b in self.ovsdb.view.bridges.items()}

    def datapath(self, bridge: str) -> str | None:
        """The bridge's datapath_type as last seen."""
        found = self.ovsdb.view.bridges.get(bridge)
        return found.datapath_type if found else None

    async def _view(self) -> SwitchView:
        """The replica; after a lost connection, once it is back (bounded by the client's txn timeout)."""
        if not self.ovsdb.connected:
            await self._transact("wait for the OVSDB connection", lambda idl, txn: None, realize=False)
        return self.ovsdb.view

    # -- batching -------------------------------------------------------------------------------

    async def _submit(self, op: _Op) -> int:
        if self._worker is None:
            raise SwitchError("OVS port worker is not running", transient=True)
        await self._queue.put(op)
        return await op.done

    async def _run(self) -> None:
        while True:
            batch = [self._held or await self._queue.get()]
            self._held = None
            names = {batch[0].name}
            while not self._queue.empty() and len(batch) < MAX_BATCH:
                op = self._queue.get_nowait()
                if op.name in names:  # a second change of one port goes into the next transaction, in order
                    self._held = op
                    break
                names.add(op.name)
                batch.append(op)
            try:
                await self._apply(batch)
            except Exception as exc:  # noqa: BLE001 - every waiter must hear about it; the loop goes on
                for op in batch:
                    _settle(op, error=exc if isinstance(exc, SwitchError) else SwitchError(str(exc)))

    async def _apply(self, batch: Sequence[_Op]) -> None:
        bridges = self.ovsdb.view.bridges
        for op in batch:
            if op.spec is not None and op.spec.bridge not in bridges:
                _settle(op, error=SwitchError(_no_bridge(op.spec.bridge), transient=True))
        batch = [op for op in batch if not op.done.done()]
        if not batch:
            return
        adds = [op.spec for op in batch if op.spec is not None]
        dels = [op.name for op in batch if op.spec is None]
        try:
            await self._transact(f"cni ports: +{len(adds)} -{len(dels)}", _builder(self.ovsdb, adds, dels),
                                 realize=bool(adds))
        except SwitchError:
            if len(batch) == 1:
                raise
            for op in batch:  # attribute the failure to the request that caused it
                await self._apply_one(op)
            return
        ports = self.ovsdb.view.ports  # already shows the transaction and vswitchd's answer to it
        for op in batch:
            if op.spec is None:
                _settle(op, None)
                continue
            port = ports.get(op.name)
            if port is not None and port.ofport and port.ofport > 0:
                _settle(op, port.ofport)
            else:
                detail = port.error if port is not None and port.error else "no ofport assigned"
                _settle(op, error=SwitchError(f"OVS could not attach {op.name}: {detail}"))

    async def _apply_one(self, op: _Op) -> None:
        try:
            await self._apply([op])
        except SwitchError as exc:
            _settle(op, error=exc)

    async def _transact(self, what: str, build: Builder, realize: bool) -> None:
        try:
            await asyncio.wrap_future(self.ovsdb.submit(what, build, realize))
        except OvsdbError as exc:
            raise SwitchError(str(exc), transient=exc.transient) from exc


def _no_bridge(bridge: str) -> str:
    return f"bridge {bridge!r} (netconf field bridge) does not exist on this node"


def _settle(op: _Op, result: int | None = None, error: BaseException | None = None) -> None:
    if op.done.done():  # the caller gave up (cancelled); its rollback deletes the port
        return
    if error is None:
        op.done.set_result(result)
    else:
        op.done.set_exception(error)


def _builder(ovsdb: Ovsdb, adds: Sequence[PortSpec], dels: Sequence[str]) -> Builder:
    """One transaction for the batch, run under the IDL lock (again after TRY_AGAIN, on the fresh replica).

    A port of a wanted name is unlinked from its bridge (OVSDB garbage-collects the Port and Interface
    rows) and, for an add, inserted anew. The port sets we decided on are verified: if another writer
    changed one since the replica was read, the commit returns TRY_AGAIN and this runs again. Ports are
    found through the client's name index (`Ovsdb.find_ports`), not by reading every bridge's ports."""
    names = list(dict.fromkeys([*(spec.name for spec in adds), *dels]))

    def build(idl: Any, txn: Any) -> None:  # python-ovs Idl and Transaction (only ovsdb.py imports ovs)
        bridges = bridge_rows(idl)
        for port, bridge in ovsdb.find_ports(names).values():
            if bridge is None:  # listed by no bridge: OVSDB is about to collect it
                continue
            verify(bridge, "ports")
            bridge.delvalue("ports", port.uuid)
        for spec in adds:
            bridge = bridges.get(spec.bridge)
            if bridge is None:
                raise OvsdbError(_no_bridge(spec.bridge), transient=True)
            verify(bridge, "ports")  # the name is not on it (or was unlinked above): decided on this read
            iface = txn.insert(idl.tables["Interface"])
            iface.name = spec.name
            iface.external_ids = {**dict(spec.external_ids), OWNER_KEY: OWNER}
            if spec.iface_type:
                iface.type = spec.iface_type
            if spec.ofport_request:
                iface.ofport_request = spec.ofport_request
            port = txn.insert(idl.tables["Port"])
            port.name, port.interfaces, port.external_ids = spec.name, [iface], {OWNER_KEY: OWNER}
            if spec.vlan is not None:
                port.tag = spec.vlan
            if spec.trunks:
                port.trunks = list(spec.trunks)
            bridge.addvalue("ports", port.uuid)

    return build
