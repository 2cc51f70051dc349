"""Pure pieces, no servers: snapshot versions and deltas, the agent's merge check, the on-disk store, the work
queue's de-duplication and back-off, and the status condition computed from agent reports."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from dpf.agent.runtime.applier import Desync, TypeApplier
from dpf.agent.runtime.handlers import RecordingHandler
from dpf.agent.runtime.metrics import AgentMetrics
from dpf.agent.runtime.store import StateStore
from dpf.controller.cache.serviceinterfaces import TYPE_URL, compute_serviceinterfaces, resource_version
from dpf.controller.cache.snapshot import InconsistentSnapshot, Snapshot
from dpf.controller.cache.snapshot_cache import SnapshotCache
from dpf.controller.kube.workqueue import WorkQueue
from dpf.controller.reconcilers.agent_verdicts import fold, verdict
from dpf.controller.server.node_status import Nack, NodeRegistry
from dpf.controller.settings import QueueSettings
from dpf.proto import versioning
from dpf.proto.v1 import nodestate_pb2 as pb
from dpf.proto.v1 import sfc_pb2


def si(name: str, node: str = "dpu-1", interface: str = "", namespace: str = "ns") -> dict:
    """A physical interface; each name has its own uplink unless `interface` says otherwise (two interfaces on
    one port are a conflict the controller holds back)."""
    return {"metadata": {"name": name, "namespace": namespace, "generation": 1, "uid": f"uid-{name}"},
            "spec": {"node": node, "interfaceType": "physical",
                     "physical": {"interfaceName": interface or f"up-{name}"}}}


def test_snapshot_version_is_a_content_hash_independent_of_order() -> None:
    one = compute_serviceinterfaces([si("a"), si("b", interface="p1")])
    two = compute_serviceinterfaces([si("b", interface="p1"), si("a")])
    changed = compute_serviceinterfaces([si("a"), si("b", interface="p2")])
    assert one.version == two.version
    assert one.version != changed.version
    assert one.resources["ns/b"].version != changed.resources["ns/b"].version
    assert one.resources["ns/a"].version == changed.resources["ns/a"].version
    assert compute_serviceinterfaces([]).version == Snapshot.empty(TYPE_URL).version


def test_snapshot_delta_sends_only_changes_and_removals() -> None:
    old = compute_serviceinterfaces([si("a"), si("b"), si("c")])
    new = compute_serviceinterfaces([si("a"), si("b", interface="p9"), si("d")])
    changed, removed = new.delta(old.resource_versions())
    assert [r.name for r in changed] == ["ns/b", "ns/d"]
    assert removed == ["ns/c"]
    assert new.delta(new.resource_versions()) == ([], [])


def test_inconsistent_snapshots_are_refused() -> None:
    with pytest.raises(InconsistentSnapshot, match="appears twice"):
        compute_serviceinterfaces([si("a"), si("a", interface="p1")])
    with pytest.raises(InconsistentSnapshot, match="snapshot type is"):
        Snapshot.build("type.googleapis.com/dpf.v1.Other", [("x", sfc_pb2.ServiceInterface())])


def test_objects_being_deleted_leave_the_snapshot() -> None:
    gone = si("a")
    gone["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert list(compute_serviceinterfaces([gone, si("b")]).resources) == ["ns/b"]


def _response(snapshot: Snapshot, known: dict[str, str] | None) -> pb.DiscoveryResponse:
    response = pb.DiscoveryResponse(type_url=TYPE_URL, version_info=snapshot.version, nonce="1",
                                    full_state=known is None)
    send, removed = (list(snapshot.resources.values()), []) if known is None else snapshot.delta(known)
    for r in send:
        response.resources.add(name=r.name, version=r.version, body=r.body)
    response.removed_resources.extend(removed)
    return response


def test_agent_applies_deltas_persists_and_detects_desync(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    handler = RecordingHandler(sfc_pb2.ServiceInterface)
    applier = TypeApplier(handler, store, AgentMetrics(), 0.01, 0.01)
    reporter = type("R", (), {"report": lambda *a, **k: None})()
    first = compute_serviceinterfaces([si("a"), si("b")])
    outcome = asyncio.run(applier.on_response(_response(first, None), reporter))
    assert outcome.version == first.version
    assert outcome.error is None
    second = compute_serviceinterfaces([si("a"), si("c")])
    asyncio.run(applier.on_response(_response(second, first.resource_versions()), reporter))
    assert sorted(handler.desired) == ["ns/a", "ns/c"]
    reloaded = StateStore(tmp_path).load(TYPE_URL)
    assert reloaded.version == second.version
    assert reloaded.resource_versions() == second.resource_versions()
    # A delta computed against a set the agent does not hold cannot add up: reconnect, do not apply.
    third = compute_serviceinterfaces([si("a"), si("d")])
    with pytest.raises(Desync):
        asyncio.run(applier.on_response(_response(third, first.resource_versions()), reporter))
    assert sorted(handler.desired) == ["ns/a", "ns/c"]


def test_a_corrupt_state_file_is_moved_aside(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    state = store.load(TYPE_URL)
    state.version = "bogus"
    store.save(state)
    assert store.load(TYPE_URL).version == versioning.EMPTY
    assert len(list(tmp_path.glob("*.corrupt"))) == 1
    path = next(tmp_path.glob("*.corrupt"))
    assert json.loads(path.read_text())["version"] == "bogus"


def test_workqueue_dedupes_serialises_and_backs_off() -> None:
    now = [100.0]
    queue = WorkQueue(QueueSettings(backoff_base=1.0, backoff_max=4.0, qps=1000, burst=1000), clock=lambda: now[0])

    async def scenario() -> None:
        queue.add(("r", "a"))
        queue.add(("r", "a"))
        assert len(queue) == 1, "a key queued twice is processed once"
        key = await queue.get()
        queue.add(key)  # added while processing: comes back after done()
        assert len(queue) == 0
        queue.done(key)
        assert len(queue) == 1
        key = await queue.get()
        assert [queue.retry(key) for _ in range(4)] == [1.0, 2.0, 4.0, 4.0]
        queue.done(key)
        queue.forget(key)
        assert queue.retry(key) == 1.0

    asyncio.run(scenario())


def test_a_key_waits_for_one_delayed_add_the_earliest() -> None:
    """A reconciler that asks for a requeue after each pass keeps one cycle: with one timer per add_after, two
    passes a second apart each asking for 60 s became two 60 s cycles forever (bench/services, 2026-12-06)."""
    now = [0.0]
    queue = WorkQueue(QueueSettings(qps=1000, burst=1000), clock=lambda: now[0])
    key = ("r", "a")

    async def passes_in(seconds: float) -> int:
        count, end = 0, now[0] + seconds
        while now[0] < end:
            now[0] += 1.0
            while True:
                try:  # due keys come at once; otherwise get() would wait (real time) for the fake clock
                    got = await asyncio.wait_for(queue.get(), 0.001)
                except TimeoutError:
                    break
                queue.add_after(got, 60.0)  # each pass asks to be requeued in 60 s, as a resync does
                queue.done(got)
                count += 1
        return count

    async def scenario() -> None:
        queue.add_after(key, 60.0)
        now[0] += 1.0
        queue.add_after(key, 60.0)  # a second pass a second later: the same one cycle
        assert queue.waiting == 1
        assert await passes_in(240.0) == 4
        assert queue.waiting == 1
        queue.add_after(key, 5.0)  # sooner: replaces the later time
        assert queue.waiting == 1
        assert await passes_in(6.0) == 1

    asyncio.run(scenario())


def test_condition_from_agent_reports() -> None:
    nodes, cache = NodeRegistry(), SnapshotCache()
    a, b = si("a", node="n1"), si("b", node="n2", interface="bad")

    def condition(*objects: dict) -> tuple[str, str, str]:
        verdicts = [verdict(nodes, cache, o["spec"]["node"], TYPE_URL, f"ns/{o['metadata']['name']}") for o in objects]
        return fold(verdicts, len(verdicts))

    def report(node: str, obj: dict, state: int, message: str = "") -> None:
        name = f"ns/{obj['metadata']['name']}"
        nodes.node(node).of(TYPE_URL).observed[name] = pb.ObjectStatus(
            name=name, resource_version=resource_version(obj), state=state, message=message)

    assert condition(a, b)[:2] == ("False", "Pending")
    assert "not published" in condition(a, b)[2]
    cache.set("n1", compute_serviceinterfaces([a]))
    cache.set("n2", compute_serviceinterfaces([b]))
    n1 = nodes.node("n1")
    n1.connected = True
    n1.of(TYPE_URL).acked = {"ns/a": resource_version(a)}
    n2 = nodes.node("n2")
    n2.of(TYPE_URL).nack = Nack("v", "invalid", {"ns/b": "no such port"}, {"ns/b": resource_version(b)})
    status, reason, message = condition(a, b)
    assert (status, reason) == ("False", "Failure"), "a rejected object stays so until its spec changes"
    assert message == "node n2 rejected ns/b: no such port"
    n2.of(TYPE_URL).nack = None
    n2.of(TYPE_URL).acked = {"ns/b": resource_version(b)}
    # An ACK says "accepted"; only a READY report at that version says the port is there.
    assert condition(a, b)[:2] == ("False", "Pending")
    report("n1", a, pb.OBJECT_STATE_READY)
    report("n2", b, pb.OBJECT_STATE_PROGRESSING, "waiting for ovs-vswitchd to assign an OpenFlow port")
    assert condition(a, b) == ("False", "Pending", "waiting for agents to apply 1 of 2: ns/b on n2: waiting for "
                                                   "ovs-vswitchd to assign an OpenFlow port")
    report("n2", b, pb.OBJECT_STATE_READY)
    assert condition(a, b) == ("True", "Success", "")
    # An ACK of an older version of the object does not count.
    edited = si("b", node="n2", interface="p7")
    cache.set("n2", compute_serviceinterfaces([edited]))
    assert condition(a, edited)[:2] == ("False", "Pending")
