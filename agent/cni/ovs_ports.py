"""OVS ports of CNI attachments: add and delete them in batched OVSDB transactions.

Used by `dpf.agent.cni.attach`. Requests that arrive while a transaction is in flight are merged
into the next one (one OVSDB transaction and one vswitchd reconfiguration for a burst of pods,
anchors pattern 4), and `add` returns only when vswitchd has realized the port with a live ofport
(pattern 7: `next_cfg` is bumped in the transaction and `cur_cfg` must catch up). Every row carries
our owner marker so stale-port cleanup elsewhere can tell CNI ports from its own. A port of the
same name is replaced in the same transaction, so ADD is idempotent. Never touches flows or links.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from dpf.agent.cni.errors import SwitchError
from dpf.agent.cni.ovsdb_rpc import OvsdbRpc, from_map, from_set, ovs_map

log = logging.getLogger(__name__)

OWNER_KEY = "dpf-owner"
OWNER = "dpf-cni"
MAX_BATCH = 64
BRIDGE_CACHE_SECONDS = 2.0
REALIZE_POLL = 0.002


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


@dataclass
class _Bridges:
    uuids: dict[str, str]
    datapaths: dict[str, str]
    read_at: float


def _eq(column: str, value: object) -> list:
    return [column, "==", value]


class OvsPorts:
    def __init__(self, db: str, timeout: float = 10.0) -> None:
        self.db = db
        self.timeout = timeout
        self._rpc = OvsdbRpc(db, timeout)
        self._queue: asyncio.Queue[_Op] = asyncio.Queue()
        self._worker: asyncio.Task | None = None
        self._bridges: _Bridges | None = None

    async def start(self) -> None:
        self._worker = asyncio.create_task(self._run(), name="cni-ovs-ports")

    async def stop(self) -> None:
        if self._worker:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None
        await self._rpc.close()

    # -- public ---------------------------------------------------------------------------------

    async def add(self, spec: PortSpec) -> int:
        """Create (or replace) the port; return its ofport once vswitchd has it live."""
        return await self._submit(_Op("add", spec.name, spec, asyncio.get_running_loop().create_future()))

    async def delete(self, name: str) -> None:
        await self._submit(_Op("del", name, None, asyncio.get_running_loop().create_future()))

    async def owned(self) -> list[OwnedPort]:
        where = [["external_ids", "includes", ovs_map({OWNER_KEY: OWNER})]]
        result = await self._rpc.transact([{"op": "select", "table": "Interface", "where": where,
                                            "columns": ["name", "ofport", "external_ids"]}])
        return [OwnedPort(r["name"], _ofport(r.get("ofport")), from_map(r["external_ids"])) for r in result[0]["rows"]]

    async def bridges(self) -> dict[str, str]:
        """Bridge name -> datapath_type ('' is the kernel datapath, 'netdev' the userspace one)."""
        return dict((await self._read_bridges(fresh=True)).datapaths)

    def datapath(self, bridge: str) -> str | None:
        """The bridge's datapath_type as last seen (re-read at most every BRIDGE_CACHE_SECONDS)."""
        return self._bridges.datapaths.get(bridge) if self._bridges else None

    # -- batching -------------------------------------------------------------------------------

    async def _submit(self, op: _Op) -> int:
        if self._worker is None:
            raise SwitchError("OVS port worker is not running", transient=True)
        await self._queue.put(op)
        return await op.done

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty() and len(batch) < MAX_BATCH:
                batch.append(self._queue.get_nowait())
            try:
                await self._apply(batch)
            except Exception as exc:  # noqa: BLE001 - every waiter must hear about it; the loop goes on
                for op in batch:
                    if not op.done.done():
                        op.done.set_exception(exc if isinstance(exc, SwitchError) else SwitchError(str(exc)))

    async def _read_bridges(self, fresh: bool = False) -> _Bridges:
        cached = self._bridges
        if cached is not None and not fresh and time.monotonic() - cached.read_at < BRIDGE_CACHE_SECONDS:
            return cached
        result = await self._rpc.transact([{"op": "select", "table": "Bridge", "where": [],
                                            "columns": ["_uuid", "name", "datapath_type"]}])
        rows = result[0]["rows"]
        self._bridges = _Bridges(uuids={r["name"]: r["_uuid"][1] for r in rows},
                                 datapaths={r["name"]: r["datapath_type"] for r in rows}, read_at=time.monotonic())
        return self._bridges

    async def _apply(self, batch: Sequence[_Op]) -> None:
        adds = [op for op in batch if op.kind == "add"]
        if adds:
            bridges = await self._read_bridges()
            if any(op.spec.bridge not in bridges.uuids for op in adds):
                bridges = await self._read_bridges(fresh=True)  # created since we last looked?
            for op in adds:
                if op.spec.bridge not in bridges.uuids:
                    op.done.set_exception(SwitchError(
                        f"bridge {op.spec.bridge!r} (netconf field bridge) does not exist on this node",
                        transient=True))
            batch = [op for op in batch if not op.done.done()]
            adds = [op for op in adds if not op.done.done()]
        if not batch:
            return
        try:
            target = await self._write(batch)
        except SwitchError:
            if len(batch) == 1:
                raise
            for op in batch:  # attribute the failure to the request that caused it
                await self._apply_one(op)
            return
        if adds:
            await self._realized(adds, target)
        for op in batch:
            if op.kind == "del":
                op.done.set_result(None)

    async def _apply_one(self, op: _Op) -> None:
        try:
            await self._apply([op])
        except SwitchError as exc:
            if not op.done.done():
                op.done.set_exception(exc)

    async def _write(self, batch: Sequence[_Op]) -> int | None:
        """One transaction for the batch; returns the next_cfg vswitchd must reach (adds only)."""
        names = list(dict.fromkeys(op.name for op in batch))
        reads = [{"op": "select", "table": "Port", "where": [_eq("name", n)], "columns": ["_uuid"]} for n in names]
        reads.append({"op": "select", "table": "Bridge", "where": [], "columns": ["_uuid", "ports"]})
        found = await self._rpc.transact(reads)
        existing = {n: r["rows"][0]["_uuid"][1] for n, r in zip(names, found, strict=False) if r["rows"]}
        owner_bridge = {port[1]: row["_uuid"][1] for row in found[-1]["rows"]
                        for port in from_set(row["ports"]) if isinstance(port, list)}
        ops: list[dict] = []
        for port_uuid in existing.values():  # replace or delete: unlink; OVSDB collects the rows
            bridge = owner_bridge.get(port_uuid)
            if bridge:
                ops.append({"op": "mutate", "table": "Bridge", "where": [_eq("_uuid", ["uuid", bridge])],
                            "mutations": [["ports", "delete", ["set", [["uuid", port_uuid]]]]]})
        adds = [op for op in batch if op.kind == "add"]
        for i, op in enumerate(adds):
            ops += _insert_port(op.spec, i, self._bridges.uuids[op.spec.bridge])
        if adds:
            ops.append({"op": "mutate", "table": "Open_vSwitch", "where": [], "mutations": [["next_cfg", "+=", 1]]})
            ops.append({"op": "select", "table": "Open_vSwitch", "where": [], "columns": ["next_cfg"]})
        if not ops:
            return None
        results = await self._rpc.transact(ops)
        return results[-1]["rows"][0]["next_cfg"] if adds else None

    async def _realized(self, adds: Sequence[_Op], target: int | None) -> None:
        """Wait until vswitchd applied the transaction (cur_cfg), then resolve each add with its ofport."""
        deadline = time.monotonic() + self.timeout
        while True:
            res = await self._rpc.transact([{"op": "select", "table": "Open_vSwitch", "where": [],
                                             "columns": ["cur_cfg"]}])
            if target is None or res[0]["rows"][0]["cur_cfg"] >= target:
                break
            if time.monotonic() > deadline:
                raise SwitchError(f"ovs-vswitchd did not apply the port change within {self.timeout:.0f}s "
                                  "(is it running?)", transient=True)
            await asyncio.sleep(REALIZE_POLL)
        reads = [{"op": "select", "table": "Interface", "where": [_eq("name", op.name)], "columns": ["ofport", "error"]}
                 for op in adds]
        rows = await self._rpc.transact(reads)
        for op, result in zip(adds, rows, strict=False):
            row = result["rows"][0] if result["rows"] else {}
            ofport = _ofport(row.get("ofport"))
            if ofport > 0:
                op.done.set_result(ofport)
            else:
                error = from_set(row.get("error"))
                detail = error[0] if error and isinstance(error[0], str) else "no ofport assigned"
                op.done.set_exception(SwitchError(f"OVS could not attach {op.name}: {detail}"))


def _ofport(value: object) -> int:
    return value if isinstance(value, int) else -1


def _insert_port(spec: PortSpec, i: int, bridge_uuid: str) -> list[dict]:
    iface: dict = {"name": spec.name, "external_ids": ovs_map((*spec.external_ids, (OWNER_KEY, OWNER)))}
    if spec.iface_type:
        iface["type"] = spec.iface_type
    if spec.ofport_request:
        iface["ofport_request"] = spec.ofport_request
    port: dict = {"name": spec.name, "interfaces": ["named-uuid", f"iface{i}"],
                  "external_ids": ovs_map({OWNER_KEY: OWNER})}
    if spec.vlan is not None:
        port["tag"] = spec.vlan
    if spec.trunks:
        port["trunks"] = ["set", list(spec.trunks)]
    return [{"op": "insert", "table": "Interface", "row": iface, "uuid-name": f"iface{i}"},
            {"op": "insert", "table": "Port", "row": port, "uuid-name": f"port{i}"},
            {"op": "mutate", "table": "Bridge", "where": [_eq("_uuid", ["uuid", bridge_uuid])],
             "mutations": [["ports", "insert", ["set", [["named-uuid", f"port{i}"]]]]]}]
