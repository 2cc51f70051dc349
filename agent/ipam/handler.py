"""The runtime handler for dpf.v1.IPAMBlock: checks the node's pool blocks and hands them to `IpamService`.

Called by the agent runtime (`dpf.agent.runtime`) with the node's complete set of blocks, at start-up
from the stored state (before the CNI socket opens) and for every controller update. The set is
applied whole or not at all: any unusable block (not a valid range, a pool name given twice, or a
range that overlaps another pool's on this node: two pools would hand out the same address) raises
`Rejected`, which NACKs the update and keeps the blocks applied before; each offending block is also
reported REJECTED with the reason, every applied block PROGRAMMED. Leases outside the new blocks stay until
their pods go (`IpamService.set_blocks`). Never touches links, OVS or the lease file.
"""

from __future__ import annotations

from collections.abc import Mapping

from dpf.agent.ipam.model import BlockError, PoolBlock, Route
from dpf.agent.ipam.service import IpamService
from dpf.agent.runtime.handlers import Desired, Handler, Rejected, Reporter
from dpf.proto.v1 import ipam_pb2
from dpf.proto.v1 import nodestate_pb2 as pb

POOL_TYPES = {ipam_pb2.IPAM_POOL_TYPE_IPPOOL: "ippool", ipam_pb2.IPAM_POOL_TYPE_CIDRPOOL: "cidrpool"}


def block_from_message(message: ipam_pb2.IPAMBlock) -> PoolBlock:
    """The wire block → the allocator's frozen PoolBlock; raises BlockError naming the field."""
    if not message.pool:
        raise BlockError("pool block without a pool name")
    pool_type = POOL_TYPES.get(message.pool_type)
    if pool_type is None:
        raise BlockError(f"pool {message.pool!r}: poolType {message.pool_type} is neither ippool nor cidrpool")
    return PoolBlock(pool=message.pool, pool_type=pool_type, subnet=message.subnet,  # type: ignore[arg-type]
                     start=message.start, end=message.end, gateway=message.gateway or None,
                     exclusions=tuple(message.exclusions),
                     routes=tuple(Route(dst=r.dst, gw=r.gw or None) for r in message.routes),
                     default_gateway=message.default_gateway)


def check_blocks(desired: Mapping[str, ipam_pb2.IPAMBlock], changed: set[str]) -> tuple[dict[str, PoolBlock],
                                                                                           dict[str, str]]:
    """(usable blocks by pool name, reasons by resource name). Overlaps blame the changed side (both if
    neither or both changed), so the pool that was already serving pods keeps its name clean."""
    blocks: dict[str, tuple[str, PoolBlock]] = {}
    errors: dict[str, str] = {}
    for name in sorted(desired):
        try:
            block = block_from_message(desired[name])
        except BlockError as exc:
            errors[name] = str(exc)
            continue
        other = blocks.get(block.pool)
        if other is not None:
            errors[name] = errors[other[0]] = (f"pool {block.pool!r} is given twice on this node ({other[0]} and "
                                               f"{name}); pool names must be unique")
            continue
        blocks[block.pool] = (name, block)
    ranged = sorted(((b.network.version, int(b.first), int(b.last), n, b) for n, b in blocks.values()
                     if n not in errors), key=lambda t: t[:3])
    for i, (family, _lo, hi, name, block) in enumerate(ranged):
        for family2, lo2, _hi2, name2, block2 in ranged[i + 1:]:
            if family2 != family or lo2 > hi:
                break
            blame = [n for n in (name, name2) if n in changed] or [name, name2]
            for n, mine, theirs in ((name, block, block2), (name2, block2, block)):
                if n in blame:
                    errors[n] = (f"pool {mine.pool!r}: range {mine.first}-{mine.last} overlaps pool {theirs.pool!r} "
                                 f"({theirs.first}-{theirs.last}) on this node; two pools would hand out the same "
                                 "addresses")
    return {b.pool: b for n, b in blocks.values() if n not in errors}, errors


class IpamBlockHandler(Handler):
    message_class = ipam_pb2.IPAMBlock

    def __init__(self, ipam: IpamService) -> None:
        self.ipam = ipam

    async def apply(self, desired: Desired, changed: set[str], removed: set[str], reporter: Reporter) -> None:
        messages = {name: message for name, (_version, message) in desired.items()}
        blocks, errors = check_blocks(messages, changed)
        if errors:
            for name, why in sorted(errors.items()):
                reporter.report(name, desired[name][0], pb.VERDICT_REJECTED, why)
            raise Rejected(f"{len(errors)} IP pool block(s) cannot be used on this node: "
                           + "; ".join(f"{n}: {w}" for n, w in sorted(errors.items())), errors)
        self.ipam.set_blocks(blocks)
        by_pool = {m.pool: n for n, m in messages.items()}
        for pool, block in sorted(blocks.items()):
            name = by_pool[pool]
            if name in changed:
                reporter.report(name, desired[name][0], pb.VERDICT_PROGRAMMED, observed={
                    "pool": pool, "range": f"{block.first}-{block.last}", "subnet": str(block.network),
                    "gateway": str(block.gateway_ip or "")})
