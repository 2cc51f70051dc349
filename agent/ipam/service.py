"""The node's lease table: allocate, release and reclaim pod IPs, durable before they are handed out.

Used by the agent's CNI server (`dpf.agent.cni`), both for our own plugin and for the standalone
IPAM plugin type. All mutations happen on the event loop without awaiting in between, so two
concurrent requests can never pick the same IP; persistence is a group commit (one fsync'ed file
write covers every change made while the previous write was in flight). An IP is returned to a
caller only after the write that records it has completed, so a restart never hands it out twice.
Never touches links or OVS.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dpf.agent.ipam import allocator
from dpf.agent.ipam.allocator import AllocationError, UnknownPool
from dpf.agent.ipam.model import PoolBlock, Route
from dpf.agent.ipam.store import LeaseFile, StoreCorrupt

log = logging.getLogger(__name__)


class IpamIOError(Exception):
    """The lease file could not be written; nothing was handed out."""


@dataclass(frozen=True)
class Owner:
    """Who holds a lease: the CNI attachment (container id + interface) and where it lives."""

    container_id: str
    ifname: str
    network: str = ""
    netns: str = ""
    pod: str = ""
    """`<namespace>/<name>` when the runtime passed the Kubernetes args."""

    @property
    def key(self) -> str:
        return f"{self.container_id}/{self.ifname}"


@dataclass(frozen=True)
class Lease:
    pool: str
    ip: str
    owner: Owner
    gateway_lease: bool = False
    created: float = 0.0


@dataclass(frozen=True)
class PoolRequest:
    pool: str
    ip: str | None = None
    """A specific IP (runtimeConfig/CNI args `ips`)."""
    gateway: bool = False
    """nv-ipam allocateDefaultGateway: lease the pool's gateway IP itself."""


@dataclass(frozen=True)
class Assignment:
    """What the pod's interface gets from one lease: address, gateway, routes."""

    pool: str
    address: str
    """`ip/prefixlen`, the prefix of the pool's subnet."""
    gateway: str | None
    routes: tuple[Route, ...] = ()


@dataclass
class _Table:
    leases: dict[str, dict[str, Lease]] = field(default_factory=dict)  # pool -> ip -> lease
    cursors: dict[str, str] = field(default_factory=dict)


def assignment(block: PoolBlock, lease: Lease) -> Assignment:
    prefix = block.network.prefixlen
    gateway = None if lease.gateway_lease or block.gateway_ip is None else str(block.gateway_ip)
    routes = [Route(dst=r.dst, gw=r.gw or gateway) for r in block.routes]
    if block.default_gateway and gateway:
        default = "0.0.0.0/0" if block.network.version == 4 else "::/0"
        routes.append(Route(dst=default, gw=gateway))
    return Assignment(pool=block.pool, address=f"{lease.ip}/{prefix}", gateway=gateway, routes=tuple(routes))


class IpamService:
    def __init__(self, file: LeaseFile, blocks: Mapping[str, PoolBlock] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._file = file
        self._blocks: dict[str, PoolBlock] = dict(blocks or {})
        self._clock = clock
        self._table = _Table()
        self._version = 0
        self._saved = 0
        self._save_lock = asyncio.Lock()

    # -- load / blocks -----------------------------------------------------------------------------

    def load(self) -> None:
        """Read the lease file (raises StoreCorrupt; the caller decides how to recover)."""
        data = self._file.load()
        table = _Table()
        for pool, entry in data.get("pools", {}).items():
            table.cursors[pool] = entry.get("cursor", "")
            table.leases[pool] = {
                ip: Lease(pool=pool, ip=ip, owner=Owner(**rec["owner"]), gateway_lease=rec.get("gateway", False),
                          created=rec.get("created", 0.0))
                for ip, rec in entry.get("leases", {}).items()
            }
        self._table = table

    def set_blocks(self, blocks: Mapping[str, PoolBlock]) -> None:
        """New blocks from the controller. Leases outside them stay until released (never reissued)."""
        self._blocks = dict(blocks)

    @property
    def blocks(self) -> Mapping[str, PoolBlock]:
        return self._blocks

    # -- queries -------------------------------------------------------------------------------------

    def leases_of(self, owner_key: str) -> list[Lease]:
        return [lease for pool in sorted(self._table.leases) for lease in self._table.leases[pool].values()
                if lease.owner.key == owner_key]

    def all_leases(self) -> list[Lease]:
        return [lease for pool in sorted(self._table.leases) for lease in self._table.leases[pool].values()]

    def assignments(self, leases: Iterable[Lease]) -> list[Assignment]:
        out = []
        for lease in leases:
            block = self._blocks.get(lease.pool)
            if block is None:
                raise UnknownPool(f"pool {lease.pool!r} has no block on this node any more")
            out.append(assignment(block, lease))
        return out

    # -- mutations -----------------------------------------------------------------------------------

    async def allocate(self, owner: Owner, requests: Sequence[PoolRequest]) -> list[Lease]:
        """One lease per requested pool; the owner's existing leases in those pools are reused (ADD retry)."""
        leases, added = self.reserve(owner, requests)
        await self.commit(added)
        return leases

    def reserve(self, owner: Owner, requests: Sequence[PoolRequest]) -> tuple[list[Lease], list[Lease]]:
        """(one lease per requested pool, the ones newly taken). Taken in memory at once, so no concurrent
        request can pick them, but not yet durable: the caller must `commit(added)` before it hands any of
        them out (the CNI ADD overlaps that write with creating the veth and the OVS port)."""
        held = {lease.pool: lease for lease in self.leases_of(owner.key)}
        added: list[Lease] = []
        try:
            for req in requests:
                if req.pool in held:
                    continue
                lease = self._pick(owner, req)
                self._table.leases.setdefault(req.pool, {})[lease.ip] = lease
                self._table.cursors[req.pool] = lease.ip
                held[req.pool] = lease
                added.append(lease)
        except AllocationError:
            self._drop(added)
            raise
        if added:
            self._version += 1
        return [held[req.pool] for req in requests], added

    async def commit(self, added: Sequence[Lease]) -> None:
        """Make reserved leases durable; if the write fails they are dropped again and IpamIOError is raised."""
        if not added:
            return
        try:
            await self._persist()
        except OSError as exc:
            self._drop(added)
            self._version += 1
            raise IpamIOError(f"cannot record the lease in {self._file.path}: {exc}") from exc

    def _pick(self, owner: Owner, req: PoolRequest) -> Lease:
        block = self._blocks.get(req.pool)
        if block is None:
            known = ", ".join(sorted(self._blocks)) or "none"
            raise UnknownPool(f"pool {req.pool!r} has no block on this node (pools here: {known})")
        taken = self._table.leases.get(req.pool, {})
        if req.gateway:
            ip = allocator.claim_gateway(block, taken)
        elif req.ip:
            ip = allocator.claim(block, taken, req.ip)
        else:
            ip = allocator.pick(block, taken, self._table.cursors.get(req.pool))
        return Lease(pool=req.pool, ip=str(ip), owner=owner, gateway_lease=req.gateway, created=self._clock())

    def _drop(self, leases: Iterable[Lease]) -> None:
        for lease in leases:
            pool = self._table.leases.get(lease.pool, {})
            if pool.get(lease.ip) == lease:
                del pool[lease.ip]

    async def release(self, owner_keys: Iterable[str]) -> list[Lease]:
        """Drop every lease of these owners (idempotent: unknown owners are fine)."""
        keys = set(owner_keys)
        gone = [lease for lease in self.all_leases() if lease.owner.key in keys]
        if gone:
            self._drop(gone)
            self._version += 1
            await self._persist()
        return gone

    async def adopt(self, lease: Lease) -> bool:
        """Re-record a lease found in use on the switch (recovery after a lost or corrupt file)."""
        pool = self._table.leases.setdefault(lease.pool, {})
        current = pool.get(lease.ip)
        if current is not None:
            if current.owner.key != lease.owner.key:
                log.error("IP %s of pool %s is leased to %s but in use by %s", lease.ip, lease.pool,
                          current.owner.key, lease.owner.key)
            return False
        pool[lease.ip] = lease
        self._version += 1
        await self._persist()
        return True

    async def _persist(self) -> None:
        target = self._version
        async with self._save_lock:
            if self._saved >= target:
                return  # a write that started after our change already covered it
            version, data = self._version, self._snapshot()
            await asyncio.to_thread(self._file.save, data)
            self._saved = version

    def _snapshot(self) -> dict:
        pools = {}
        for pool, leases in self._table.leases.items():
            pools[pool] = {
                "cursor": self._table.cursors.get(pool, ""),
                "leases": {ip: {"owner": asdict(lease.owner), "gateway": lease.gateway_lease,
                                "created": lease.created} for ip, lease in leases.items()},
            }
        for pool, cursor in self._table.cursors.items():
            pools.setdefault(pool, {"cursor": cursor, "leases": {}})
        return {"pools": pools}


def open_service(path: Path, blocks: Mapping[str, PoolBlock] | None = None) -> IpamService:
    """The lease table in `path`, loaded. A corrupt file is moved aside and the table starts empty: the CNI
    server's start-up resync, which runs before its socket opens, re-adopts every IP in use on the switch."""
    file = LeaseFile(path)
    ipam = IpamService(file, blocks)
    try:
        ipam.load()
    except StoreCorrupt as exc:
        log.error("%s; moved to %s, recovering leases from the switch", exc, file.quarantine())
    file.remove_temp()
    return ipam


def sorted_ips(leases: Iterable[Lease]) -> list[str]:
    return sorted((lease.ip for lease in leases), key=lambda ip: int(ipaddress.ip_address(ip)))
