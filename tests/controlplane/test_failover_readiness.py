"""Agents behind the controller Service reach the leader only, across a leader crash.

Two real `dpf controller run` processes with leader election against the real apiserver, each given the name
of a Pod object as a Deployment would (POD_NAME). The test plays kubelet and the EndpointSlice controller:
an endpoint is a Pod that the shipped Service's selector matches and whose replica answers /readyz with 200.
Sampled every 50 ms throughout: never more than one endpoint, and it is the leader's. SIGKILL the leader,
restart it (the same Pod, as kubelet restarts a container): the other replica becomes the endpoint within the
lease timing, the restarted one is not selected. An agent configured with both replicas' addresses fails
over to the new leader and nothing is re-applied (the delta is empty).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

from dpf.agent.runtime.runtime import AgentRuntime
from dpf.agent.runtime.settings import AgentSettings
from dpf.controller.cache.serviceinterfaces import TYPE_URL
from dpf.controller.kube.leader_label import LEADER_LABEL, POD
from dpf.controller.kube.rest import LEASE, Kind, Rest
from dpf.controller.reconcilers.kinds import SERVICE_INTERFACE
from dpf.controller.settings import LeaderSettings
from dpf.lab.bed.kube import ControlPlane
from dpf.lab.bed.process import Child, free_port

from .harness import InterfaceHandler, dpu_cluster, eventually, host_rest, node_files, run, service_interface, stop_task

MANIFESTS = Path(__file__).resolve().parents[2] / "packaging" / "manifests"
SERVICE_ACCOUNT = Kind("", "v1", "serviceaccounts", "ServiceAccount")
LEASE_SECONDS, RENEW_SECONDS, RETRY_SECONDS = 3.0, 2.0, 0.25


def manifest(name: str, kind: str) -> dict[str, Any]:
    (doc,) = [d for d in yaml.safe_load_all((MANIFESTS / name).read_text()) if d and d["kind"] == kind]
    return doc


@dataclass
class Replica:
    """One controller process running as Pod `pod`."""

    pod: str
    identity: str
    grpc_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    child: Child | None = None

    def start(self, kube: ControlPlane, namespace: str, workdir: Path) -> None:
        argv = [sys.executable, "-m", "dpf.cli", "controller", "run", "--kubeconfig", str(kube.kubeconfig),
                "--namespace", namespace, "--watch-namespace", namespace, "--identity", self.identity,
                "--listen", f"127.0.0.1:{self.grpc_port}", "--health-listen", f"127.0.0.1:{self.http_port}",
                "--lease-duration", str(LEASE_SECONDS), "--renew-deadline", str(RENEW_SECONDS),
                "--retry-period", str(RETRY_SECONDS), "--bfb-dir", str(workdir)]
        # The Pod name comes the Deployment's way: the POD_NAME environment variable (deployment.yaml).
        self.child = Child(self.identity, argv, workdir / f"{self.identity}.log",
                           env={**os.environ, "POD_NAME": self.pod})

    def restart(self, kube: ControlPlane, namespace: str, workdir: Path) -> None:
        """Start again as kubelet restarts the container: a new process, which picks a new identity as the shipped
        default (hostname + random) does. With the same identity it would renew its own unexpired lease at once."""
        assert self.child is not None
        self.child.stop()
        self.identity = f"{self.identity}-restarted"
        self.start(kube, namespace, workdir)

    def kill(self) -> None:
        assert self.child is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.child.pid, signal.SIGKILL)
        self.child.proc.wait(10)

    async def ready(self, http: aiohttp.ClientSession) -> bool:
        try:
            async with http.get(f"http://127.0.0.1:{self.http_port}/readyz",
                                timeout=aiohttp.ClientTimeout(total=0.5)) as response:
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False


async def endpoints(rest: Rest, namespace: str, selector: str, replicas: list[Replica],
                    http: aiohttp.ClientSession) -> set[str]:
    """The Pods the Service would route to: selected by its selector and ready (the /readyz probe)."""
    selected = {p["metadata"]["name"] for p in (await rest.list(POD, namespace, label_selector=selector))["items"]}
    return {r.pod for r in replicas if r.pod in selected and await r.ready(http)}


async def holder(rest: Rest, namespace: str) -> str:
    lease = await rest.get(LEASE, LeaderSettings.lease_name, namespace)
    return (lease or {}).get("spec", {}).get("holderIdentity") or ""


def test_service_reaches_the_leader_only_across_a_leader_crash(kube: ControlPlane, namespace: str,
                                                                tmp_path: Path) -> None:
    service = manifest("service.yaml", "Service")
    template = manifest("deployment.yaml", "Deployment")["spec"]["template"]
    selector = ",".join(f"{k}={v}" for k, v in service["spec"]["selector"].items())

    async def scenario() -> None:
        rest = await host_rest(kube.kubeconfig)
        http = aiohttp.ClientSession()
        await dpu_cluster(rest, namespace, kube.kubeconfig)
        await rest.create(SERVICE_ACCOUNT, {"apiVersion": "v1", "kind": "ServiceAccount",
                                            "metadata": {"name": "default"}}, namespace)  # no SA controller here
        service["metadata"]["namespace"] = namespace
        await rest.create(Kind("", "v1", "services", "Service"), service, namespace)  # the shipped one is valid
        replicas = [Replica(f"dpf-controller-{uuid.uuid4().hex[:5]}-{i}", f"replica-{i}") for i in "ab"]
        for r in replicas:  # the Pods as the Deployment makes them (never scheduled here: no kubelet)
            await rest.create(POD, {"apiVersion": "v1", "kind": "Pod",
                                    "metadata": {"name": r.pod, "labels": dict(template["metadata"]["labels"])},
                                    "spec": {"containers": [{"name": "controller", "image": "dpf:test"}]}},
                              namespace)
        node = f"dpu-f-{uuid.uuid4().hex[:6]}"
        tls = await node_files(rest, namespace, node, "dpu", tmp_path / "certs")
        for r in replicas:
            r.start(kube, namespace, tmp_path)
        handler = InterfaceHandler()
        # The agent's shipped reconnect back-off (not the harness's shortened one): the failover time it shows
        # is the one users get.
        settings = AgentSettings(node=node, role="dpu", endpoints=tuple(f"127.0.0.1:{r.grpc_port}" for r in replicas),
                                 state_dir=tmp_path / "state", tls=tls, resync_period=0)
        runtime = AgentRuntime(settings, [handler])
        task = asyncio.create_task(runtime.run())
        seen: list[tuple[float, frozenset[str]]] = []
        sampling = True

        async def sample() -> None:
            while sampling:
                seen.append((time.monotonic(), frozenset(await endpoints(rest, namespace, selector, replicas, http))))
                await asyncio.sleep(0.05)

        sampler = asyncio.create_task(sample())
        try:
            # Steady state: one endpoint, the leader's Pod; the follower is ready too (caches warm) but not selected.
            leader_id = await eventually(lambda: holder(rest, namespace), "a leader", timeout=60)
            leader = next(r for r in replicas if r.identity == leader_id)
            follower = next(r for r in replicas if r is not leader)
            await eventually(lambda: seen and seen[-1][1] == {leader.pod}, "the Service to select the leader's Pod")
            # The follower gets ready too once its caches are warm (rollouts and the PDB work as usual), unselected.
            await eventually(lambda: follower.ready(http), "the follower to be ready (caches warm)")
            assert seen[-1][1] == {leader.pod}

            await rest.create(SERVICE_INTERFACE, service_interface(namespace, "uplink", node, "p0"), namespace)
            await eventually(lambda: handler.ports == {f"{namespace}/uplink": "p0"}, "the leader's push applied")
            assert runtime.state.controller == leader.identity
            applies = len(handler.calls)

            # SIGKILL the leader (its lease stays held), and restart it at once, as kubelet restarts a container.
            killed = time.monotonic()
            leader.kill()
            leader.restart(kube, namespace, tmp_path)
            await eventually(lambda: seen[-1][0] > killed and seen[-1][1] == {follower.pod},
                             "the Service to select the new leader's Pod", timeout=LEASE_SECONDS + 20)
            switched = next(t for t, pods in seen if t > killed and pods == {follower.pod})
            assert await holder(rest, namespace) == follower.identity
            await eventually(lambda: runtime.connected.is_set() and runtime.state.controller == follower.identity,
                             "the agent to fail over to the new leader")
            reconnected = time.monotonic()
            # The restarted ex-leader becomes ready (warm) as a follower and stays out of the Service.
            await eventually(lambda: leader.ready(http), "the restarted replica to be ready as a follower")
            await asyncio.sleep(1.0)
            assert seen[-1][1] == {follower.pod}
            pods = {p["metadata"]["name"]: p["metadata"].get("labels", {})
                    for p in (await rest.list(POD, namespace))["items"]}
            assert LEADER_LABEL not in pods[leader.pod]
            assert pods[follower.pod][LEADER_LABEL] == "true"

            # Never two endpoints at once; while the old leader was dead, none (agents wait, nobody refuses them).
            assert max(len(pods) for _, pods in seen) == 1
            print(f"\nfailover: endpoint switched {switched - killed:.2f}s after SIGKILL "
                  f"(lease {LEASE_SECONDS}s, retry {RETRY_SECONDS}s); agent reconnected after "
                  f"{reconnected - killed:.2f}s")
            assert switched - killed <= LEASE_SECONDS + 5.0, f"the new leader took {switched - killed:.2f}s"

            # The agent's state was not re-sent: the new leader has the agent's stream and sent it nothing (the
            # versions the agent subscribed with are current), and the handler applied nothing.
            await eventually(lambda: metric(http, follower, "dpf_controller_connected_agents"),
                             "the new leader to count the agent's stream")
            assert await metric(http, follower, "dpf_controller_responses_total", type_url=TYPE_URL) == 0
            assert len(handler.calls) == applies, f"re-applied after failover: {handler.calls[applies:]}"
            await rest.merge_patch(SERVICE_INTERFACE, "uplink", {"spec": {"physical": {"interfaceName": "p1"}}},
                                   namespace)
            await eventually(lambda: handler.ports == {f"{namespace}/uplink": "p1"}, "the new leader pushes changes")
            assert await metric(http, follower, "dpf_controller_responses_total", type_url=TYPE_URL) == 1
        finally:
            sampling = False
            await asyncio.gather(sampler, return_exceptions=True)
            await stop_task(task)
            for r in replicas:
                if r.child is not None:
                    r.child.stop()
            await http.close()
            await rest.close()

    run(scenario(), timeout=150)


async def metric(http: aiohttp.ClientSession, replica: Replica, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`, from the replica's /metrics."""
    async with http.get(f"http://127.0.0.1:{replica.http_port}/metrics") as response:
        text = await response.text()
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == name and labels.items() <= sample.labels.items())
