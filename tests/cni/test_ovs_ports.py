"""CNI port batches on the agent's OVSDB client (`dpf.agent.cni.ovs_ports`), against a real switch.

- Concurrent adds share one transaction (and one vswitchd reconfiguration), read back from ovsdb-server's
  own log; each add still answers with its own live ofport.
- A transaction decided on a stale read is rebuilt, not committed: another writer plugging a port of the
  same name between our read and our commit makes the commit TRY_AGAIN, and the rebuilt transaction
  replaces that port (ADD stays idempotent) instead of failing on the duplicate name.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from dpf.agent.cni.ovs_ports import OvsPorts, PortSpec
from dpf.lab.bed.ovs import OvsSwitch
from dpf.lab.bed.tools import tool
from tests.cni.cnirun import owned_ports
from tests.cni.conftest import BRIDGE

T = TypeVar("T")


@pytest.fixture(autouse=True)
def _root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for netns and OVS")


def with_ports(ovs: OvsSwitch, scenario: Callable[[OvsPorts], Awaitable[T]]) -> T:
    async def run() -> T:
        ports = OvsPorts.standalone(f"unix:{ovs.db_sock}")
        await ports.start()
        try:
            return await scenario(ports)
        finally:
            await ports.stop()

    return asyncio.run(run())


def cni_transactions(ovs: OvsSwitch) -> list[str]:
    """Comments of our port transactions, oldest first, from ovsdb-server's log of the database file."""
    out = subprocess.run([tool("ovsdb-tool"), "show-log", str(ovs.rundir / "conf.db")], capture_output=True,
                         text=True, check=True).stdout
    return re.findall(r'"dpf: (cni ports: [^"]*)"', out)


def ofport(ovs: OvsSwitch, name: str) -> int:
    return int(ovs.vsctl("get", "Interface", name, "ofport").stdout)


def test_concurrent_adds_share_one_transaction_and_each_gets_its_ofport(ovs: OvsSwitch) -> None:
    ovs.add_bridge(BRIDGE)
    names = [f"dpft{i}" for i in range(20)]

    async def scenario(ports: OvsPorts) -> list[int]:
        return list(await asyncio.gather(*(ports.add(PortSpec(BRIDGE, name, iface_type="internal",
                                                               external_ids=(("dpf-cni-container", name),)))
                                           for name in names)))

    got = with_ports(ovs, scenario)
    assert got == [ofport(ovs, name) for name in names]
    assert len(set(got)) == 20
    assert min(got) > 0
    assert {ids["dpf-cni-container"] for ids in owned_ports(ovs).values()} == set(names)
    assert cni_transactions(ovs) == ["cni ports: +20 -0"]

    async def delete_all(ports: OvsPorts) -> None:
        await asyncio.gather(*(ports.delete(name) for name in names))

    with_ports(ovs, delete_all)
    assert owned_ports(ovs) == {}
    assert cni_transactions(ovs)[1:] == ["cni ports: +0 -20"]


def test_a_port_plugged_by_another_writer_under_our_read_is_replaced_not_a_failure(ovs: OvsSwitch) -> None:
    ovs.add_bridge(BRIDGE)
    builds: list[int] = []

    async def scenario(ports: OvsPorts) -> int:
        submit = ports.ovsdb.submit

        def racing_submit(what: str, build: Callable[[Any, Any], None], realize: bool) -> Any:
            def build_after_a_rival(idl: Any, txn: Any) -> None:
                build(idl, txn)  # decided on the replica: no port "dpfrace" yet
                builds.append(1)
                if len(builds) == 1:  # the rival commits before we do; our replica has not seen it
                    ovs.vsctl("add-port", BRIDGE, "dpfrace", "--", "set", "Interface", "dpfrace", "type=internal")

            return submit(what, build_after_a_rival, realize)

        ports.ovsdb.submit = racing_submit  # type: ignore[method-assign]  # the race, injected in one place
        return await ports.add(PortSpec(BRIDGE, "dpfrace", iface_type="internal",
                                        external_ids=(("dpf-cni-container", "c1"),)))

    got = with_ports(ovs, scenario)
    assert len(builds) == 2, "the stale transaction was not rebuilt"
    assert got == ofport(ovs, "dpfrace") > 0
    assert owned_ports(ovs) == {"dpfrace": {"dpf-cni-container": "c1", "dpf-owner": "dpf-cni"}}
    assert ovs.vsctl("list-ports", BRIDGE).stdout.split() == ["dpfrace"]
