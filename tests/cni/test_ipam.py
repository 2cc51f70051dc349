"""The node-side IP allocator: pure picking, the crash-safe lease file, and concurrency properties."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpf.agent.ipam import allocator
from dpf.agent.ipam.model import BlockError, PoolBlock, Route, block_from_dict
from dpf.agent.ipam.service import IpamService, Lease, Owner, PoolRequest, assignment
from dpf.agent.ipam.store import LeaseFile, StoreCorrupt

SUBNET = PoolBlock(pool="p", pool_type="ippool", subnet="192.168.0.0/16", start="192.168.0.1",
                   end="192.168.0.4", gateway="192.168.0.1")


def test_gateway_inside_the_block_is_skipped() -> None:
    # nv-ipam's example: 192.168.0.0/16, gateway .1, block of 4 -> the first pod gets .2
    assert allocator.pick(SUBNET, {}, None) == ipaddress.ip_address("192.168.0.2")
    assert allocator.capacity(SUBNET) == 3


def test_pick_is_round_robin_from_the_cursor_and_wraps() -> None:
    assert str(allocator.pick(SUBNET, {}, "192.168.0.2")) == "192.168.0.3"
    assert str(allocator.pick(SUBNET, {"192.168.0.3": 1}, "192.168.0.2")) == "192.168.0.4"
    assert str(allocator.pick(SUBNET, {"192.168.0.4": 1}, "192.168.0.3")) == "192.168.0.2"


def test_exclusions_and_exhaustion_message() -> None:
    block = PoolBlock(pool="hbn", pool_type="cidrpool", subnet="10.0.0.8/29", start="10.0.0.9", end="10.0.0.14",
                      gateway="10.0.0.10", exclusions=("10.0.0.11-10.0.0.12", "10.0.0.14"))
    assert str(allocator.pick(block, {}, None)) == "10.0.0.9"
    with pytest.raises(allocator.PoolExhausted, match=r"pool 'hbn' has no free IP.*10\.0\.0\.9-10\.0\.0\.14"):
        allocator.pick(block, {"10.0.0.9": 1, "10.0.0.13": 1}, None)


@pytest.mark.parametrize(("ip", "reason"), [
    ("10.9.9.9", "outside pool"), ("192.168.0.3", "already leased"), ("192.168.0.9", "outside this node's block"),
    ("192.168.0.1", "gateway"), ("nope", "not an IP"),
])
def test_claim_refusals_say_why(ip: str, reason: str) -> None:
    with pytest.raises(allocator.AddressUnavailable, match=reason):
        allocator.claim(SUBNET, {"192.168.0.3": 1}, ip)


def test_block_validation_names_the_field() -> None:
    with pytest.raises(BlockError, match="subnet"):
        block_from_dict({"pool": "x", "subnet": "10.0.0.0/33", "start": "10.0.0.1", "end": "10.0.0.2"})
    with pytest.raises(BlockError, match=r"gateway 10\.1\.0\.1 is outside"):
        block_from_dict({"pool": "x", "subnet": "10.0.0.0/24", "start": "10.0.0.1", "end": "10.0.0.2",
                         "gateway": "10.1.0.1"})
    with pytest.raises(BlockError, match="missing field 'end'"):
        block_from_dict({"pool": "x", "subnet": "10.0.0.0/24", "start": "10.0.0.1"})


def test_assignment_routes_and_default_gateway() -> None:
    block = PoolBlock(pool="p", pool_type="cidrpool", subnet="10.0.0.8/29", start="10.0.0.9", end="10.0.0.14",
                      gateway="10.0.0.10", routes=(Route("10.1.0.0/16"),), default_gateway=True)
    lease = allocator.pick(block, {}, None)
    a = assignment(block, Lease("p", str(lease), Owner("c", "i")))
    assert a.address == "10.0.0.9/29"
    assert a.gateway == "10.0.0.10"
    assert [(r.dst, r.gw) for r in a.routes] == [("10.1.0.0/16", "10.0.0.10"), ("0.0.0.0/0", "10.0.0.10")]


# -- the lease file -----------------------------------------------------------------------------------


def test_lease_file_round_trip_and_checksum(tmp_path: Path) -> None:
    f = LeaseFile(tmp_path / "state" / "leases.json")
    assert f.load() == {}
    f.save({"pools": {"p": {"cursor": "10.0.0.2", "leases": {}}}})
    assert f.load()["pools"]["p"]["cursor"] == "10.0.0.2"
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700
    doc = json.loads(f.path.read_text())
    doc["data"]["pools"]["p"]["cursor"] = "10.0.0.9"
    f.path.write_text(json.dumps(doc))
    with pytest.raises(StoreCorrupt, match="checksum mismatch"):
        f.load()
    f.path.write_bytes(f.path.read_bytes()[:20])  # a torn write (impossible with rename, but checked)
    with pytest.raises(StoreCorrupt, match="not JSON"):
        f.load()


def test_service_survives_a_reload(tmp_path: Path) -> None:
    async def scenario() -> None:
        blocks = {"p": SUBNET}
        ipam = IpamService(LeaseFile(tmp_path / "l.json"), blocks)
        first = await ipam.allocate(Owner("c1", "net1", "n", "/run/netns/x"), [PoolRequest("p")])
        again = IpamService(LeaseFile(tmp_path / "l.json"), blocks)
        again.load()
        assert again.leases_of("c1/net1") == first
        second = await again.allocate(Owner("c2", "net1"), [PoolRequest("p")])
        assert second[0].ip != first[0].ip
        # ADD retried for the same attachment gets the same lease, not a new one.
        assert await again.allocate(Owner("c2", "net1"), [PoolRequest("p")]) == second

    asyncio.run(scenario())


ops = st.lists(st.tuples(st.sampled_from(["alloc", "release"]), st.integers(0, 11)), min_size=1, max_size=60)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=st.lists(ops, min_size=1, max_size=6), size=st.integers(1, 10))
def test_concurrent_allocations_never_duplicate(batches: list[list[tuple[str, int]]], size: int) -> None:
    """Bursts of concurrent allocate/release on a small pool: never a duplicate, never a silent failure."""
    block = PoolBlock(pool="p", pool_type="ippool", subnet="10.0.0.0/24", start="10.0.0.1",
                      end=f"10.0.0.{size}", gateway="10.0.0.1")
    capacity = allocator.capacity(block)

    async def scenario(directory: Path) -> None:
        ipam = IpamService(LeaseFile(directory / "l.json"), {"p": block})

        async def op(kind: str, n: int) -> str | None:
            if kind == "release":
                await ipam.release([f"c{n}/net1"])
                return None
            try:
                leases = await ipam.allocate(Owner(f"c{n}", "net1"), [PoolRequest("p")])
            except allocator.PoolExhausted as exc:
                # Allocation is synchronous up to the raise: the table is exactly what made it fail.
                assert len(ipam.all_leases()) == capacity, "exhausted while IPs were free"
                return str(exc)
            return leases[0].ip

        for batch in batches:
            outcomes = await asyncio.gather(*(op(k, n) for k, n in batch))
            refusals = [o for o in outcomes if o and "/" not in o and not o[0].isdigit()]
            assert all(r.startswith("pool 'p' has no free IP on this node") for r in refusals), refusals
            held = ipam.all_leases()
            ips = [lease.ip for lease in held]
            assert len(ips) == len(set(ips)), "an IP was leased twice"
            assert len({lease.owner.key for lease in held}) == len(held), "an owner holds two IPs of one pool"
            assert all(allocator.usable(block, ipaddress.ip_address(ip)) for ip in ips)
            assert len(held) <= capacity
            reloaded = IpamService(LeaseFile(directory / "l.json"), {"p": block})
            reloaded.load()
            assert sorted(lease.ip for lease in reloaded.all_leases()) == sorted(ips), "disk != memory"

    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(scenario(Path(directory)))
