"""The fuzz run shared by `tests/reliability/test_fuzz.py` (a seeded subset) and `bench/reliability/fuzz.py`.

Against a live chain (`livebed.live_chain`) with a 20/s ping through both its switches:
1. batches of mutated objects (`mutations.generate`: at most one per base in a batch) are created through the
   apiserver, each with a canary (a plain, valid physical interface) that must go Ready beside them;
   each mutation must end as: refused with 422 naming the field; or accepted, not Ready, with a condition
   naming the field; or, for a still-valid object, Ready. Then the batch is deleted and must be gone;
2. churn: a chain and an interface created and deleted again under the same names, at once or 0-1.2 s apart;
3. afterwards nothing may be left (`livebed.leftovers`), no `ovs-ofctl` orphan, no traceback in any log, and
   the live chain lost no packet and never left Ready.
"""

from __future__ import annotations

import contextlib
import json
import random
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from dpf.lab import chains
from dpf.lab.bed.process import wait_until
from dpf.lab.bed.tools import tool
from tests.reliability import livebed
from tests.reliability.livebed import Live, PingResult, ReadyWatch
from tests.reliability.mutations import KINDS, Base, Mutation, anchor_object, corpus, generate, netdevs

CANARY_NETDEV = "fzcanary"
CHURN_NETDEV = "fzchurn"
SVC_GROUP, SVC_VERSION = chains.SVC


@dataclass
class Outcome:
    mutation: Mutation
    verdict: str
    """refused / condition / ready, or `FAIL ...` saying what was wrong."""
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.verdict.startswith("FAIL")

    def line(self) -> str:
        return f"{self.mutation.describe()} [{self.mutation.obj['metadata']['name']}]: {self.verdict} {self.detail}"


@dataclass
class FuzzReport:
    outcomes: list[Outcome] = field(default_factory=list)
    canaries: list[str] = field(default_factory=list)
    """Canaries or batch objects that did not behave (not Ready beside bad objects, not deleted)."""
    churn_cycles: int = 0
    churn_problems: list[str] = field(default_factory=list)
    ping: dict[str, PingResult] = field(default_factory=dict)
    chain_not_ready: list[tuple[float, str, str]] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    tracebacks: dict[str, list[str]] = field(default_factory=dict)
    safety_net: list[str] = field(default_factory=list)
    """Controller log lines of the orphan sweep deleting something, and of leadership lost: not failures (the sweep
    exists for the objects a deposed leader's last request can leave), but what a reader of a failure needs."""
    seconds: float = 0.0

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for o in self.outcomes:
            key = "FAIL" if o.failed else o.verdict
            out[key] = out.get(key, 0) + 1
        return out

    def summary(self) -> str:
        lines = [f"mutations: {len(self.outcomes)} in {self.seconds:.0f}s: "
                 + ", ".join(f"{k} {v}" for k, v in sorted(self.counts().items()))]
        failed = [o for o in self.outcomes if o.failed]
        by_op: dict[str, int] = {}
        for o in failed:
            by_op[o.mutation.op] = by_op.get(o.mutation.op, 0) + 1
        if by_op:
            lines.append("failed mutations by kind: " + ", ".join(f"{k} {v}" for k, v in sorted(by_op.items())))
        lines += [f"  {o.line()[:400]}" for o in failed[:40]]
        if len(failed) > 40:
            lines.append(f"  ... {len(failed) - 40} more")
        lines.append(f"canaries/deletion problems: {len(self.canaries)}")
        lines += [f"  {c[:300]}" for c in self.canaries[:20]]
        lines.append(f"churn: {self.churn_cycles} create/delete cycles, problems: {len(self.churn_problems)}")
        lines += [f"  {c[:300]}" for c in self.churn_problems[:20]]
        lines.append("live chain ping: " + "; ".join(f"{k} {v.summary()}" for k, v in self.ping.items()))
        lines.append(f"live chain not Ready in {len(self.chain_not_ready)} samples"
                     + (f" (first: {self.chain_not_ready[0][1]} {self.chain_not_ready[0][2][:200]})"
                        if self.chain_not_ready else ""))
        lines.append(f"leftovers: {len(self.leftovers)}")
        lines += [f"  {x[:300]}" for x in self.leftovers[:30]]
        lines.append(f"orphaned ovs-ofctl: {len(self.orphans)}")
        lines += [f"  {x}" for x in self.orphans[:10]]
        lines.append(f"tracebacks: {sum(len(v) for v in self.tracebacks.values())}")
        lines += [f"  {k}: {x}" for k, v in self.tracebacks.items() for x in v[:10]]
        lines.append(f"orphan sweep deletions and leadership losses: {len(self.safety_net)}")
        lines += [f"  {x[:300]}" for x in self.safety_net[:10]]
        return "\n".join(lines)


class Api:
    """Create/list/delete of the fuzzed kinds in one namespace, through the official client."""

    def __init__(self, live: Live) -> None:
        self.custom = k8s.CustomObjectsApi(live.bed.host.client)
        self.ns = live.ns

    def create(self, obj: dict[str, Any], strict: bool = True) -> ApiException | None:
        try:
            self.custom.create_namespaced_custom_object(SVC_GROUP, SVC_VERSION, self.ns, KINDS[obj["kind"]], obj,
                                                        field_validation="Strict" if strict else "Ignore")
        except ApiException as exc:
            return exc
        return None

    def delete(self, kind: str, name: str) -> None:
        try:
            self.custom.delete_namespaced_custom_object(SVC_GROUP, SVC_VERSION, self.ns, KINDS[kind], name)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def objects(self) -> dict[tuple[str, str], dict[str, Any]]:
        out = {}
        for kind, plural in KINDS.items():
            for obj in self.custom.list_namespaced_custom_object(SVC_GROUP, SVC_VERSION, self.ns, plural)["items"]:
                out[(kind, obj["metadata"]["name"])] = obj
        return out


def refusal_message(exc: ApiException) -> str:
    try:
        return json.loads(exc.body)["message"]
    except (TypeError, ValueError, KeyError):
        return str(exc.body)


def conditions(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return list((obj.get("status") or {}).get("conditions") or ())


def ready_status(obj: dict[str, Any]) -> str | None:
    return next((c.get("status") for c in conditions(obj) if c.get("type") == "Ready"), None)


def judge(mutation: Mutation, obj: dict[str, Any] | None) -> str | None:
    """The settled verdict for an accepted mutation, or None while it is still settling."""
    if obj is None:
        return None
    ready = ready_status(obj)
    if mutation.valid:
        return "ready" if ready == "True" else None
    if ready == "True":
        return None
    named = [c for c in conditions(obj) if c.get("status") != "True"
             and any(n in (c.get("message") or "") for n in mutation.names)]
    return "condition" if named else None


def describe_status(obj: dict[str, Any] | None) -> str:
    if obj is None:
        return "(object gone)"
    parts = [f"{c.get('type')}={c.get('status')} {c.get('reason', '')}: {(c.get('message') or '')[:200]}"
             for c in conditions(obj)]
    return "; ".join(parts) or "(no conditions)"


def make_netdevs(live: Live, names: list[str]) -> None:
    """Netdevs on every DPU for what `physical`, pf and vf interfaces of the fuzz objects name (veths: this kernel
    has no dummy module), and br-ovn, OVN-Kubernetes' bridge that `ovn` interfaces patch to."""
    for dpu in live.bed.dpus.values():
        batch = "".join(f"link add {n} type veth peer name {n}-pr\nlink set {n} up\nlink set {n}-pr up\n"
                        for n in names)
        subprocess.run([tool("ip"), "-n", dpu.netns, "-batch", "-"], input=batch, text=True, check=True,
                       capture_output=True)
        assert dpu.ovs is not None
        dpu.ovs.add_bridge("br-ovn")


def canary(name: str, namespace: str, group: str) -> dict[str, Any]:
    return {"apiVersion": "svc.dpu.nvidia.com/v1alpha1", "kind": "DPUServiceInterface",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"template": {"spec": {
                "nodeSelector": {"matchLabels": {chains.GROUP_LABEL: group}},
                "template": {"metadata": {"labels": {"fuzz-canary": name}},
                             "spec": {"interfaceType": "physical", "physical": {"interfaceName": CANARY_NETDEV}}}}}}}


class FuzzRun:
    def __init__(self, live: Live, say: Callable[[str], None] = print, settle: float = 20.0,
                 gone: float = 30.0) -> None:
        self.live, self.say, self.settle, self.gone = live, say, settle, gone
        self.api = Api(live)
        self.bases: list[Base] = corpus(live.ns, live.bed.group)
        self.report = FuzzReport()

    def run(self, count: int, seed: int, churn_cycles: int) -> FuzzReport:
        started = time.monotonic()
        live = self.live
        batches = generate(self.bases, count, seed)
        self.say(f"{len(self.bases)} base objects, {count} mutations in {len(batches)} batches, seed {seed}")
        base_line = livebed.baseline(live)
        make_netdevs(live, [*netdevs(self.bases), CANARY_NETDEV, CHURN_NETDEV])
        anchors = [anchor_object(a, live.ns, live.bed.group) for b in self.bases for a in b.anchors]
        for obj in anchors:
            if exc := self.api.create(obj):
                raise RuntimeError(f"anchor {obj['metadata']['name']} refused: {refusal_message(exc)}")
        wait_until(lambda: all(ready_status(self.api.objects().get(("DPUServiceInterface", a["metadata"]["name"]))
                                            or {}) == "True" for a in anchors),
                   60, "the chain bases' anchor interfaces Ready")
        pingers = live.pingers()
        watch = ReadyWatch(live.bed.host_reader, "dpuservicechains", live.ns, livebed.CHAIN)
        try:
            for i, batch in enumerate(batches):
                self._batch(i, batch)
            self._churn(churn_cycles, random.Random(seed), anchors)
        finally:
            watch.stop()
            self.report.ping = {k: p.stop() for k, p in pingers.items()}
        self.report.chain_not_ready = watch.not_true()
        for obj in anchors:
            self.api.delete("DPUServiceInterface", obj["metadata"]["name"])
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: not livebed.leftovers(live, base_line), self.gone, "no leftovers")
        self.report.leftovers = livebed.leftovers(live, base_line)
        self.report.orphans = livebed.orphaned_ofctl(live)
        self.report.tracebacks = livebed.tracebacks(live)
        self.report.safety_net = livebed.log_lines(live, "controller", ("deleted orphaned", "lost the lease"))
        self.report.seconds = time.monotonic() - started
        return self.report

    def _batch(self, index: int, batch: list[Mutation]) -> None:
        live = self.live
        pending: dict[str, Mutation] = {}
        for m in batch:
            exc = self.api.create(m.obj, strict=m.strict)
            if exc is None:
                pending[m.obj["metadata"]["name"]] = m
                continue
            message = refusal_message(exc)
            if m.valid:
                verdict = f"FAIL refused a valid object ({exc.status})"
            elif exc.status != 422 and not (exc.status == 400 and "strict decoding error" in message):
                # The apiserver refuses unknown fields (fieldValidation=Strict) with 400 while decoding, before
                # validation; everything else it finds wrong must be a 422.
                verdict = f"FAIL refused with {exc.status}, not 422"
            elif not any(n in message for n in m.names):
                verdict = f"FAIL 422 does not name {' or '.join(m.names)}"
            else:
                verdict = "refused"
            self.report.outcomes.append(Outcome(m, verdict, message[:300] if verdict.startswith("FAIL") else ""))
        canary_name = f"fz-canary-{index}"
        if exc := self.api.create(canary(canary_name, live.ns, live.bed.group)):
            self.report.canaries.append(f"batch {index}: canary refused: {refusal_message(exc)[:200]}")
        deadline = time.monotonic() + self.settle
        verdicts: dict[str, str] = {}
        canary_ready = False
        seen: dict[tuple[str, str], dict[str, Any]] = {}
        while True:
            seen = self.api.objects()
            for name, m in pending.items():
                if name not in verdicts and (v := judge(m, seen.get((m.kind, name)))):
                    verdicts[name] = v
            canary_ready = ready_status(seen.get(("DPUServiceInterface", canary_name)) or {}) == "True"
            if (len(verdicts) == len(pending) and canary_ready) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        for name, m in pending.items():
            obj = seen.get((m.kind, name))
            if name in verdicts:
                self.report.outcomes.append(Outcome(m, verdicts[name]))
            elif m.valid:
                self.report.outcomes.append(Outcome(m, "FAIL valid object not Ready", describe_status(obj)))
            elif ready_status(obj or {}) == "True":
                self.report.outcomes.append(Outcome(m, "FAIL invalid object Ready", describe_status(obj)))
            else:
                self.report.outcomes.append(Outcome(m, f"FAIL no condition names {' or '.join(m.names)}",
                                                    describe_status(obj)))
        if not canary_ready:
            status = describe_status(seen.get(("DPUServiceInterface", canary_name)))
            self.report.canaries.append(f"batch {index}: canary {canary_name} not Ready beside the batch after "
                                        f"{self.settle:.0f}s: {status}")
        names = [(m.base.kind, n) for n, m in pending.items()] + [("DPUServiceInterface", canary_name)]
        for kind, name in names:
            self.api.delete(kind, name)
        try:
            wait_until(lambda: not (set(names) & set(self.api.objects())), self.gone, f"batch {index} deleted",
                       interval=0.2)
        except TimeoutError:
            stuck = set(names) & set(self.api.objects())
            self.report.canaries.append(f"batch {index}: {len(stuck)} objects not gone {self.gone:.0f}s after "
                                        f"delete: {sorted(n for _, n in stuck)[:10]}")
        failed = sum(1 for o in self.report.outcomes[-len(batch):] if o.failed)
        self.say(f"batch {index}: {len(batch)} mutations, {len(batch) - len(pending)} refused, "
                 f"{failed} failed; canary {'Ready' if canary_ready else 'NOT Ready'}")

    def _churn(self, cycles: int, rng: random.Random, anchors: list[dict[str, Any]]) -> None:
        """Create and delete a chain and an interface under the same names, at once or a random 0-1.2 s apart."""
        live = self.live
        chain_base = next(b for b in self.bases if b.kind == "DPUServiceChain")
        chain = json.loads(json.dumps(chain_base.obj))
        chain["metadata"]["name"] = "fz-churn-chain"
        iface = canary("fz-churn-if", live.ns, live.bed.group)
        iface["spec"]["template"]["spec"]["template"]["spec"]["physical"]["interfaceName"] = CHURN_NETDEV
        for cycle in range(cycles):
            for obj in (chain, iface):
                exc = self.api.create(obj)
                if exc is not None and exc.status == 409:  # the last cycle's object is still terminating
                    key = (obj["kind"], obj["metadata"]["name"])
                    try:
                        wait_until(lambda k=key: k not in self.api.objects(), self.gone, f"{key} gone")
                    except TimeoutError:
                        self.report.churn_problems.append(f"cycle {cycle}: {key[1]} not gone {self.gone:.0f}s "
                                                          f"after its delete")
                        continue
                    exc = self.api.create(obj)
                if exc is not None:
                    self.report.churn_problems.append(f"cycle {cycle}: create {obj['metadata']['name']} refused: "
                                                      f"{refusal_message(exc)[:200]}")
            # Half the cycles delete at once (before the controller has even seen the create), half a moment later.
            time.sleep(rng.choice((0.0, rng.uniform(0, 1.2))))
            self.api.delete("DPUServiceChain", chain["metadata"]["name"])
            self.api.delete("DPUServiceInterface", iface["metadata"]["name"])
            self.report.churn_cycles += 1
        keys = {("DPUServiceChain", "fz-churn-chain"), ("DPUServiceInterface", "fz-churn-if")}
        try:
            wait_until(lambda: not (keys & set(self.api.objects())), self.gone, "the churned objects gone")
        except TimeoutError:
            self.report.churn_problems.append(f"not gone {self.gone:.0f}s after the last delete: "
                                              f"{sorted(keys & set(self.api.objects()))}")
        self.say(f"churn: {cycles} cycles, {len(self.report.churn_problems)} problems")
