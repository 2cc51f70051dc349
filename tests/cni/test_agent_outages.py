"""The shim when the agent is down, hung or restarted, and the agent's recovery after a crash."""

from __future__ import annotations

import os
import signal
import stat

from pyroute2 import netns as pyroute2_netns

from dpf.lab.bed.netns import NetnsBed
from dpf.lab.bed.process import wait_until
from tests.cni.cnirun import call, host_veths, netconf, owned_ports
from tests.cni.conftest import PLUGIN, Agent


def test_socket_is_root_only(agent: Agent) -> None:
    assert stat.S_IMODE(agent.socket.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(agent.socket.stat().st_mode) == 0o600


def test_agent_down_fails_fast_with_try_again_but_del_succeeds(agent: Agent, netns: NetnsBed,
                                                               script_bin_dir) -> None:
    shim = script_bin_dir / PLUGIN
    pod = netns.namespace("pod")
    agent.stop()
    res = call(shim, "ADD", netconf(agent.socket), "c1", pod)
    assert (res.rc, res.code) == (1, 11)
    assert "not running" in res.doc["msg"]
    assert res.seconds < 1.0
    assert call(shim, "DEL", netconf(agent.socket), "c1", pod).rc == 0
    res = call(shim, "STATUS", netconf(agent.socket, version="1.1.0"), ifname="")
    assert res.code == 50


def test_hung_agent_is_given_up_on_within_a_second(agent: Agent, netns: NetnsBed, script_bin_dir) -> None:
    # SIGSTOP: the kernel still accepts connections on the socket but nobody answers.
    pod = netns.namespace("pod")
    os.kill(agent.child.pid, signal.SIGSTOP)
    try:
        for command in ("ADD", "DEL"):
            res = call(script_bin_dir / PLUGIN, command, netconf(agent.socket), "c1", pod)
            assert (res.rc, res.code) == (1, 11), res.doc
            assert res.seconds < 1.5, res.seconds
    finally:
        os.kill(agent.child.pid, signal.SIGCONT)


def test_del_while_agent_down_is_finished_by_the_restarted_agent(agent: Agent, netns: NetnsBed,
                                                                 script_bin_dir) -> None:
    shim = script_bin_dir / PLUGIN
    pods = [netns.namespace(f"p{i}") for i in range(2)]
    for i, pod in enumerate(pods):
        assert call(shim, "ADD", netconf(agent.socket), f"c{i}", pod).rc == 0
    agent.kill()
    assert call(shim, "DEL", netconf(agent.socket), "c0", pods[0]).rc == 0  # succeeds: agent unreachable
    pyroute2_netns.remove(pods[0])  # the runtime removes the sandbox; the veth pair dies with it
    netns.created.remove(pods[0])
    agent.start()
    assert [ids["dpf-cni-container"] for ids in owned_ports(agent.ovs).values()] == ["c1"]
    assert list(agent.leases().values()) == ["c1/net1"]
    assert len(host_veths(agent.ovs)) == 1


def test_restart_never_hands_out_a_leased_ip_again(agent: Agent, netns: NetnsBed, script_bin_dir) -> None:
    shim = script_bin_dir / PLUGIN
    first = call(shim, "ADD", netconf(agent.socket), "c1", netns.namespace("p1")).doc["ips"][0]["address"]
    agent.kill()
    agent.start()
    second = call(shim, "ADD", netconf(agent.socket), "c2", netns.namespace("p2")).doc["ips"][0]["address"]
    assert first != second


def test_corrupt_lease_file_is_rebuilt_from_the_switch(agent: Agent, netns: NetnsBed, script_bin_dir) -> None:
    shim = script_bin_dir / PLUGIN
    first = call(shim, "ADD", netconf(agent.socket), "c1", netns.namespace("p1")).doc["ips"][0]["address"]
    agent.stop()
    raw = agent.leases_file.read_bytes()
    agent.leases_file.write_bytes(raw.replace(b"c1", b"c9"))  # checksum no longer matches
    agent.start()
    assert "checksum mismatch" in agent.log_tail()
    assert list(agent.leases().values()) == ["c1/net1"]  # re-adopted from the port's external_ids
    second = call(shim, "ADD", netconf(agent.socket), "c2", netns.namespace("p2")).doc["ips"][0]["address"]
    assert first != second
    assert list(agent.workdir.glob("state/leases.json.corrupt-*"))


def test_busy_agent_still_answers_every_request(agent: Agent, netns: NetnsBed, script_bin_dir) -> None:
    """20 concurrent ADDs (one OVS transaction for most of them), then 20 concurrent DELs."""
    from concurrent.futures import ThreadPoolExecutor

    shim = script_bin_dir / PLUGIN
    pods = [netns.namespace(f"b{i}") for i in range(20)]
    with ThreadPoolExecutor(20) as pool:
        adds = list(pool.map(lambda i: call(shim, "ADD", netconf(agent.socket), f"c{i}", pods[i]), range(20)))
    assert [r.rc for r in adds] == [0] * 20, [r.doc for r in adds if r.rc]
    ips = {r.doc["ips"][0]["address"] for r in adds}
    assert len(ips) == 20
    assert len(owned_ports(agent.ovs)) == 20
    with ThreadPoolExecutor(20) as pool:
        dels = list(pool.map(lambda i: call(shim, "DEL", netconf(agent.socket), f"c{i}", pods[i]), range(20)))
    assert [r.rc for r in dels] == [0] * 20
    wait_until(lambda: owned_ports(agent.ovs) == {}, 10, "ports gone")
    assert host_veths(agent.ovs) == []
    assert agent.leases() == {}


def test_a_burst_beyond_the_bound_is_refused_fast_not_queued_forever(agent: Agent, netns: NetnsBed) -> None:
    """max 2 working, 4 accepted: a burst of 24 ADDs gets answers (0 or 11 busy), and nothing leaks."""
    import json
    from concurrent.futures import ThreadPoolExecutor

    from dpf.cni.shim import run

    agent.stop()
    agent.extra_args = ["--max-concurrent", "2", "--max-pending", "4"]
    agent.start()
    pods = [netns.namespace(f"q{i}") for i in range(24)]

    def cni(command: str, i: int) -> tuple[int, dict]:
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": f"c{i}", "CNI_NETNS": f"/run/netns/{pods[i]}",
               "CNI_IFNAME": "net1"}
        rc, out, _ = run(env, json.dumps(netconf(agent.socket)), PLUGIN)
        return rc, json.loads(out) if out else {}

    with ThreadPoolExecutor(24) as pool:
        adds = list(pool.map(lambda i: cni("ADD", i), range(24)))
    busy = [doc for rc, doc in adds if rc]
    assert busy, "the bound never engaged"
    assert all(doc["code"] == 11 and "agent busy" in doc["msg"] for doc in busy), busy
    assert len(owned_ports(agent.ovs)) == 24 - len(busy)
    with ThreadPoolExecutor(4) as pool:
        assert set(pool.map(lambda i: cni("DEL", i)[0], range(24))) == {0}
    assert owned_ports(agent.ovs) == {}
    assert agent.leases() == {}


def test_adds_work_across_an_ovsdb_server_restart(agent: Agent, netns: NetnsBed, script_bin_dir) -> None:
    shim = script_bin_dir / PLUGIN
    first, second = netns.namespace("before"), netns.namespace("after")
    assert call(shim, "ADD", netconf(agent.socket), "c1", first).rc == 0
    agent.ovs.restart_ovsdb()  # the agent's OVSDB connection breaks under it
    res = call(shim, "ADD", netconf(agent.socket), "c2", second)
    assert res.rc == 0, res.doc
    assert len(owned_ports(agent.ovs)) == 2
    assert call(shim, "DEL", netconf(agent.socket), "c1", first).rc == 0
    assert call(shim, "DEL", netconf(agent.socket), "c2", second).rc == 0
    assert owned_ports(agent.ovs) == {}
