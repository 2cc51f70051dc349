"""CNI commands on the DPU: plug, unplug, check and garbage-collect veth attachments on an OVS bridge.

Called by `dpf.agent.cni.server` with a parsed `Request`. ADD order: IP lease first (a full pool
fails before anything is created), then the veth pair, then the OVS port in one transaction that
already carries the pod's identity and IPs (so the switch alone can rebuild the lease table), then
addresses and routes in the pod. Any failure or cancellation rolls back what was done. DEL is
idempotent and succeeds whatever is already gone. Invoked as an IPAM plugin (`dpf-ipam`), only the
lease part runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
from collections.abc import Mapping, Sequence

from dpf.agent.cni import links, result
from dpf.agent.cni.errors import CniError, ConfigError, SwitchError
from dpf.agent.cni.locks import KeyedLocks
from dpf.agent.cni.netconf import Request
from dpf.agent.cni.ovs_ports import OvsPorts, PortSpec
from dpf.agent.ipam.model import PoolBlock, Route
from dpf.agent.ipam.service import Assignment, IpamService, Owner, PoolRequest
from dpf.cni import wire

log = logging.getLogger(__name__)

# Interface external_ids we write (besides the owner marker); the switch is our attachment record.
EXT_ID = "dpf-id"
EXT_CONTAINER = "dpf-cni-container"
EXT_IFNAME = "dpf-cni-ifname"
EXT_NETNS = "dpf-cni-netns"
EXT_NETWORK = "dpf-cni-network"
EXT_IPS = "dpf-cni-ips"
EXT_POOLS = "dpf-cni-pools"
EXT_POD_UID = "dpf-pod-uid"


def owner_of(req: Request) -> Owner:
    pod = f"{req.pod.namespace}/{req.pod.name}" if req.pod.known else ""
    return Owner(container_id=req.container_id, ifname=req.ifname, network=req.name, netns=req.netns, pod=pod)


class Attacher:
    def __init__(self, ports: OvsPorts, ipam: IpamService, locks: KeyedLocks | None = None) -> None:
        self.ports = ports
        self.ipam = ipam
        self.locks = locks or KeyedLocks()

    async def handle(self, req: Request) -> dict | None:
        if req.command in ("GC", "STATUS"):
            await (self.gc(req) if req.command == "GC" else self.status(req))
            return None
        async with self.locks.hold(req.attachment.key):
            if req.command == "ADD":
                return await (self.ipam_add(req) if req.ipam_only else self.add(req))
            if req.command == "DEL":
                await (self.ipam_del(req) if req.ipam_only else self.delete(req))
                return None
            await (self.ipam_check(req) if req.ipam_only else self.check(req))
            return None

    # -- ADD ------------------------------------------------------------------------------------------

    async def add(self, req: Request) -> dict:
        host = links.host_ifname(req.container_id, req.ifname)
        owner = owner_of(req)
        durable: asyncio.Future | None = None
        try:
            assignments, durable = await self._lease(req, owner)
            mac = req.mac or _derived_mac(assignments)
            host_mac, pod_mac = await asyncio.to_thread(links.create_veth, host, req.netns, req.ifname,
                                                        req.mtu, mac)
            await self.ports.add(PortSpec(
                bridge=req.bridge, name=host, iface_type=req.interface_type, ofport_request=req.ofport_request,
                vlan=req.vlan, trunks=req.trunks, external_ids=_external_ids(req, assignments)))
            userspace = self.ports.datapath(req.bridge) == "netdev"
            routes = [(r.dst, r.gw) for a in assignments for r in a.routes]
            await asyncio.to_thread(links.configure_pod, req.netns, req.ifname, [a.address for a in assignments],
                                    routes, userspace)
            if durable is not None:
                await durable  # the lease is on disk before the result hands the address out
        except BaseException:
            await asyncio.shield(self._rollback(req, host, durable))
            raise
        interfaces = [result.Interface(host, host_mac),
                      result.Interface(req.ifname, pod_mac, sandbox=req.netns, mtu=req.mtu)]
        mine = result.render(req.version, interfaces, assignments, pod_index=1)
        return result.merge(req.prev_result, mine)

    async def _lease(self, req: Request, owner: Owner) -> tuple[list[Assignment], asyncio.Future | None]:
        """The pod's addresses, and the write that makes new leases durable: it runs while the veth and the
        OVS port are made (the switch records the IPs too), and ADD waits for it before answering."""
        if req.ipam is None:
            return [], None
        if not req.ipam.in_agent:
            return _assignments_from_result(await delegate_ipam(req, "ADD")), None
        leases, added = self.ipam.reserve(owner, _pool_requests(req, self.ipam.blocks))
        assignments = self.ipam.assignments(leases)  # may raise: the rollback releases what was reserved
        return assignments, asyncio.ensure_future(self.ipam.commit(added)) if added else None

    async def _rollback(self, req: Request, host: str, durable: asyncio.Future | None = None) -> None:
        if durable is not None:
            with contextlib.suppress(Exception):
                await durable  # let the lease write land before the release writes again
        try:
            await self._unplug(req, host)
        except Exception:  # the original error is what the runtime must see
            log.exception("rollback of ADD %s left something behind; DEL or resync will retry",
                          req.attachment.key)

    # -- DEL --------------------------------------------------------------------------------------------

    async def delete(self, req: Request) -> None:
        await self._unplug(req, links.host_ifname(req.container_id, req.ifname))

    async def _unplug(self, req: Request, host: str) -> None:
        await self.ports.delete(host)
        await asyncio.to_thread(links.delete_link, host)
        await self.ipam.release([req.attachment.key])
        if req.ipam is not None and not req.ipam.in_agent:
            await delegate_ipam(req, "DEL")

    # -- CHECK ------------------------------------------------------------------------------------------

    async def check(self, req: Request) -> None:
        if req.prev_result is None:
            raise ConfigError("prevResult", "CHECK needs the result of ADD in prevResult")
        host = links.host_ifname(req.container_id, req.ifname)
        pod = await asyncio.to_thread(links.pod_interface, req.netns, req.ifname)
        if pod is None:
            raise CniError(wire.CHECK_FAILED, f"interface {req.ifname} is missing from netns {req.netns}")
        mac, addresses = result.expected_addresses(req.prev_result, req.ifname, req.netns)
        if mac and mac.lower() != pod.mac.lower():
            raise CniError(wire.CHECK_FAILED, f"{req.ifname} has MAC {pod.mac}, prevResult says {mac}")
        missing = sorted(set(addresses) - set(pod.addresses))
        if missing:
            raise CniError(wire.CHECK_FAILED, f"{req.ifname} lacks address(es) {', '.join(missing)}")
        port = next((p for p in await self.ports.owned() if p.name == host), None)
        if port is None or port.ofport <= 0:
            raise CniError(wire.CHECK_FAILED, f"OVS port {host} of {req.attachment.key} is missing or has no ofport")
        if req.ipam is not None and req.ipam.in_agent:
            leased = {lease.ip for lease in self.ipam.leases_of(req.attachment.key)}
            unleased = sorted(a for a in addresses if str(ipaddress.ip_interface(a).ip) not in leased)
            if unleased:
                raise CniError(wire.CHECK_FAILED, f"address(es) {', '.join(unleased)} are not leased to "
                               f"{req.attachment.key}")

    # -- GC / STATUS ------------------------------------------------------------------------------------

    async def gc(self, req: Request) -> None:
        """Remove this network's attachments that are not in the runtime's valid list."""
        valid = {a.key for a in req.valid_attachments}
        stale: dict[str, tuple[str, str]] = {}
        if not req.ipam_only:
            for port in await self.ports.owned():
                ids = port.external_ids
                key = f"{ids.get(EXT_CONTAINER)}/{ids.get(EXT_IFNAME)}"
                if ids.get(EXT_NETWORK) == req.name and key not in valid:
                    stale[key] = (ids.get(EXT_CONTAINER, ""), ids.get(EXT_IFNAME, ""))
        for lease in self.ipam.all_leases():
            if lease.owner.network == req.name and lease.owner.key not in valid:
                stale.setdefault(lease.owner.key, (lease.owner.container_id, lease.owner.ifname))
        for key, (container_id, ifname) in sorted(stale.items()):
            async with self.locks.hold(key):
                await self._forget(container_id, ifname, switch=not req.ipam_only)

    async def _forget(self, container_id: str, ifname: str, switch: bool = True) -> None:
        if switch:
            host = links.host_ifname(container_id, ifname)
            await self.ports.delete(host)
            await asyncio.to_thread(links.delete_link, host)
        await self.ipam.release([f"{container_id}/{ifname}"])

    async def status(self, req: Request) -> None:
        try:
            bridges = await self.ports.bridges()
        except SwitchError as exc:
            raise CniError(wire.PLUGIN_NOT_AVAILABLE, f"OVS is not reachable: {exc}") from exc
        if not req.ipam_only and req.bridge and req.bridge not in bridges:
            raise CniError(wire.PLUGIN_NOT_AVAILABLE, f"bridge {req.bridge!r} does not exist yet", "field bridge")
        if req.ipam is not None and req.ipam.in_agent:
            missing = [p for p in req.ipam.pools if p not in self.ipam.blocks]
            if missing:
                raise CniError(wire.PLUGIN_NOT_AVAILABLE, f"no block of pool(s) {', '.join(missing)} on this node yet",
                               "field ipam.poolName")

    # -- as an IPAM plugin ------------------------------------------------------------------------------

    async def ipam_add(self, req: Request) -> dict:
        assert req.ipam is not None
        leases = await self.ipam.allocate(owner_of(req), _pool_requests(req, self.ipam.blocks))
        return result.render(req.version, [], self.ipam.assignments(leases), pod_index=None)

    async def ipam_del(self, req: Request) -> None:
        await self.ipam.release([req.attachment.key])

    async def ipam_check(self, req: Request) -> None:
        if not self.ipam.leases_of(req.attachment.key):
            raise CniError(wire.CHECK_FAILED, f"no lease recorded for {req.attachment.key}")


def _pool_requests(req: Request, blocks: Mapping[str, PoolBlock]) -> list[PoolRequest]:
    """One request per pool; a requested IP goes to the pool whose subnet holds it (or the only pool)."""
    assert req.ipam is not None
    pools = req.ipam.pools
    wanted: dict[str, str] = {}
    for ip in req.ips:
        addr = ipaddress.ip_interface(ip).ip
        home = next((p for p in pools if p in blocks and addr in blocks[p].network), None)
        if home is None and len(pools) == 1:
            home = pools[0]  # outside the pool: the allocator refuses it and says why
        if home is None:
            raise ConfigError("ips", f"requested IP {addr} is in none of the pools {', '.join(pools)}")
        wanted.setdefault(home, str(addr))
    gateway = req.ipam.allocate_default_gateway
    return [PoolRequest(pool=p, ip=wanted.get(p), gateway=gateway) for p in pools]


def _derived_mac(assignments: Sequence[Assignment]) -> str | None:
    for a in assignments:
        ip = ipaddress.ip_interface(a.address).ip
        if ip.version == 4:
            return links.mac_for_ip(str(ip))
    return None


def _external_ids(req: Request, assignments: Sequence[Assignment]) -> tuple[tuple[str, str], ...]:
    ids = [(EXT_CONTAINER, req.container_id), (EXT_IFNAME, req.ifname), (EXT_NETNS, req.netns),
           (EXT_NETWORK, req.name)]
    if req.pod.known:
        ids.append((EXT_ID, f"{req.pod.namespace}/{req.pod.name}/{req.ifname}"))
    if req.pod.uid:
        ids.append((EXT_POD_UID, req.pod.uid))
    if assignments:
        ids.append((EXT_IPS, ",".join(a.address for a in assignments)))
        if req.ipam is not None and req.ipam.in_agent:
            ids.append((EXT_POOLS, ",".join(a.pool for a in assignments)))
    return tuple(ids)


def _assignments_from_result(res: dict) -> list[Assignment]:
    routes = tuple(Route(dst=r["dst"], gw=r.get("gw")) for r in res.get("routes") or [] if "dst" in r)
    out = []
    for i, ip in enumerate(res.get("ips") or []):
        out.append(Assignment(pool="", address=ip["address"], gateway=ip.get("gateway"),
                              routes=routes if i == 0 else ()))
    return out


async def delegate_ipam(req: Request, command: str) -> dict:
    """Run a foreign IPAM plugin (e.g. host-local) from CNI_PATH, as ovs-cni does."""
    assert req.ipam is not None
    plugin = req.ipam.type
    path = next((os.path.join(d, plugin) for d in req.cni_path.split(":")
                 if d and os.access(os.path.join(d, plugin), os.X_OK)), None)
    if path is None:
        if command == "DEL":
            return {}
        raise ConfigError("ipam.type", f"IPAM plugin {plugin!r} not found in CNI_PATH {req.cni_path!r}")
    env = {**dict(req.env), "CNI_COMMAND": command}
    proc = await asyncio.create_subprocess_exec(path, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE, env=env)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(req.raw_config.encode()), 30)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    try:
        doc = json.loads(out) if out.strip() else {}
    except ValueError:
        doc = {"msg": out.decode(errors="replace")[:200]}
    if proc.returncode != 0:
        raise CniError(int(doc.get("code") or wire.IPAM_DELEGATE_FAILED), f"IPAM plugin {plugin}: {doc.get('msg')}",
                       str(doc.get("details", "")))
    return doc

