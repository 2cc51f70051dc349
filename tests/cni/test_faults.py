"""1,000 ADD/DEL cycles with failures injected between and during steps: nothing leaks.

Four "pods" attach and detach in rounds, concurrently, through the shim (called in-process: the
same code the binary runs, without 45 ms of process start per call). Seeded faults per round:
the agent SIGKILLed mid-ADD, the agent down during DEL while the runtime removes the sandbox, the
netns deleted before DEL, the pool filled so one ADD must fail, an ADD retried. Afterwards no OVS
port, veth or lease may remain. DPF_CNI_FAULT_CYCLES overrides the count (default 1000).
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from pyroute2 import netns as pyroute2_netns

from dpf.cni.shim import run
from dpf.lab.bed.netns import NetnsBed
from tests.cni.cnirun import host_veths, netconf, owned_ports
from tests.cni.conftest import POOL, Agent

WORKERS = 4
CYCLES = int(os.environ.get("DPF_CNI_FAULT_CYCLES", "1000"))
FAULTS = {"kill-mid-add": 0.04, "agent-down-del": 0.04, "netns-gone": 0.08, "pool-full": 0.05, "add-retry": 0.05}


def shim(command: str, conf: dict, container: str, netns: str, plugin: str = "dpf-sfc-cni") -> tuple[int, dict]:
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container, "CNI_NETNS": f"/run/netns/{netns}",
           "CNI_IFNAME": "net1", "CNI_PATH": "/usr/lib/cni",
           "CNI_ARGS": f"K8S_POD_NAMESPACE=soak;K8S_POD_NAME={container}"}
    rc, out, _ = run(env, json.dumps(conf), plugin)
    return rc, json.loads(out) if out else {}


@pytest.mark.slow
def test_add_del_cycles_with_faults_leak_nothing(agent: Agent, netns: NetnsBed) -> None:
    rng = random.Random(20261124)
    conf = netconf(agent.socket)
    filler_conf = {"cniVersion": "1.0.0", "name": "filler", "type": "macvlan", "agentSocket": str(agent.socket),
                   "ipam": {"type": "dpf-ipam", "poolName": "pool1"}}
    capacity = int(POOL["end"].rsplit(".", 1)[1]) - int(POOL["start"].rsplit(".", 1)[1]) + 1
    pods = [netns.namespace(f"s{i}") for i in range(WORKERS)]
    seen: dict[str, int] = dict.fromkeys(FAULTS, 0)
    started = time.monotonic()
    interrupted = 0

    def renew(i: int) -> None:
        pyroute2_netns.remove(pods[i])
        netns.created.remove(pods[i])
        pods[i] = netns.namespace(f"s{i}")

    with ThreadPoolExecutor(WORKERS) as pool:
        for rnd in range(CYCLES // WORKERS):
            fault = next((f for f, p in FAULTS.items() if rng.random() < p), "none")
            seen[fault] = seen.get(fault, 0) + 1
            ids = [f"r{rnd}w{i}" for i in range(WORKERS)]
            fillers = []
            if fault == "pool-full":  # leave exactly WORKERS-1 free IPs: one ADD must fail cleanly
                fillers = [f"fill{rnd}x{j}" for j in range(capacity - WORKERS + 1)]
                for f in fillers:
                    assert shim("ADD", filler_conf, f, pods[0], plugin="dpf-ipam")[0] == 0
            killer = None
            if fault == "kill-mid-add":
                killer = threading.Timer(rng.uniform(0.0, 0.05), agent.kill)
                killer.start()
            adds = list(pool.map(lambda c, n: shim("ADD", conf, c, n), ids, list(pods)))
            if killer is not None:
                killer.join()
                assert all(rc == 0 or doc["code"] == 11 for rc, doc in adds), adds
                interrupted += sum(rc != 0 for rc, _ in adds)
                agent.start()
            elif fault == "pool-full":
                codes = sorted(doc.get("code", 0) for _, doc in adds)
                assert codes == [0] * (WORKERS - 1) + [103], adds
            else:
                assert [rc for rc, _ in adds] == [0] * WORKERS, adds
            if fault == "add-retry":  # the runtime retries an ADD it timed out on: same IP, one port
                again = shim("ADD", conf, ids[0], pods[0])
                assert again[1]["ips"] == adds[0][1]["ips"]
            if fault == "netns-gone":
                renew(rng.randrange(WORKERS))
            if fault == "agent-down-del":
                agent.kill()
            dels = list(pool.map(lambda c, n: shim("DEL", conf, c, n), ids, list(pods)))
            assert [rc for rc, _ in dels] == [0] * WORKERS, dels
            if fault == "agent-down-del":
                for i in range(WORKERS):  # the runtime removes the sandboxes; the veths die with them
                    renew(i)
                agent.start()  # its start-up resync reclaims ports and leases
            for f in fillers:
                assert shim("DEL", filler_conf, f, pods[0], plugin="dpf-ipam")[0] == 0
            if rnd % 50 == 0:
                assert owned_ports(agent.ovs) == {}, f"round {rnd} ({fault})"

    elapsed = time.monotonic() - started
    print(f"\n{CYCLES} cycles in {elapsed:.1f}s; faults: {seen}; ADDs cut by a kill: {interrupted}")
    assert owned_ports(agent.ovs) == {}
    assert host_veths(agent.ovs) == []
    assert agent.leases() == {}
    assert all(seen[f] > 0 for f in FAULTS) or CYCLES < 200, seen
    assert interrupted > 0 or CYCLES < 200, "no kill landed mid-ADD: the fault did not test anything"
