"""The DPU phase machine (upstream DPF v24.10's DPU controller, §2.3), as one pure function: `step`.

Input: an `Observed`, everything the reconciler saw about one DPU (the object, its host Node, BFB, DPUFlavor,
the allocator's answer, the host agent's report for this DPU, the DPU's Node in its DPU cluster, the result
of the last node-effect call, the clock, the settings). Output: a `Step`, what to write and do (status
phase and conditions, the `DPUProvisioning` to publish for the host agent or None, side effects, Events, the
phase left for the duration histogram, when to look again). No I/O, no clock of its own.

Where the machine is lives on the DPU object, so that a restarted controller or a new leader resumes: the
status phase, plus the annotation `provisioning.dpu.nvidia.com/provisioning` (`Record`, JSON): the attempt of
the current phase, when it started, the install id and the reboot id. A DPU whose record says it left
OS Installing is never flashed again; one whose record still says OS Installing gets the same install id
(the host agent flashes an id at most once), so nothing is reported installed that the agent did not
report DONE.

Better than upstream, on purpose: every phase has a timeout and a bounded retry with exponential back-off
(`ProvisioningSettings`); phase Error only when the attempts are spent, with a reason naming the phase and
the cause; the annotation `provisioning.dpu.nvidia.com/retry` (any new value) starts the failed phase again;
deletion works in every phase, OS Installing included (upstream waits for the install to finish).
"""

from __future__ import annotations

import json
import math
import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlparse

from dpf.controller.api import conditions as cond
from dpf.controller.api.meta import Condition
from dpf.controller.settings import ProvisioningSettings
from dpf.proto.v1 import provisioning_pb2 as ppb

Obj = Mapping[str, Any]

FINALIZER = "provisioning.dpu.nvidia.com/dpu-protection"
RECORD_ANNOTATION = "provisioning.dpu.nvidia.com/provisioning"
RETRY_ANNOTATION = "provisioning.dpu.nvidia.com/retry"
POWER_CYCLE_ANNOTATION = "provisioning.dpu.nvidia.com/host-power-cycle-required"
REBOOT_COMMAND_ANNOTATION = "provisioning.dpu.nvidia.com/reboot-command"
POWERCYCLE_COMMAND_ANNOTATION = "provisioning.dpu.nvidia.com/powercycle-command"
OOB_BRIDGE_LABEL = "feature.node.kubernetes.io/dpu-oob-bridge-configured"
PCI_ADDRESS_LABEL = "provisioning.dpu.nvidia.com/dpu-pciAddress"
HOST_LABEL = "provisioning.dpu.nvidia.com/host"
BFB_VERSION_LABEL = "provisioning.dpu.nvidia.com/DOCA-BFB-version"

INITIALIZING = "Initializing"
NODE_EFFECT = "Node Effect"
PENDING = "Pending"
DMS_DEPLOYMENT = "DMS Deployment"
OS_INSTALLING = "OS Installing"
REBOOTING = "Rebooting"
HOST_NETWORK = "Host Network Configuration"
CLUSTER_CONFIG = "DPU Cluster Config"
READY = "Ready"
ERROR = "Error"
DELETING = "Deleting"
ORDER = (INITIALIZING, NODE_EFFECT, PENDING, DMS_DEPLOYMENT, OS_INSTALLING, REBOOTING, HOST_NETWORK,
         CLUSTER_CONFIG, READY)

READY_CONDITION = "Ready"
CONDITION_OF = {INITIALIZING: "Initialized", NODE_EFFECT: "NodeEffectReady", PENDING: "BFBReady",
                DMS_DEPLOYMENT: "DMSRunning", OS_INSTALLING: "OSInstalled", REBOOTING: "Rebooted",
                HOST_NETWORK: "HostNetworkReady", CLUSTER_CONFIG: READY_CONDITION, READY: READY_CONDITION}
CONDITION_TYPES = ("Initialized", "NodeEffectReady", "BFBReady", "DMSRunning", "OSInstalled", "Rebooted",
                   "HostNetworkReady", READY_CONDITION)

# Failure reasons that are not "<Phase>Timeout".
NODE_EFFECT_ERROR = "NodeEffectError"
INSTALLATION_FAILED = "InstallationFailed"
BFCFG_FAILED = "BfCfgRenderFailed"
REBOOT_FAILED = "RebootFailed"
INSTALL_GRACE = 60.0  # the controller's OS Installing timeout exceeds the agent's, whose report names the cause

REBOOT_METHODS = {"cycle": ppb.REBOOT_METHOD_POWER_CYCLE, "reset": ppb.REBOOT_METHOD_POWER_RESET}


def timeout_reason(phase: str) -> str:
    """"DMS Deployment" → "DMSDeploymentTimeout" (a condition reason is CamelCase)."""
    return "".join(w if w.isupper() else w.capitalize() for w in phase.split()) + "Timeout"


# ---- what is stored on the DPU ------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """The machine's memory, in the DPU's `provisioning.dpu.nvidia.com/provisioning` annotation."""

    phase: str
    entered: datetime
    """When the DPU entered `phase` (for the duration histogram)."""
    since: datetime
    """When the current attempt of `phase` started (its timeout counts from here; in the future while the
    attempt waits out its back-off)."""
    attempt: int = 1
    install: str = ""
    """The current install attempt's id, "<dpu uid>/<n>"; kept after OS Installing (what the host agent's
    host_rebooted refers to, in Rebooting)."""
    installs: int = 0
    reboot: str = ""
    reboots: int = 0
    failed_phase: str = ""
    """Phase Error: the phase whose attempts were spent."""
    reason: str = ""
    cause: str = ""
    """The last failure of this phase (shown during the back-off and in Error)."""
    retry: str = ""
    """The value of the retry annotation already acted on."""

    def to_json(self) -> str:
        body = {"phase": self.phase, "entered": _stamp(self.entered), "since": _stamp(self.since),
                "attempt": self.attempt, "install": self.install, "installs": self.installs,
                "reboot": self.reboot, "reboots": self.reboots, "failedPhase": self.failed_phase,
                "reason": self.reason, "cause": self.cause, "retry": self.retry}
        return json.dumps({k: v for k, v in body.items() if v not in ("", 0)}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Record:
        """Raises ValueError (or KeyError/TypeError) for text that is not a record."""
        body = json.loads(text)
        if not isinstance(body, dict) or body.get("phase") not in (*ORDER, ERROR):
            raise ValueError("not a provisioning record")
        return cls(phase=body["phase"], entered=_parse_time(body["entered"]), since=_parse_time(body["since"]),
                   attempt=int(body.get("attempt", 1)), install=str(body.get("install", "")),
                   installs=int(body.get("installs", 0)), reboot=str(body.get("reboot", "")),
                   reboots=int(body.get("reboots", 0)), failed_phase=str(body.get("failedPhase", "")),
                   reason=str(body.get("reason", "")), cause=str(body.get("cause", "")),
                   retry=str(body.get("retry", "")))


def record_of(dpu: Obj, now: datetime) -> Record:
    """The stored record; without a usable one (a new DPU, one written by upstream's controller, or a
    record copied from another object), the status phase restarts its attempt now."""
    meta = dpu["metadata"]
    text = (meta.get("annotations") or {}).get(RECORD_ANNOTATION)
    if text:
        try:
            record = Record.from_json(text)
        except (ValueError, KeyError, TypeError):
            record = None
        if record is not None and (not record.install or record.install.startswith(f"{meta.get('uid')}/")):
            return record
    phase = (dpu.get("status") or {}).get("phase") or INITIALIZING
    if phase not in (*ORDER, ERROR):
        phase = INITIALIZING
    if phase == ERROR:
        return Record(ERROR, now, now, failed_phase=INITIALIZING, reason="Unknown",
                      cause="the DPU was in phase Error before this controller recorded why")
    return Record(phase, now, now)


# ---- what the reconciler observed ---------------------------------------------------------------------


@dataclass(frozen=True)
class AgentView:
    """The host agent of the DPU's node, as the NodeState stream shows it."""

    connected: bool = False
    status: ppb.DPUProvisioningStatus | None = None
    """Its last DPUProvisioningStatus for this DPU's resource (None: nothing reported)."""
    refused: str = ""
    """The message of a FAILED or REJECTED verdict on the resource (what the agent cannot do: no rshim for
    the PCI address, a resource it refuses), empty otherwise."""


@dataclass(frozen=True)
class ClusterView:
    """The DPU's Node in its DPU cluster."""

    name: str = ""
    """"namespace/name" of the DPUCluster."""
    connected: bool = False
    """The controller has a client for that cluster and its Node cache has synced."""
    node: Obj | None = None


@dataclass(frozen=True)
class EffectResult:
    """The outcome of the reconciler's last node-effect call for this DPU (node_effect.EffectState's fields)."""

    action: str  # "apply" | "undo"
    done: bool
    message: str = ""
    failed: bool = False


@dataclass(frozen=True)
class Observed:
    dpu: Obj
    now: datetime
    settings: ProvisioningSettings = field(default_factory=ProvisioningSettings)
    host_node: Obj | None = None
    bfb: Obj | None = None
    flavor: Obj | None = None
    allocated: tuple[str, str] | None = None
    """The allocator's DPUCluster (namespace, name) for a DPU without spec.cluster.name ..."""
    allocation_error: str = ""
    """... or why there is none."""
    agent: AgentView = field(default_factory=AgentView)
    cluster: ClusterView = field(default_factory=ClusterView)
    effect: EffectResult | None = None
    bf_cfg: bytes | None = None
    """The bf.cfg rendered for the record's install id (None: not rendered yet)."""
    bf_cfg_error: str = ""
    high_speed_mtu: int = 1500
    installing_beside: tuple[str, ...] = ()
    """Other DPUs of the same host in OS Installing: a host reboot now would cut their installs."""


# ---- what to do ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AddFinalizer:
    pass


@dataclass(frozen=True)
class RemoveFinalizer:
    pass


@dataclass(frozen=True)
class ApplyNodeEffect:
    pass


@dataclass(frozen=True)
class UndoNodeEffect:
    pass


@dataclass(frozen=True)
class SetCluster:
    """Write the allocator's choice into spec.cluster (name and namespace are set once)."""

    namespace: str
    name: str


@dataclass(frozen=True)
class RenderBfCfg:
    """Render bf.cfg (with a fresh join command) for this install id; the next pass gets it in `bf_cfg`."""

    install_id: str


@dataclass(frozen=True)
class MergeDPUNodeLabels:
    labels: Mapping[str, str]


@dataclass(frozen=True)
class DeleteDPUNode:
    pass


Effect = AddFinalizer | RemoveFinalizer | ApplyNodeEffect | UndoNodeEffect | SetCluster | RenderBfCfg \
    | MergeDPUNodeLabels | DeleteDPUNode


@dataclass(frozen=True)
class Event:
    type: str  # "Normal" | "Warning"
    reason: str
    note: str


@dataclass(frozen=True)
class Step:
    phase: str
    conditions: list[dict[str, Any]]
    """The status conditions (JSON form), every type of CONDITION_TYPES."""
    record: Record | None
    """The record to store (None: leave the annotation alone)."""
    desired: ppb.DPUProvisioning | None
    """What the host agent should hold for this DPU (None: nothing, release it)."""
    effects: tuple[Effect, ...] = ()
    events: tuple[Event, ...] = ()
    requeue: float | None = None
    left: tuple[tuple[str, float], ...] = ()
    """Phases left in this step, with the seconds spent in each (dpf_controller_dpu_phase_seconds)."""
    failures: tuple[tuple[str, str], ...] = ()
    """(phase, reason) of each attempt that failed in this step."""
    bfb_version: str | None = None

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {"phase": self.phase, "conditions": self.conditions}
        if self.bfb_version:
            body["bfbVersion"] = self.bfb_version
        return body


# ---- the machine --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Wait:
    """Still in the phase: the phase's condition is False with this reason and message."""

    reason: str
    message: str
    effects: tuple[Effect, ...] = ()


@dataclass(frozen=True)
class _Done:
    """The phase's work is done; `note` says so in the phase-change Event and the condition."""

    note: str = ""
    effects: tuple[Effect, ...] = ()
    record: Record | None = None  # changes to carry into the next phase


@dataclass(frozen=True)
class _Fail:
    """This attempt failed; another follows after a back-off unless the attempts are spent."""

    reason: str
    cause: str


@dataclass
class _Pass:
    """What one call of `step` accumulates."""

    obs: Observed
    record: Record
    effects: list[Effect] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    left: list[tuple[str, float]] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)


def step(obs: Observed) -> Step:
    """The next status, desired host state, effects, Events and requeue delay for one DPU."""
    dpu = obs.dpu
    meta = dpu["metadata"]
    finalizers = meta.get("finalizers") or ()
    current = record_of(dpu, obs.now)
    if meta.get("deletionTimestamp"):
        return _deleting(obs, current, FINALIZER in finalizers)
    p = _Pass(obs, current)
    if FINALIZER not in finalizers:
        p.effects.append(AddFinalizer())
    _take_retry_request(p)
    if p.record.phase == ERROR:
        return _error(p, stored=current)
    wait, requeue = _advance(p)
    if p.record.phase == ERROR:
        return _error(p, stored=current)
    return _finish(p, current, wait, requeue)


def _take_retry_request(p: _Pass) -> None:
    """The retry annotation: a new value starts phase Error's failed phase again (attempt 1); any other
    phase just notes the value, so an old annotation never restarts a later failure."""
    value = ((p.obs.dpu["metadata"].get("annotations") or {}).get(RETRY_ANNOTATION) or "").strip()
    if not value or value == p.record.retry:
        return
    record = p.record
    if record.phase == ERROR:
        phase = record.failed_phase if record.failed_phase in ORDER else INITIALIZING
        p.record = _enter(replace(record, retry=value, failed_phase="", reason="", cause=""), phase, p.obs)
        p.events.append(Event("Normal", "RetryRequested",
                              f"{RETRY_ANNOTATION}={value}: starting phase {phase} again (attempt 1 of "
                              f"{p.obs.settings.max_attempts})"))
    else:
        p.record = replace(record, retry=value)


def _enter(record: Record, phase: str, obs: Observed) -> Record:
    """A fresh first attempt of `phase`. Entering OS Installing makes a new install id."""
    out = replace(record, phase=phase, entered=obs.now, since=obs.now, attempt=1, reason="", cause="")
    if phase == OS_INSTALLING:
        out = _new_install(out, obs)
    if phase == REBOOTING:
        out = replace(out, reboot="")
    return out


def _new_install(record: Record, obs: Observed) -> Record:
    n = record.installs + 1
    return replace(record, install=f"{obs.dpu['metadata'].get('uid', '')}/{n}", installs=n)


def _advance(p: _Pass) -> tuple[_Wait | None, float | None]:
    """Run phases from the record's until one waits (or Ready holds, or the attempts run out)."""
    obs = p.obs
    for _ in range(len(ORDER) + 1):
        record = p.record
        phase = record.phase
        if phase == READY:
            return None, None
        if record.since > obs.now:  # backing off after a failed attempt
            return _Wait(record.reason, _retrying(record, obs)), _seconds(record.since - obs.now)
        outcome = _HANDLERS[phase](p)
        if isinstance(outcome, _Wait):
            limit = _timeout(phase, obs)
            elapsed = _seconds(obs.now - record.since)
            if elapsed < limit:
                p.effects.extend(outcome.effects)
                return outcome, max(0.0, limit - elapsed)
            outcome = _Fail(timeout_reason(phase),
                            f"{phase} did not finish within {_duration(limit)}: {outcome.message}")
        if isinstance(outcome, _Fail):
            _failed(p, outcome)
            if p.record.phase == ERROR:
                return None, None
            return _Wait(outcome.reason, _retrying(p.record, obs)), _seconds(p.record.since - obs.now)
        p.effects.extend(outcome.effects)
        base = outcome.record or record
        following = ORDER[ORDER.index(phase) + 1]
        p.left.append((phase, max(0.0, _seconds(obs.now - record.entered))))
        p.record = _enter(base, following, obs)
        note = f"{phase} → {following}" + (f": {outcome.note}" if outcome.note else "")
        p.events.append(Event("Normal", "PhaseChanged", note))
    return None, None


def _failed(p: _Pass, failure: _Fail) -> None:
    obs, record = p.obs, p.record
    s = obs.settings
    p.failures.append((record.phase, failure.reason))
    if record.attempt >= s.max_attempts:
        p.left.append((record.phase, max(0.0, _seconds(obs.now - record.entered))))
        p.record = replace(record, phase=ERROR, entered=obs.now, since=obs.now, failed_phase=record.phase,
                           reason=failure.reason, cause=failure.cause)
        p.events.append(Event("Warning", "ProvisioningFailed",
                              f"{record.phase} failed {record.attempt} times ({failure.reason}): {failure.cause}; "
                              f"set the annotation {RETRY_ANNOTATION} to a new value to try again"))
        return
    delay = min(s.retry_max, s.retry_base * 2 ** (record.attempt - 1))
    start = obs.now + timedelta(seconds=delay)
    retried = replace(record, attempt=record.attempt + 1, since=start, reason=failure.reason, cause=failure.cause)
    if record.phase == OS_INSTALLING:
        retried = _new_install(retried, obs)
    if record.phase == REBOOTING:
        retried = replace(retried, reboot="")
    p.record = retried
    p.events.append(Event("Warning", "Retrying",
                          f"{record.phase} attempt {record.attempt} of {s.max_attempts} failed ({failure.reason}): "
                          f"{failure.cause}; attempt {record.attempt + 1} in {_duration(delay)}"))


def _retrying(record: Record, obs: Observed) -> str:
    wait = max(0.0, _seconds(record.since - obs.now))
    return (f"{record.cause}; attempt {record.attempt - 1} of {obs.settings.max_attempts} failed, "
            f"attempt {record.attempt} in {_duration(wait)}")


def _timeout(phase: str, obs: Observed) -> float:
    s = obs.settings
    if phase == REBOOTING and not _automatic_reboot(obs.dpu):
        return s.manual_reboot_timeout
    if phase == REBOOTING and obs.installing_beside:  # their installs' time, then the reboot's
        return s.install_timeout + INSTALL_GRACE + s.reboot_timeout
    return {INITIALIZING: s.initializing_timeout, NODE_EFFECT: s.node_effect_timeout, PENDING: s.pending_timeout,
            DMS_DEPLOYMENT: s.dms_timeout, OS_INSTALLING: s.install_timeout + INSTALL_GRACE,
            REBOOTING: s.reboot_timeout, HOST_NETWORK: s.host_network_timeout,
            CLUSTER_CONFIG: s.cluster_config_timeout}[phase]


# ---- phases -------------------------------------------------------------------------------------------


def _initializing(p: _Pass) -> _Wait | _Done:
    obs = p.obs
    node_name = _spec(obs.dpu).get("nodeName", "")
    if obs.host_node is None:
        return _Wait("HostNodeNotFound", f"host Node {node_name} does not exist")
    if OOB_BRIDGE_LABEL not in (obs.host_node["metadata"].get("labels") or {}):
        return _Wait("DPUOOBBridgeNotConfigured",
                     f"host Node {node_name} has no label {OOB_BRIDGE_LABEL}: the host agent reports it once the "
                     f"bridge {obs.settings.oob_bridge} exists and holds an IPv4 address")
    cluster = _spec(obs.dpu).get("cluster") or {}
    if cluster.get("name"):
        return _Done(f"DPU cluster {cluster.get('namespace') or _namespace(obs.dpu)}/{cluster['name']}")
    if obs.allocated is not None:
        namespace, name = obs.allocated
        return _Wait("DPUClusterNotReady", f"assigning DPU cluster {namespace}/{name}",
                     (SetCluster(namespace, name),))
    return _Wait("DPUClusterNotReady", obs.allocation_error or "no DPU cluster is Ready with room for this DPU")


def _node_effect(p: _Pass) -> _Wait | _Done | _Fail:
    effect = p.obs.effect
    if effect is not None and effect.action == "apply":
        if effect.done:
            return _Done(effect.message)
        if effect.failed:
            return _Fail(NODE_EFFECT_ERROR, effect.message or "the node effect failed")
    message = effect.message if effect is not None and effect.action == "apply" and effect.message else \
        f"applying the node effect ({_effect_mode(p.obs.dpu)}) to host Node {_spec(p.obs.dpu).get('nodeName', '')}"
    return _Wait("NodeEffectInProgress", message, (ApplyNodeEffect(),))


def _pending(p: _Pass) -> _Wait | _Done:
    obs = p.obs
    name = _spec(obs.dpu).get("bfb", "")
    if obs.bfb is None:
        return _Wait("GetBFBFailed", f"BFB {_namespace(obs.dpu)}/{name} does not exist")
    phase = (obs.bfb.get("status") or {}).get("phase") or "Initializing"
    if phase != "Ready":
        return _Wait("BFBNotReady", f"BFB {_namespace(obs.dpu)}/{name} is {phase}, waiting for Ready")
    return _Done(f"BFB {name} is Ready")


def _dms_deployment(p: _Pass) -> _Wait | _Done:
    obs = p.obs
    blocked = _agent_blocked(obs)
    if blocked is not None:
        return blocked
    status = obs.agent.status
    assert status is not None
    if not status.bfb_ready:
        file_name = _bfb_source(obs).file_name
        detail = f": {status.bfb_error}" if status.bfb_error else ""
        return _Wait("BFBNotReadyOnHost", f"the host agent is getting BFB file {file_name}{detail}")
    return _Done(f"the host agent on {_spec(obs.dpu).get('nodeName', '')} holds the rshim and the BFB file")


def _agent_blocked(obs: Observed) -> _Wait | None:
    node = _spec(obs.dpu).get("nodeName", "")
    if not obs.agent.connected:
        return _Wait("HostAgentNotConnected", f"waiting for the host agent of node {node} to connect")
    status = obs.agent.status
    if status is None and obs.agent.refused:
        return _Wait("HostAgentFailed", f"the host agent on {node}: {obs.agent.refused}")
    if status is None:
        return _Wait("HostAgentNotConnected", f"waiting for the host agent of node {node} to report on this DPU")
    if status.rshim_holder:
        return _Wait("ExistingRshimInstallDetected",
                     f"the rshim of DPU {_pci(obs.dpu)} on {node} is held by {status.rshim_holder}; stop it "
                     f"(e.g. systemctl disable --now rshim) so that the host agent can take it")
    if obs.agent.refused:
        return _Wait("HostAgentFailed", f"the host agent on {node}: {obs.agent.refused}")
    return None


def _os_installing(p: _Pass) -> _Wait | _Done | _Fail:
    obs, record = p.obs, p.record
    install = _install_status(obs, record)
    if install is not None and install.state == ppb.INSTALL_STATE_DONE:
        return _Done(f"install {record.install} done, DPU booted: "
                     + (install.log[-1] if install.log else "DPU is ready"))
    if install is not None and install.state == ppb.INSTALL_STATE_FAILED:
        return _Fail(INSTALLATION_FAILED, f"install {record.install}: {install.error or 'failed'}"
                     + _log_tail(install))
    if obs.bf_cfg is None:
        if obs.bf_cfg_error:
            return _Fail(BFCFG_FAILED, obs.bf_cfg_error)
        return _Wait("InstallationInProgress", f"rendering bf.cfg for install {record.install}",
                     (RenderBfCfg(record.install),))
    blocked = _agent_blocked(obs)
    if blocked is not None:
        return blocked
    return _Wait("InstallationInProgress", _install_progress(record, install))


def _rebooting(p: _Pass) -> _Wait | _Done | _Fail:
    obs, record = p.obs, p.record
    node = _spec(obs.dpu).get("nodeName", "")
    install = _install_status(obs, record)
    if install is not None and install.host_rebooted:
        return _Done(f"host {node} booted again")
    kind, command = reboot_command(obs.dpu, obs.host_node)
    if command == "skip":
        return _Done(f"{kind} command is skip: host {node} not rebooted (firmware changes apply at its next boot)")
    if not _automatic_reboot(obs.dpu):
        return _Wait("WaitingForManualPowerCycleOrReboot",
                     f"automaticNodeReboot is off: {kind.replace('-', ' ')} host {node}; the host agent reports "
                     f"when it booted again")
    if not record.reboot and obs.installing_beside:
        # Better than upstream: one DPU's reboot would reset the others mid-install (they would boot their old
        # image and install again); the host is rebooted once they are through.
        return _Wait("WaitingForOtherDPUsToInstall",
                     f"the {kind} ({command}) of host {node} waits until DPU {', '.join(obs.installing_beside)} on "
                     f"the same host finished installing")
    if not record.reboot:
        n = record.reboots + 1
        p.record = record = replace(record, reboot=f"{obs.dpu['metadata'].get('uid', '')}/r{n}", reboots=n)
    reported = obs.agent.status.reboot if obs.agent.status is not None else None
    if reported is not None and reported.id == record.reboot and reported.error:
        return _Fail(REBOOT_FAILED, f"{kind} ({command}) of host {node}: {reported.error}")
    if reported is not None and reported.id == record.reboot:
        return _Wait("RebootInProgress", f"{kind} ({command}) of host {node} issued; waiting for it to boot again")
    blocked = _agent_blocked(obs)
    if blocked is not None:
        return blocked
    return _Wait("RebootInProgress", f"asking the host agent for a {kind} ({command}) of host {node}")


def _host_network(p: _Pass) -> _Wait | _Done:
    obs = p.obs
    blocked = _agent_blocked(obs)
    if blocked is not None:
        return blocked
    assert obs.agent.status is not None
    network = obs.agent.status.host_network
    wanted = host_network_of(obs)
    if network.ready:
        return _Done(f"{network.num_vfs} VFs, {network.vf0 or 'VF0'} in {wanted.bridge} with MTU {wanted.vf_mtu}")
    return _Wait("HostNetworkConfiguring", network.message or
                 f"waiting for the host agent to create {wanted.num_vfs} VFs and put VF0 into {wanted.bridge}")


def _cluster_config(p: _Pass) -> _Wait | _Done:
    obs = p.obs
    problem = _dpu_node_problem(obs)
    if problem is not None:
        return problem
    missing = _missing_labels(obs)
    if missing:
        return _Wait("DPUNodeNotReady", f"labelling Node {_name(obs.dpu)} in DPU cluster {obs.cluster.name}",
                     (MergeDPUNodeLabels(missing),))
    return _Done(f"Node {_name(obs.dpu)} is Ready in DPU cluster {obs.cluster.name}")


_HANDLERS = {INITIALIZING: _initializing, NODE_EFFECT: _node_effect, PENDING: _pending,
             DMS_DEPLOYMENT: _dms_deployment, OS_INSTALLING: _os_installing, REBOOTING: _rebooting,
             HOST_NETWORK: _host_network, CLUSTER_CONFIG: _cluster_config}


def _dpu_node_problem(obs: Observed) -> _Wait | None:
    name = _name(obs.dpu)
    if not obs.cluster.connected:
        return _Wait("DPUClusterClientGetError",
                     f"DPU cluster {obs.cluster.name or '(none)'} is not connected (does it exist, with a "
                     f"kubeconfig Secret that works?)")
    if obs.cluster.node is None:
        return _Wait("DPUNodeNotReady", f"waiting for Node {name} to join DPU cluster {obs.cluster.name}")
    ready = next((c for c in (obs.cluster.node.get("status") or {}).get("conditions") or ()
                  if c.get("type") == "Ready"), None)
    if ready is None or ready.get("status") != "True":
        detail = f" ({ready.get('reason', '')}: {ready.get('message', '')})" if ready else ""
        return _Wait("DPUNodeNotReady", f"Node {name} in DPU cluster {obs.cluster.name} is not Ready{detail}")
    return None


def dpu_node_labels(obs: Observed) -> dict[str, str]:
    """What the DPU's Node carries: spec.cluster.nodeLabels, the host's name and the BFB version."""
    labels = dict((_spec(obs.dpu).get("cluster") or {}).get("nodeLabels") or {})
    labels[HOST_LABEL] = _spec(obs.dpu).get("nodeName", "")
    version = bfb_version(obs.bfb)
    if version:
        labels[BFB_VERSION_LABEL] = version
    return labels


def _missing_labels(obs: Observed) -> dict[str, str]:
    have = (obs.cluster.node or {}).get("metadata", {}).get("labels") or {}
    return {k: v for k, v in dpu_node_labels(obs).items() if have.get(k) != v}


# ---- Ready, Error, Deleting ---------------------------------------------------------------------------


def _undo_effect(obs: Observed) -> tuple[Effect, ...]:
    effect = obs.effect
    if effect is not None and effect.action == "undo" and effect.done:
        return ()
    return (UndoNodeEffect(),)


def _ready_marks(p: _Pass) -> tuple[str, str, str]:
    obs = p.obs
    p.effects.extend(_undo_effect(obs))
    problem = _dpu_node_problem(obs)
    if problem is not None:
        p.effects.extend(problem.effects)
        return "False", problem.reason, problem.message
    missing = _missing_labels(obs)
    if missing:
        p.effects.append(MergeDPUNodeLabels(missing))
    return "True", "DPUNodeReady", ""


def _finish(p: _Pass, stored: Record, wait: _Wait | None, requeue: float | None) -> Step:
    obs, record = p.obs, p.record
    phase = record.phase
    conditions = _conditions_before(obs, phase)
    if phase == READY:
        status, reason, message = _ready_marks(p)
        conditions = _set(conditions, obs, READY_CONDITION, status, reason, message)
    else:
        assert wait is not None
        conditions = _set(conditions, obs, CONDITION_OF[phase], "False", wait.reason, wait.message)
        if CONDITION_OF[phase] != READY_CONDITION:
            conditions = _set(conditions, obs, READY_CONDITION, "False", wait.reason, f"{phase}: {wait.message}")
    installed = ORDER.index(phase) > ORDER.index(OS_INSTALLING)
    return Step(phase=phase, conditions=[c.to_json() for c in conditions],
                record=record if record != stored or _missing_record(obs) else None,
                desired=desired_provisioning(obs, record), effects=tuple(p.effects), events=tuple(p.events),
                requeue=requeue, left=tuple(p.left), failures=tuple(p.failures),
                bfb_version=bfb_version(obs.bfb) if installed else None)


def _error(p: _Pass, stored: Record) -> Step:
    obs, record = p.obs, p.record
    p.effects.extend(_undo_effect(obs))
    failed = record.failed_phase if record.failed_phase in ORDER else INITIALIZING
    message = (f"{failed} failed after {record.attempt} attempts: {record.cause}; set the annotation "
               f"{RETRY_ANNOTATION} to a new value to try again")
    conditions = _conditions_before(obs, failed)
    conditions = _set(conditions, obs, CONDITION_OF[failed], "False", record.reason or "Error", message)
    conditions = _set(conditions, obs, READY_CONDITION, "False", record.reason or "Error", message)
    return Step(phase=ERROR, conditions=[c.to_json() for c in conditions],
                record=record if record != stored or _missing_record(obs) else None,
                desired=desired_provisioning(obs, record), effects=tuple(p.effects), events=tuple(p.events),
                left=tuple(p.left), failures=tuple(p.failures))


def _deleting(obs: Observed, record: Record, ours: bool) -> Step:
    """Release everything, then the finalizer: the host agent lets the DPU go when its resource leaves the
    snapshot (a flash in progress is cancelled), the node effect is undone, the DPU's Node is deleted from
    the DPU cluster (a cluster the controller cannot reach is skipped: it may be gone for good)."""
    conditions = [Condition.model_validate(c) for c in _conditions_json(obs.dpu)]
    if not ours:
        return Step(phase=(obs.dpu.get("status") or {}).get("phase") or INITIALIZING,
                    conditions=[c.to_json() for c in conditions], record=None, desired=None)
    effects: list[Effect] = list(_undo_effect(obs))
    if obs.cluster.connected and obs.cluster.node is not None:
        effects.append(DeleteDPUNode())
    events: list[Event] = []
    left: tuple[tuple[str, float], ...] = ()
    if (obs.dpu.get("status") or {}).get("phase") != DELETING:
        events.append(Event("Normal", "PhaseChanged", f"{record.phase} → {DELETING}: the DPU is being deleted"))
        if record.phase in ORDER:
            left = ((record.phase, max(0.0, _seconds(obs.now - record.entered))),)
    if not effects:
        effects.append(RemoveFinalizer())
    waiting = [type(e).__name__ for e in effects if not isinstance(e, RemoveFinalizer)]
    message = "releasing the DPU" + (f": {', '.join(waiting)}" if waiting else "")
    if obs.effect is not None and obs.effect.action == "undo" and not obs.effect.done and obs.effect.message:
        message += f" ({obs.effect.message})"
    conditions = _set(conditions, obs, READY_CONDITION, "False", "AwaitingDeletion", message)
    return Step(phase=DELETING, conditions=[c.to_json() for c in conditions], record=None, desired=None,
                effects=tuple(effects), events=tuple(events), left=left)


def _missing_record(obs: Observed) -> bool:
    return RECORD_ANNOTATION not in (obs.dpu["metadata"].get("annotations") or {})


# ---- conditions ---------------------------------------------------------------------------------------


def _conditions_json(dpu: Obj) -> list[dict[str, Any]]:
    out = []
    for raw in (dpu.get("status") or {}).get("conditions") or ():
        if raw.get("type") in CONDITION_TYPES:
            try:
                Condition.model_validate(raw)
            except ValueError:
                continue
            out.append(raw)
    return out


def _conditions_before(obs: Observed, phase: str) -> list[Condition]:
    """Our condition types: those of the phases before `phase` True, the others as they were (seeded
    Unknown)."""
    generation = _generation(obs.dpu)
    conditions: list[Condition] = [Condition.model_validate(c) for c in _conditions_json(obs.dpu)]
    conditions = cond.ensure(conditions, CONDITION_TYPES, now=obs.now, generation=generation)
    for earlier in ORDER[:ORDER.index(phase)]:
        type_ = CONDITION_OF[earlier]
        if type_ != READY_CONDITION:
            conditions = _set(conditions, obs, type_, "True", type_, "")
    order = {t: i for i, t in enumerate(CONDITION_TYPES)}
    return sorted(conditions, key=lambda c: order[c.type])


def _set(conditions: Sequence[Condition], obs: Observed, type_: str, status: str, reason: str,
         message: str) -> list[Condition]:
    return cond.set_condition(conditions, type_, status, reason, message, now=obs.now,
                              generation=_generation(obs.dpu))


# ---- the host agent's resource ------------------------------------------------------------------------


def resource_name(dpu: Obj) -> str:
    """The DPU's DPUProvisioning resource name in its host's snapshot."""
    return f"{_namespace(dpu)}/{_name(dpu)}"


def desired_provisioning(obs: Observed, record: Record) -> ppb.DPUProvisioning | None:
    """Published from DMS Deployment on: the BFB always; the install in OS Installing (not while backing off)
    and still in Rebooting, where its status carries `host_rebooted` (the agent flashes an id once and reports
    a DONE id as DONE without flashing); the reboot only in an automatic Rebooting; the host network from Host
    Network Configuration on. Phase Error keeps what the failed phase had reached past the install, and
    releases the DPU before."""
    phase = record.phase
    if phase == ERROR:
        phase = record.failed_phase if record.failed_phase in ORDER else INITIALIZING
        if ORDER.index(phase) < ORDER.index(HOST_NETWORK):
            return None
    elif ORDER.index(phase) < ORDER.index(DMS_DEPLOYMENT):
        return None
    desired = ppb.DPUProvisioning(dpu_name=_name(obs.dpu), pci_address=_pci(obs.dpu), bfb=_bfb_source(obs))
    active = record.phase == phase and record.since <= obs.now
    if obs.bf_cfg is not None and record.install and (phase == REBOOTING or (phase == OS_INSTALLING and active)):
        desired.install.CopyFrom(ppb.Install(id=record.install, bf_cfg=obs.bf_cfg,
                                             timeout_seconds=int(obs.settings.install_timeout)))
    if phase == REBOOTING and active and record.reboot:
        _kind, command = reboot_command(obs.dpu, obs.host_node)
        if command in REBOOT_METHODS and _automatic_reboot(obs.dpu):
            desired.reboot.CopyFrom(ppb.Reboot(id=record.reboot, method=REBOOT_METHODS[command]))
    if ORDER.index(phase) >= ORDER.index(HOST_NETWORK):
        desired.host_network.CopyFrom(host_network_of(obs))
    return desired


def host_network_of(obs: Observed) -> ppb.HostNetwork:
    return ppb.HostNetwork(num_vfs=num_vfs(obs.flavor, obs.settings.default_num_vfs),
                           vf_mtu=obs.high_speed_mtu or 1500, bridge=obs.settings.oob_bridge)


def num_vfs(flavor: Obj | None, default: int) -> int:
    """NUM_OF_VFS= from the flavor's nvconfig parameters (or its bfcfgParameters), else `default`."""
    spec = (flavor or {}).get("spec") or {}
    lines = [p for n in spec.get("nvconfig") or () for p in n.get("parameters") or ()]
    lines += list(spec.get("bfcfgParameters") or ())
    for line in lines:
        match = re.fullmatch(r"\s*NUM_OF_VFS\s*=\s*(\d+)\s*", str(line))
        if match:
            return int(match.group(1))
    return default


def _bfb_source(obs: Observed) -> ppb.BFBSource:
    bfb = obs.bfb or {}
    spec = bfb.get("spec") or {}
    meta = bfb.get("metadata") or {}
    file_name = spec.get("fileName") or (f"{meta.get('namespace', '')}-{meta.get('name', '')}.bfb" if meta else "")
    return ppb.BFBSource(file_name=file_name, version=bfb_version(obs.bfb))


def bfb_version(bfb: Obj | None) -> str:
    """The BFB URL's basename without its extension (upstream's DOCA-BFB-version label)."""
    url = ((bfb or {}).get("spec") or {}).get("url") or ""
    base = posixpath.basename(urlparse(url).path)
    return base.rsplit(".", 1)[0] if "." in base else base


def _install_status(obs: Observed, record: Record) -> ppb.InstallStatus | None:
    status = obs.agent.status
    if status is None or not record.install or status.install.id != record.install:
        return None
    return status.install


def _install_progress(record: Record, install: ppb.InstallStatus | None) -> str:
    if install is None or install.state in (ppb.INSTALL_STATE_UNSPECIFIED, ppb.INSTALL_STATE_WAITING):
        return f"install {record.install}: waiting for the host agent to start flashing"
    if install.state == ppb.INSTALL_STATE_FLASHING:
        text = f"flashing {_size(install.bytes_sent)} of {_size(install.bytes_total)}"
        if install.rate > 0:
            text += f" at {_size(install.rate)}/s"
        if install.eta_seconds > 0:
            text += f", ETA {_duration(install.eta_seconds)}"
    else:
        text = f"image written ({_size(install.bytes_total)}), waiting for the DPU to boot"
    return text + _log_tail(install)


def _log_tail(install: ppb.InstallStatus) -> str:
    return f"; boot log: {install.log[-1].strip()}" if install.log else ""


# ---- reboot policy (upstream §5.3) ----------------------------------------------------------------------


def _automatic_reboot(dpu: Obj) -> bool:
    spec = _spec(dpu)
    drain = (spec.get("nodeEffect") or {}).get("drain") or {}
    return bool(spec.get("automaticNodeReboot", True)) or bool(drain.get("automaticNodeReboot", False))


def reboot_command(dpu: Obj, host_node: Obj | None) -> tuple[str, str]:
    """("power-cycle" | "warm-reboot", "cycle" | "reset" | "skip"): the DPU annotation
    host-power-cycle-required picks the kind, the host Node's powercycle-command / reboot-command annotation
    the command (defaults cycle and reset, as upstream)."""
    wanted = (dpu["metadata"].get("annotations") or {}).get(POWER_CYCLE_ANNOTATION, "")
    node_annotations = ((host_node or {}).get("metadata") or {}).get("annotations") or {}
    if wanted.strip().lower() == "true":
        command = node_annotations.get(POWERCYCLE_COMMAND_ANNOTATION) or "cycle"
        kind = "power-cycle"
    else:
        command = node_annotations.get(REBOOT_COMMAND_ANNOTATION) or "reset"
        kind = "warm-reboot"
    command = command.strip().lower()
    return kind, command if command in ("cycle", "reset", "skip") else ("cycle" if kind == "power-cycle" else "reset")


# ---- small helpers ------------------------------------------------------------------------------------


def _spec(dpu: Obj) -> Mapping[str, Any]:
    return dpu.get("spec") or {}


def _name(dpu: Obj) -> str:
    return dpu["metadata"]["name"]


def _namespace(dpu: Obj) -> str:
    return dpu["metadata"].get("namespace", "")


def _generation(dpu: Obj) -> int:
    return int(dpu["metadata"].get("generation") or 0)


def _pci(dpu: Obj) -> str:
    return _spec(dpu).get("pciAddress") or (dpu["metadata"].get("labels") or {}).get(PCI_ADDRESS_LABEL, "")


def _effect_mode(dpu: Obj) -> str:
    effect = _spec(dpu).get("nodeEffect") or {}
    for mode in ("taint", "noEffect", "customLabel", "drain"):
        if effect.get(mode) not in (None, False):
            return mode
    return "drain"


def _seconds(delta: timedelta) -> float:
    return delta.total_seconds()


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f} s" if seconds % 1 else f"{seconds:.0f} s"
    if seconds < 120:
        return f"{math.ceil(seconds)} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.0f} h"


def _size(value: float) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= scale:
            amount = value / scale
            return f"{amount:.1f} {unit}" if amount < 10 else f"{amount:.0f} {unit}"
    return f"{value:.0f} B"


def _stamp(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
