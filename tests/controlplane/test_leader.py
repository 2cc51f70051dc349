"""Two controller replicas: one leader (the Lease holder), the follower refuses streams with UNAVAILABLE, and
when the leader dies without releasing the lease the follower takes over within the lease duration; the
agent fails over and does not re-apply its unchanged state."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import grpc
import pytest

from dpf.controller.cache.serviceinterfaces import TYPE_URL
from dpf.controller.kube.rest import EVENT, LEASE
from dpf.controller.manager import Controller
from dpf.controller.reconcilers.kinds import SERVICE_INTERFACE
from dpf.controller.settings import LeaderSettings
from dpf.lab.bed.kube import ControlPlane
from dpf.proto.v1 import nodestate_pb2 as pb
from dpf.proto.v1 import nodestate_pb2_grpc as pb_grpc

from .harness import (
    InterfaceHandler,
    agent,
    controller_settings,
    dpu_cluster,
    eventually,
    host_rest,
    node_files,
    run,
    service_interface,
    stop_task,
)

LEASE_SECONDS = 3.0
RETRY_SECONDS = 0.25


def test_two_replicas_one_leader_and_failover_within_the_lease(kube: ControlPlane, namespace: str,
                                                               tmp_path: Path) -> None:
    async def scenario() -> None:
        rest = await host_rest(kube.kubeconfig)
        await dpu_cluster(rest, namespace, kube.kubeconfig)
        replicas = [Controller(controller_settings(kube.kubeconfig, namespace, identity=f"replica-{i}",
                                                   lease_duration=LEASE_SECONDS, retry_period=RETRY_SECONDS))
                    for i in range(2)]
        for replica in replicas:
            await replica.start()
        node = f"dpu-l-{uuid.uuid4().hex[:6]}"
        tls = await node_files(rest, namespace, node, "dpu", tmp_path / "certs")
        handler = InterfaceHandler()
        runtime = agent(node, [r.grpc_port for r in replicas], tmp_path / "state", tls, handler)
        task = asyncio.create_task(runtime.run())
        stopped: list[Controller] = []
        try:
            await eventually(lambda: sum(r.is_leader for r in replicas) == 1, "exactly one leader")
            leader = next(r for r in replicas if r.is_leader)
            follower = next(r for r in replicas if not r.is_leader)
            lease = await rest.get(LEASE, LeaderSettings.lease_name, namespace)
            assert lease["spec"]["holderIdentity"] == leader.identity

            # The follower refuses streams, naming the leader (once it has looked at the Lease since the election).
            await eventually(lambda: follower.known_leader == leader.identity, "the follower to see the new leader")
            credentials = grpc.ssl_channel_credentials(tls.ca.read_bytes(), tls.key.read_bytes(),
                                                       tls.cert.read_bytes())
            async with grpc.aio.secure_channel(f"127.0.0.1:{follower.grpc_port}", credentials) as channel:
                call = pb_grpc.NodeStateStub(channel).Stream()
                hello = pb.StreamRequest(hello=pb.Hello(node=node, role=pb.ROLE_DPU))
                with pytest.raises(grpc.aio.AioRpcError) as refused:  # the refusal may already end the write
                    await _hello_then_read(call, hello)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert f"not the leader (leader: {leader.identity})" in refused.value.details()

            await rest.create(SERVICE_INTERFACE, service_interface(namespace, "uplink", node, "p0"), namespace)
            await eventually(lambda: handler.ports == {f"{namespace}/uplink": "p0"}, "the leader's push applied")
            assert runtime.state.controller == leader.identity
            applies = len(handler.calls)

            # The leader dies without releasing its lease.
            crashed = time.monotonic()
            await leader.stop(release=False)
            stopped.append(leader)
            await eventually(lambda: follower.is_leader, "the follower to take over", timeout=LEASE_SECONDS * 3)
            took = time.monotonic() - crashed
            assert took <= LEASE_SECONDS + 2 * RETRY_SECONDS + 0.5, f"failover took {took:.2f}s"

            await eventually(lambda: runtime.connected.is_set() and runtime.state.controller == follower.identity,
                             "the agent to fail over to the new leader")
            await eventually(lambda: follower.nodes.get(node) and follower.nodes.get(node).of(TYPE_URL).acked,
                             "the new leader to know the node's state")
            await asyncio.sleep(0.5)
            assert len(handler.calls) == applies, "unchanged state is not re-applied after failover"

            await rest.merge_patch(SERVICE_INTERFACE, "uplink", {"spec": {"physical": {"interfaceName": "p1"}}},
                                   namespace)
            await eventually(lambda: handler.ports == {f"{namespace}/uplink": "p1"}, "the new leader pushes changes")

            # Each term is recorded as an Event on the Lease, naming the new leader.
            events = (await rest.list(EVENT, namespace))["items"]
            elected = {e["note"].split()[0] for e in events
                       if e["reason"] == "LeaderElected" and e["regarding"]["kind"] == "Lease"}
            assert elected == {leader.identity, follower.identity}
        finally:
            await stop_task(task)
            for replica in replicas:
                if replica not in stopped:
                    await replica.stop()
            await rest.close()

    run(scenario())


async def _hello_then_read(call, hello: pb.StreamRequest) -> pb.StreamResponse:
    await call.write(hello)
    return await call.read()


def test_a_clean_stop_while_the_lease_is_renewed_leaves_no_task_and_no_holder(kube: ControlPlane, namespace: str,
                                                                              tmp_path: Path) -> None:
    """Renewing every few milliseconds, the election loop races each release: it must never take the lease back
    and start a new term (workers, DPU-cluster clients) that outlives the stopped controller."""
    async def scenario() -> None:
        rest = await host_rest(kube.kubeconfig)
        await dpu_cluster(rest, namespace, kube.kubeconfig)
        before = asyncio.all_tasks()
        try:
            for attempt in range(5):
                controller = Controller(controller_settings(kube.kubeconfig, namespace, identity=f"racer-{attempt}",
                                                            lease_duration=LEASE_SECONDS, retry_period=0.005))
                await controller.start()
                await eventually(lambda c=controller: c.is_leader and c.cache.ready.is_set(), "the racer to lead")
                await controller.stop()
                assert not controller.is_leader
                left = [t.get_name() for t in asyncio.all_tasks() - before]
                assert left == [], f"tasks outlived the stopped controller (attempt {attempt}): {left}"
                lease = await rest.get(LEASE, LeaderSettings.lease_name, namespace)
                assert lease["spec"]["holderIdentity"] == "", f"the lease is still held: {lease['spec']}"
        finally:
            await rest.close()

    run(scenario())
