"""The DPU phase machine (`controller/provisioning/dpu_phases.py`), pure: every phase, every reason, timeouts
and retries with back-off, Error and the retry annotation, deletion in every phase, resuming from what is
stored on the DPU. A test "stores" a step as the reconciler would (record annotation, status) and steps again.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dpf.controller.provisioning import dpu_phases as ph
from dpf.controller.settings import ProvisioningSettings
from dpf.proto.v1 import provisioning_pb2 as ppb

T0 = datetime(2026, 12, 4, 20, 0, 0, tzinfo=UTC)
UID = "6f1c-uid"
NODE = "worker1"
NAME = "worker1-0000-08-00"
SETTINGS = ProvisioningSettings()
BFB_URL = "https://example.com/bfbs/bf-bundle-2.9.1-30_24.11_ubuntu-22.04_prod.bfb"
BFB_VERSION = "bf-bundle-2.9.1-30_24.11_ubuntu-22.04_prod"
MiB, GiB = 1 << 20, 1 << 30


def make_dpu(*, finalizer: bool = True, annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    body = {"nodeName": NODE, "bfb": "bf-bundle", "pciAddress": "0000-08-00", "nodeEffect": {"noEffect": True},
            "cluster": {"name": "dpu", "namespace": "ns", "nodeLabels": {"team": "net"}}, "dpuFlavor": "hbn"}
    body.update(spec)
    return {"apiVersion": "provisioning.dpu.nvidia.com/v1alpha1", "kind": "DPU",
            "metadata": {"name": NAME, "namespace": "ns", "uid": UID, "generation": 1, "resourceVersion": "1",
                         "finalizers": [ph.FINALIZER] if finalizer else [], "annotations": annotations or {}},
            "spec": body}


def host_node(labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": NODE, "labels": {ph.OOB_BRIDGE_LABEL: "true"} if labels is None else labels,
                         "annotations": annotations or {}}}


def bfb(phase: str = "Ready") -> dict[str, Any]:
    return {"metadata": {"name": "bf-bundle", "namespace": "ns"},
            "spec": {"url": BFB_URL, "fileName": "ns-bf-bundle.bfb"}, "status": {"phase": phase}}


FLAVOR = {"metadata": {"name": "hbn", "namespace": "ns"},
          "spec": {"nvconfig": [{"device": "*", "parameters": ["SRIOV_EN=1", "NUM_OF_VFS=46"]}]}}


def dpu_node(ready: str = "True", labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": NAME, "labels": labels or {}},
            "status": {"conditions": [{"type": "Ready", "status": ready, "reason": "KubeletReady",
                                       "message": "kubelet is posting ready status"}]}}


def agent(**fields: Any) -> ph.AgentView:
    return ph.AgentView(connected=True, status=ppb.DPUProvisioningStatus(**{"bfb_ready": True, **fields}))


def observed(dpu: dict[str, Any], at: datetime = T0, **changes: Any) -> ph.Observed:
    base = dict(dpu=dpu, now=at, settings=SETTINGS, host_node=host_node(), bfb=bfb(), flavor=FLAVOR,
                agent=agent(), cluster=ph.ClusterView("ns/dpu", True, None),
                effect=ph.EffectResult("apply", True), bf_cfg=b"#bf.cfg", high_speed_mtu=9000)
    base.update(changes)
    return ph.Observed(**base)  # type: ignore[arg-type]


def store(dpu: dict[str, Any], step: ph.Step) -> dict[str, Any]:
    """The DPU as the reconciler leaves it after `step`: record annotation and status written."""
    out = copy.deepcopy(dpu)
    if step.record is not None:
        out["metadata"]["annotations"][ph.RECORD_ANNOTATION] = step.record.to_json()
    out["status"] = step.status()
    return out


def at_phase(phase: str, at: datetime = T0, **record: Any) -> dict[str, Any]:
    """A DPU stored in `phase` since `at`."""
    rec = ph.Record(phase, at, at, **record)
    if phase == ph.OS_INSTALLING and not rec.install:
        rec = replace(rec, install=f"{UID}/1", installs=1)
    dpu = make_dpu(annotations={ph.RECORD_ANNOTATION: rec.to_json()})
    dpu["status"] = {"phase": phase}
    return dpu


def condition(step: ph.Step, type_: str) -> dict[str, Any]:
    return next(c for c in step.conditions if c["type"] == type_)


def effects(step: ph.Step) -> list[type]:
    return [type(e) for e in step.effects]


# ---- first pass, Initializing ----------------------------------------------------------------------


def test_a_new_dpu_gets_the_finalizer_and_its_record() -> None:
    dpu = make_dpu(finalizer=False, cluster=None)
    step = ph.step(observed(dpu, allocation_error="no DPUCluster"))
    assert effects(step)[0] is ph.AddFinalizer
    assert step.phase == ph.INITIALIZING
    assert step.record is not None
    assert step.record.phase == ph.INITIALIZING
    assert [c["type"] for c in step.conditions] == list(ph.CONDITION_TYPES)
    assert condition(step, "Initialized")["reason"] == "DPUClusterNotReady"
    assert condition(step, "Initialized")["message"] == "no DPUCluster"
    assert step.desired is None


@pytest.mark.parametrize(("node", "reason", "words"), [
    (None, "HostNodeNotFound", "host Node worker1 does not exist"),
    (host_node(labels={}), "DPUOOBBridgeNotConfigured", ph.OOB_BRIDGE_LABEL),
])
def test_initializing_waits_for_the_host_node_and_its_oob_bridge(node: Any, reason: str, words: str) -> None:
    step = ph.step(observed(make_dpu(), host_node=node))
    assert step.phase == ph.INITIALIZING
    assert condition(step, "Initialized")["status"] == "False"
    assert condition(step, "Initialized")["reason"] == reason
    assert words in condition(step, "Initialized")["message"]
    assert condition(step, "Ready")["reason"] == reason
    assert step.requeue == pytest.approx(SETTINGS.initializing_timeout)


def test_initializing_writes_the_allocated_cluster_then_moves_on() -> None:
    dpu = make_dpu(cluster={"nodeLabels": {"a": "b"}})
    step = ph.step(observed(dpu, allocated=("ns", "dpu-b")))
    assert step.effects == (ph.SetCluster("ns", "dpu-b"),)
    assert condition(step, "Initialized")["message"] == "assigning DPU cluster ns/dpu-b"
    step = ph.step(observed(make_dpu(), effect=None))
    assert step.phase == ph.NODE_EFFECT
    assert condition(step, "Initialized")["status"] == "True"
    assert ph.Event("Normal", "PhaseChanged", "Initializing → Node Effect: DPU cluster ns/dpu") in step.events
    assert effects(step) == [ph.ApplyNodeEffect]


# ---- Node Effect --------------------------------------------------------------------------------------


def test_node_effect_waits_reports_progress_and_goes_on_when_done() -> None:
    dpu = at_phase(ph.NODE_EFFECT)
    step = ph.step(observed(dpu, effect=ph.EffectResult("apply", False, "evicting 2 pods: web-1, web-2")))
    assert step.phase == ph.NODE_EFFECT
    assert effects(step) == [ph.ApplyNodeEffect]
    assert condition(step, "NodeEffectReady")["reason"] == "NodeEffectInProgress"
    assert condition(step, "NodeEffectReady")["message"] == "evicting 2 pods: web-1, web-2"
    stale = ph.step(observed(dpu, effect=ph.EffectResult("undo", True)))  # an undo result is not an apply
    assert stale.phase == ph.NODE_EFFECT
    done = ph.step(observed(dpu, effect=ph.EffectResult("apply", True), bfb=bfb("Downloading")))
    assert done.phase == ph.PENDING
    assert condition(done, "NodeEffectReady")["status"] == "True"
    assert done.left == ((ph.NODE_EFFECT, 0.0),)


def test_a_failing_node_effect_is_retried_with_back_off_then_is_an_error() -> None:
    dpu = at_phase(ph.NODE_EFFECT)
    failing = ph.EffectResult("apply", False, "cannot evict web-1: PodDisruptionBudget web allows 0", failed=True)
    now = T0
    for attempt in range(1, SETTINGS.max_attempts):
        step = ph.step(observed(dpu, now, effect=failing))
        delay = SETTINGS.retry_base * 2 ** (attempt - 1)
        assert step.phase == ph.NODE_EFFECT
        assert step.requeue == pytest.approx(delay)
        assert condition(step, "NodeEffectReady")["reason"] == ph.NODE_EFFECT_ERROR
        assert condition(step, "NodeEffectReady")["message"] == (
            f"{failing.message}; attempt {attempt} of 3 failed, attempt {attempt + 1} in {delay:.0f} s")
        assert step.events[0].type == "Warning"
        assert step.events[0].reason == "Retrying"
        assert step.failures == ((ph.NODE_EFFECT, ph.NODE_EFFECT_ERROR),)
        assert ph.ApplyNodeEffect not in effects(step)  # nothing is tried during the back-off
        dpu = store(dpu, step)
        backing_off = ph.step(observed(dpu, now + timedelta(seconds=delay / 2), effect=failing))
        assert backing_off.record is None
        assert backing_off.requeue == pytest.approx(delay / 2)
        now += timedelta(seconds=delay)
    step = ph.step(observed(dpu, now, effect=failing))
    assert step.phase == ph.ERROR
    assert condition(step, "NodeEffectReady")["reason"] == ph.NODE_EFFECT_ERROR
    assert condition(step, "Ready")["message"].startswith(f"Node Effect failed after 3 attempts: {failing.message}")
    assert ph.RETRY_ANNOTATION in condition(step, "Ready")["message"]
    assert effects(step) == [ph.UndoNodeEffect]
    assert step.desired is None
    assert step.events[-1].reason == "ProvisioningFailed"


# ---- Pending ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("found", "reason", "message"), [
    (None, "GetBFBFailed", "BFB ns/bf-bundle does not exist"),
    (bfb("Downloading"), "BFBNotReady", "BFB ns/bf-bundle is Downloading, waiting for Ready"),
])
def test_pending_waits_for_the_bfb(found: Any, reason: str, message: str) -> None:
    step = ph.step(observed(at_phase(ph.PENDING), bfb=found))
    assert step.phase == ph.PENDING
    assert step.desired is None
    assert (condition(step, "BFBReady")["reason"], condition(step, "BFBReady")["message"]) == (reason, message)


def test_a_ready_bfb_starts_dms_deployment_which_publishes_the_bfb() -> None:
    step = ph.step(observed(at_phase(ph.PENDING), agent=ph.AgentView()))
    assert step.phase == ph.DMS_DEPLOYMENT
    assert step.desired == ppb.DPUProvisioning(
        dpu_name=NAME, pci_address="0000-08-00",
        bfb=ppb.BFBSource(file_name="ns-bf-bundle.bfb", version=BFB_VERSION))


# ---- DMS Deployment -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("view", "reason", "words"), [
    (ph.AgentView(), "HostAgentNotConnected", "waiting for the host agent of node worker1 to connect"),
    (ph.AgentView(connected=True), "HostAgentNotConnected", "to report on this DPU"),
    (agent(rshim_holder="pid 4242 (rshim)"), "ExistingRshimInstallDetected",
     "the rshim of DPU 0000-08-00 on worker1 is held by pid 4242 (rshim)"),
    (agent(bfb_ready=False, bfb_error="sha256 mismatch"), "BFBNotReadyOnHost",
     "the host agent is getting BFB file ns-bf-bundle.bfb: sha256 mismatch"),
    (ph.AgentView(connected=True, refused="resource has no pci_address"), "HostAgentFailed",
     "the host agent on worker1: resource has no pci_address"),
    (replace(agent(bfb_ready=False), refused="no rshim device serves PCI 0000:08:00"), "HostAgentFailed",
     "the host agent on worker1: no rshim device serves PCI 0000:08:00"),
])
def test_dms_deployment_waits_for_the_host_agent(view: ph.AgentView, reason: str, words: str) -> None:
    step = ph.step(observed(at_phase(ph.DMS_DEPLOYMENT), agent=view))
    assert step.phase == ph.DMS_DEPLOYMENT
    assert step.desired is not None
    assert not step.desired.HasField("install")
    assert condition(step, "DMSRunning")["reason"] == reason
    assert words in condition(step, "DMSRunning")["message"]


def test_dms_ready_starts_an_install_with_a_new_id_once_bf_cfg_is_rendered() -> None:
    step = ph.step(observed(at_phase(ph.DMS_DEPLOYMENT), bf_cfg=None))
    assert step.phase == ph.OS_INSTALLING
    assert step.record is not None
    assert step.record.install == f"{UID}/1"
    assert step.effects == (ph.RenderBfCfg(f"{UID}/1"),)
    assert step.desired is not None
    assert not step.desired.HasField("install")
    dpu = store(at_phase(ph.DMS_DEPLOYMENT), step)
    step = ph.step(observed(dpu, bf_cfg=b"#bf.cfg\n"))
    assert step.desired is not None
    assert step.desired.install == ppb.Install(
        id=f"{UID}/1", bf_cfg=b"#bf.cfg\n", timeout_seconds=int(SETTINGS.install_timeout))
    assert step.record is None  # the same install: nothing new to store


# ---- OS Installing ------------------------------------------------------------------------------------


def installing(**fields: Any) -> ph.AgentView:
    return agent(install=ppb.InstallStatus(id=f"{UID}/1", **fields))


def test_install_progress_names_bytes_rate_eta_and_the_boot_log() -> None:
    view = installing(state=ppb.INSTALL_STATE_FLASHING, bytes_sent=412 * MiB, bytes_total=GiB, rate=180 * MiB,
                      eta_seconds=3, log=[" INFO[BL2]: start", " INFO[BL31]: start kernel"])
    step = ph.step(observed(at_phase(ph.OS_INSTALLING), agent=view))
    assert condition(step, "OSInstalled")["reason"] == "InstallationInProgress"
    assert condition(step, "OSInstalled")["message"] == \
        "flashing 412 MiB of 1.0 GiB at 180 MiB/s, ETA 3 s; boot log: INFO[BL31]: start kernel"
    booting = ph.step(observed(at_phase(ph.OS_INSTALLING), agent=installing(
        state=ppb.INSTALL_STATE_BOOTING, bytes_total=GiB, log=["Linux up"])))
    assert condition(booting, "OSInstalled")["message"] == \
        "image written (1.0 GiB), waiting for the DPU to boot; boot log: Linux up"
    waiting = ph.step(observed(at_phase(ph.OS_INSTALLING), agent=agent()))  # a status of an older id
    assert condition(waiting, "OSInstalled")["message"] == \
        f"install {UID}/1: waiting for the host agent to start flashing"


def test_done_moves_to_rebooting_and_records_the_bfb_version() -> None:
    step = ph.step(observed(at_phase(ph.OS_INSTALLING), host_node=host_node(), agent=installing(
        state=ppb.INSTALL_STATE_DONE, log=["DPU is ready"])))
    assert step.phase == ph.REBOOTING
    assert condition(step, "OSInstalled")["status"] == "True"
    assert step.bfb_version == BFB_VERSION
    assert step.status()["bfbVersion"] == BFB_VERSION
    assert step.record is not None
    assert step.record.install == f"{UID}/1"
    assert step.desired is not None
    # The install stays, same id: its status carries host_rebooted (an agent never flashes an id twice).
    assert step.desired.install.id == f"{UID}/1"
    assert step.desired.reboot.method == ppb.REBOOT_METHOD_POWER_RESET  # warm reboot, default reset


def test_a_failed_install_is_retried_with_a_new_id_after_the_back_off_then_is_an_error() -> None:
    dpu = at_phase(ph.OS_INSTALLING)
    now = T0
    for attempt in (1, 2):
        view = agent(install=ppb.InstallStatus(id=f"{UID}/{attempt}", state=ppb.INSTALL_STATE_FAILED,
                                               error="stream stalled", log=["ERR[BL2]: bad image"]))
        step = ph.step(observed(dpu, now, agent=view))
        assert step.phase == ph.OS_INSTALLING
        assert step.record is not None
        assert step.record.install == f"{UID}/{attempt + 1}"
        assert condition(step, "OSInstalled")["reason"] == ph.INSTALLATION_FAILED
        assert f"install {UID}/{attempt}: stream stalled; boot log: ERR[BL2]: bad image" in \
            condition(step, "OSInstalled")["message"]
        assert step.desired is not None
        assert not step.desired.HasField("install")
        dpu = store(dpu, step)
        now += timedelta(seconds=step.requeue or 0)
        again = ph.step(observed(dpu, now, agent=view))
        assert again.desired is not None
        assert again.desired.install.id == f"{UID}/{attempt + 1}"
    view = agent(install=ppb.InstallStatus(id=f"{UID}/3", state=ppb.INSTALL_STATE_FAILED, error="no boot"))
    step = ph.step(observed(dpu, now, agent=view))
    assert step.phase == ph.ERROR
    assert condition(step, "OSInstalled")["reason"] == ph.INSTALLATION_FAILED
    assert step.desired is None  # released: the rshim and the host go back to the user


def test_bf_cfg_that_cannot_be_rendered_fails_the_attempt() -> None:
    step = ph.step(observed(at_phase(ph.OS_INSTALLING), bf_cfg=None, bf_cfg_error="bf.cfg is 140000 bytes"))
    assert condition(step, "OSInstalled")["reason"] == ph.BFCFG_FAILED
    assert "bf.cfg is 140000 bytes" in condition(step, "OSInstalled")["message"]


# ---- timeouts -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("phase", "changes", "limit", "awaited"), [
    (ph.INITIALIZING, {"host_node": host_node(labels={})}, SETTINGS.initializing_timeout, ph.OOB_BRIDGE_LABEL),
    (ph.NODE_EFFECT, {"effect": None}, SETTINGS.node_effect_timeout, "applying the node effect (noEffect)"),
    (ph.PENDING, {"bfb": bfb("Downloading")}, SETTINGS.pending_timeout, "Downloading"),
    (ph.DMS_DEPLOYMENT, {"agent": ph.AgentView()}, SETTINGS.dms_timeout, "to connect"),
    (ph.OS_INSTALLING, {}, SETTINGS.install_timeout + ph.INSTALL_GRACE, "waiting for the host agent"),
    (ph.REBOOTING, {}, SETTINGS.reboot_timeout, "asking the host agent for a warm-reboot (reset)"),
    (ph.HOST_NETWORK, {}, SETTINGS.host_network_timeout, "46 VFs"),
    (ph.CLUSTER_CONFIG, {}, SETTINGS.cluster_config_timeout, "waiting for Node"),
])
def test_every_phase_times_out_naming_what_it_waited_for(phase: str, changes: dict[str, Any], limit: float,
                                                         awaited: str) -> None:
    dpu = at_phase(phase)
    before = ph.step(observed(dpu, T0 + timedelta(seconds=limit - 1), **changes))
    assert before.phase == phase
    assert before.requeue == pytest.approx(1.0)
    step = ph.step(observed(dpu, T0 + timedelta(seconds=limit), **changes))
    reason = ph.timeout_reason(phase)
    assert step.phase == phase
    assert step.failures == ((phase, reason),)
    message = condition(step, ph.CONDITION_OF[phase])["message"]
    assert condition(step, ph.CONDITION_OF[phase])["reason"] == reason
    assert message.startswith(f"{phase} did not finish within ")
    assert awaited in message
    spent = at_phase(phase, attempt=SETTINGS.max_attempts)
    final = ph.step(observed(spent, T0 + timedelta(seconds=limit), **changes))
    assert final.phase == ph.ERROR
    assert condition(final, "Ready")["reason"] == reason


def test_timeout_reasons_are_condition_reasons() -> None:
    assert ph.timeout_reason(ph.DMS_DEPLOYMENT) == "DMSDeploymentTimeout"
    assert ph.timeout_reason(ph.OS_INSTALLING) == "OSInstallingTimeout"
    assert ph.timeout_reason(ph.CLUSTER_CONFIG) == "DPUClusterConfigTimeout"
    assert ph.timeout_reason(ph.HOST_NETWORK) == "HostNetworkConfigurationTimeout"


# ---- Rebooting ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("dpu_annotations", "node_annotations", "method"), [
    ({}, {}, ppb.REBOOT_METHOD_POWER_RESET),
    ({}, {ph.REBOOT_COMMAND_ANNOTATION: "cycle"}, ppb.REBOOT_METHOD_POWER_CYCLE),
    ({ph.POWER_CYCLE_ANNOTATION: "true"}, {}, ppb.REBOOT_METHOD_POWER_CYCLE),
    ({ph.POWER_CYCLE_ANNOTATION: "true"}, {ph.POWERCYCLE_COMMAND_ANNOTATION: "reset",
                                           ph.REBOOT_COMMAND_ANNOTATION: "skip"}, ppb.REBOOT_METHOD_POWER_RESET),
])
def test_automatic_reboot_follows_the_policy(dpu_annotations: dict[str, str], node_annotations: dict[str, str],
                                             method: int) -> None:
    dpu = at_phase(ph.REBOOTING, install=f"{UID}/1")
    dpu["metadata"]["annotations"].update(dpu_annotations)
    step = ph.step(observed(dpu, host_node=host_node(annotations=node_annotations)))
    assert step.phase == ph.REBOOTING
    assert step.record is not None
    assert step.record.reboot == f"{UID}/r1"
    assert step.desired is not None
    assert step.desired.reboot == ppb.Reboot(id=f"{UID}/r1", method=method)
    assert condition(step, "Rebooted")["reason"] == "RebootInProgress"
    issued = ph.step(observed(store(dpu, step), agent=agent(reboot=ppb.RebootStatus(id=f"{UID}/r1"))))
    assert issued.record is None
    assert "issued; waiting for it to boot again" in condition(issued, "Rebooted")["message"]


def test_skip_goes_straight_on_and_a_reported_host_boot_ends_rebooting() -> None:
    dpu = at_phase(ph.REBOOTING, install=f"{UID}/1")
    skipped = ph.step(observed(dpu, host_node=host_node(annotations={ph.REBOOT_COMMAND_ANNOTATION: "skip"})))
    assert skipped.phase == ph.HOST_NETWORK
    assert condition(skipped, "Rebooted")["status"] == "True"
    assert "command is skip" in skipped.events[0].note
    booted = ph.step(observed(dpu, agent=agent(install=ppb.InstallStatus(
        id=f"{UID}/1", state=ppb.INSTALL_STATE_DONE, host_rebooted=True))))
    assert booted.phase == ph.HOST_NETWORK
    stale = ph.step(observed(dpu, agent=agent(install=ppb.InstallStatus(id=f"{UID}/0", host_rebooted=True))))
    assert stale.phase == ph.REBOOTING  # a boot after another install does not count


def test_manual_reboot_waits_for_the_host_without_asking_the_agent() -> None:
    dpu = at_phase(ph.REBOOTING, install=f"{UID}/1")
    dpu["spec"]["automaticNodeReboot"] = False
    step = ph.step(observed(dpu))
    assert condition(step, "Rebooted")["reason"] == "WaitingForManualPowerCycleOrReboot"
    assert "warm reboot host worker1" in condition(step, "Rebooted")["message"]
    assert step.desired is not None
    assert not step.desired.HasField("reboot")
    assert step.requeue == pytest.approx(SETTINGS.manual_reboot_timeout)
    drained = copy.deepcopy(dpu)
    drained["spec"]["nodeEffect"] = {"drain": {"automaticNodeReboot": True}}
    assert ph.step(observed(drained)).desired.HasField("reboot")  # type: ignore[union-attr]


def test_a_failed_reboot_is_retried_with_a_new_reboot_id() -> None:
    dpu = at_phase(ph.REBOOTING, install=f"{UID}/1", reboot=f"{UID}/r1", reboots=1)
    step = ph.step(observed(dpu, agent=agent(reboot=ppb.RebootStatus(id=f"{UID}/r1", error="ipmitool: timeout"))))
    assert condition(step, "Rebooted")["reason"] == ph.REBOOT_FAILED
    assert step.record is not None
    assert step.record.reboot == ""
    assert step.desired is not None
    assert not step.desired.HasField("reboot")
    later = ph.step(observed(store(dpu, step), T0 + timedelta(seconds=SETTINGS.retry_base)))
    assert later.desired is not None
    assert later.desired.reboot.id == f"{UID}/r2"


# ---- Host Network Configuration, DPU Cluster Config, Ready -------------------------------------------


def test_host_network_publishes_vfs_and_mtu_and_waits_for_the_agent() -> None:
    step = ph.step(observed(at_phase(ph.HOST_NETWORK), agent=agent(host_network=ppb.HostNetworkStatus(
        message="waiting for br-dpu to have an IPv4 address"))))
    assert step.desired is not None
    assert step.desired.host_network == ppb.HostNetwork(num_vfs=46, vf_mtu=9000, bridge="br-dpu")
    assert condition(step, "HostNetworkReady")["reason"] == "HostNetworkConfiguring"
    assert condition(step, "HostNetworkReady")["message"] == "waiting for br-dpu to have an IPv4 address"
    plain = ph.step(observed(at_phase(ph.HOST_NETWORK), flavor=None, high_speed_mtu=0))
    assert plain.desired is not None
    assert plain.desired.host_network.num_vfs == 16
    assert plain.desired.host_network.vf_mtu == 1500
    ready = ph.step(observed(at_phase(ph.HOST_NETWORK), agent=agent(host_network=ppb.HostNetworkStatus(
        ready=True, num_vfs=46, vf0="ens1f0v0"))))
    assert ready.phase == ph.CLUSTER_CONFIG
    assert "46 VFs, ens1f0v0 in br-dpu with MTU 9000" in ready.events[0].note


@pytest.mark.parametrize(("cluster", "reason", "words"), [
    (ph.ClusterView("ns/dpu"), "DPUClusterClientGetError", "DPU cluster ns/dpu is not connected"),
    (ph.ClusterView("ns/dpu", True), "DPUNodeNotReady", f"waiting for Node {NAME} to join DPU cluster ns/dpu"),
    (ph.ClusterView("ns/dpu", True, dpu_node("False")), "DPUNodeNotReady", "is not Ready (KubeletReady"),
])
def test_cluster_config_waits_for_a_ready_dpu_node(cluster: ph.ClusterView, reason: str, words: str) -> None:
    step = ph.step(observed(at_phase(ph.CLUSTER_CONFIG), cluster=cluster))
    assert step.phase == ph.CLUSTER_CONFIG
    assert condition(step, "Ready")["reason"] == reason
    assert words in condition(step, "Ready")["message"]
    assert condition(step, "HostNetworkReady")["status"] == "True"


def test_cluster_config_labels_the_dpu_node_then_the_dpu_is_ready() -> None:
    dpu = at_phase(ph.CLUSTER_CONFIG)
    step = ph.step(observed(dpu, cluster=ph.ClusterView("ns/dpu", True, dpu_node())))
    assert step.effects == (ph.MergeDPUNodeLabels({"team": "net", ph.HOST_LABEL: NODE,
                                                   ph.BFB_VERSION_LABEL: BFB_VERSION}),)
    labelled = dpu_node(labels={"team": "net", ph.HOST_LABEL: NODE, ph.BFB_VERSION_LABEL: BFB_VERSION})
    step = ph.step(observed(dpu, T0 + timedelta(seconds=42), cluster=ph.ClusterView("ns/dpu", True, labelled)))
    assert step.phase == ph.READY
    assert step.requeue is None
    assert all(c["status"] == "True" for c in step.conditions), step.conditions
    assert condition(step, "Ready")["reason"] == "DPUNodeReady"
    assert effects(step) == [ph.UndoNodeEffect]
    assert step.left == ((ph.CLUSTER_CONFIG, 42.0),)
    assert step.desired is not None
    assert step.desired.HasField("host_network")
    ready = store(dpu, step)
    undone = ph.step(observed(ready, cluster=ph.ClusterView("ns/dpu", True, labelled),
                              effect=ph.EffectResult("undo", True)))
    assert undone.effects == ()
    assert undone.record is None
    assert undone.events == ()
    lost = ph.step(observed(ready, cluster=ph.ClusterView("ns/dpu", True, dpu_node("Unknown", labelled["metadata"][
        "labels"])), effect=ph.EffectResult("undo", True)))
    assert lost.phase == ph.READY
    assert condition(lost, "Ready")["status"] == "False"
    assert condition(lost, "Ready")["reason"] == "DPUNodeNotReady"


# ---- chaining, Error and the retry annotation ---------------------------------------------------------


def test_phases_that_are_already_satisfied_pass_in_one_step() -> None:
    step = ph.step(observed(make_dpu(), bf_cfg=None))
    assert step.phase == ph.OS_INSTALLING
    assert [e.note.split(":")[0] for e in step.events] == [
        "Initializing → Node Effect", "Node Effect → Pending", "Pending → DMS Deployment",
        "DMS Deployment → OS Installing"]
    assert [p for p, _ in step.left] == [ph.INITIALIZING, ph.NODE_EFFECT, ph.PENDING, ph.DMS_DEPLOYMENT]


def test_the_retry_annotation_restarts_the_failed_phase_once_per_value() -> None:
    failed = ph.Record(ph.ERROR, T0, T0, attempt=3, install=f"{UID}/3", installs=3, failed_phase=ph.OS_INSTALLING,
                       reason=ph.INSTALLATION_FAILED, cause="no boot")
    dpu = make_dpu(annotations={ph.RECORD_ANNOTATION: failed.to_json()})
    dpu["status"] = {"phase": ph.ERROR}
    error = ph.step(observed(dpu))
    assert error.phase == ph.ERROR
    assert error.record is None
    assert error.desired is None
    assert condition(error, "OSInstalled")["reason"] == ph.INSTALLATION_FAILED
    assert condition(error, "DMSRunning")["status"] == "True"
    dpu["metadata"]["annotations"][ph.RETRY_ANNOTATION] = "1"
    step = ph.step(observed(dpu, bf_cfg=None))
    assert step.phase == ph.OS_INSTALLING
    assert step.record is not None
    assert (step.record.attempt, step.record.install, step.record.retry) == (1, f"{UID}/4", "1")
    assert step.events[0].reason == "RetryRequested"
    again = ph.step(observed(store(dpu, step)))
    assert again.phase == ph.OS_INSTALLING
    assert not again.events


def test_a_retry_value_set_outside_error_is_noted_not_acted_on_later() -> None:
    dpu = at_phase(ph.PENDING)
    dpu["metadata"]["annotations"][ph.RETRY_ANNOTATION] = "early"
    step = ph.step(observed(dpu, bfb=bfb("Downloading")))
    assert step.record is not None
    assert step.record.retry == "early"
    assert not step.events


# ---- deletion -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("phase", [*ph.ORDER, ph.ERROR])
def test_deletion_in_every_phase_releases_everything_then_the_finalizer(phase: str) -> None:
    dpu = at_phase(phase, failed_phase=ph.OS_INSTALLING if phase == ph.ERROR else "")
    dpu["metadata"]["deletionTimestamp"] = "2026-12-04T20:05:00Z"
    cluster = ph.ClusterView("ns/dpu", True, dpu_node())
    step = ph.step(observed(dpu, cluster=cluster, effect=None))
    assert step.phase == ph.DELETING
    assert step.desired is None
    assert step.record is None
    assert effects(step) == [ph.UndoNodeEffect, ph.DeleteDPUNode]
    assert condition(step, "Ready")["reason"] == "AwaitingDeletion"
    assert step.events == (ph.Event("Normal", "PhaseChanged", f"{phase} → Deleting: the DPU is being deleted"),)
    gone = ph.step(observed(store(dpu, step), cluster=ph.ClusterView("ns/dpu", True, None),
                            effect=ph.EffectResult("undo", True)))
    assert gone.effects == (ph.RemoveFinalizer(),)
    assert gone.events == ()


def test_deletion_waits_for_the_node_effect_undo_and_skips_an_unreachable_cluster() -> None:
    dpu = at_phase(ph.READY)
    dpu["metadata"]["deletionTimestamp"] = "2026-12-04T20:05:00Z"
    step = ph.step(observed(dpu, cluster=ph.ClusterView("ns/dpu"), effect=ph.EffectResult("undo", False, "untainting")))
    assert step.effects == (ph.UndoNodeEffect(),)
    assert "untainting" in condition(step, "Ready")["message"]


def test_deletion_of_a_dpu_without_our_finalizer_does_nothing() -> None:
    dpu = make_dpu(finalizer=False)
    dpu["metadata"]["deletionTimestamp"] = "2026-12-04T20:05:00Z"
    step = ph.step(observed(dpu))
    assert step.effects == ()
    assert step.desired is None
    assert step.record is None


# ---- resuming from what is stored ---------------------------------------------------------------------


def test_a_restart_mid_install_keeps_the_install_id() -> None:
    dpu = at_phase(ph.OS_INSTALLING, T0 - timedelta(seconds=300), install=f"{UID}/2", installs=2)
    step = ph.step(observed(dpu, bf_cfg=None))  # a new process has no bf.cfg in memory
    assert step.effects == (ph.RenderBfCfg(f"{UID}/2"),)
    assert step.record is None
    step = ph.step(observed(dpu))
    assert step.desired is not None
    assert step.desired.install.id == f"{UID}/2"


def test_a_dpu_past_the_install_is_never_flashed_again() -> None:
    for phase in (ph.REBOOTING, ph.HOST_NETWORK, ph.CLUSTER_CONFIG, ph.READY):
        without_record = make_dpu()
        without_record["status"] = {"phase": phase}  # e.g. a DPU provisioned before this controller
        for dpu in (at_phase(phase, install=f"{UID}/1", installs=1), without_record):
            step = ph.step(observed(dpu))
            assert step.phase == phase
            assert condition(step, "OSInstalled")["status"] == "True"
            assert step.desired is not None
            assert ph.RenderBfCfg not in effects(step)
            if phase == ph.REBOOTING and step.desired.HasField("install"):  # the DONE attempt, never a new one
                assert step.desired.install.id == f"{UID}/1"
            else:
                assert not step.desired.HasField("install")


def test_an_install_not_reported_done_is_not_reported_installed() -> None:
    dpu = at_phase(ph.OS_INSTALLING)
    dpu["status"]["conditions"] = [{"type": "OSInstalled", "status": "Unknown", "reason": "Pending", "message": "",
                                    "lastTransitionTime": "2026-12-04T19:00:00Z"}]
    for state in (ppb.INSTALL_STATE_FLASHING, ppb.INSTALL_STATE_BOOTING, ppb.INSTALL_STATE_WAITING):
        step = ph.step(observed(dpu, agent=installing(state=state)))
        assert step.phase == ph.OS_INSTALLING
        assert condition(step, "OSInstalled")["status"] == "False"
    done_for_another = agent(install=ppb.InstallStatus(id=f"{UID}/0", state=ppb.INSTALL_STATE_DONE))
    assert ph.step(observed(dpu, agent=done_for_another)).phase == ph.OS_INSTALLING


def test_records_round_trip_and_foreign_ones_are_ignored() -> None:
    record = ph.Record(ph.REBOOTING, T0, T0 + timedelta(seconds=5), attempt=2, install=f"{UID}/3", installs=3,
                       reboot=f"{UID}/r1", reboots=1, reason="RebootFailed", cause="x", retry="7")
    assert ph.Record.from_json(record.to_json()) == record
    foreign = ph.Record(ph.READY, T0, T0, install="other-uid/1", installs=1)
    dpu = make_dpu(annotations={ph.RECORD_ANNOTATION: foreign.to_json()})
    dpu["status"] = {"phase": ph.PENDING}
    assert ph.record_of(dpu, T0).phase == ph.PENDING
    dpu["metadata"]["annotations"][ph.RECORD_ANNOTATION] = "{not json"
    assert ph.record_of(dpu, T0) == ph.Record(ph.PENDING, T0, T0)


def test_num_vfs_comes_from_nvconfig_or_bfcfg_parameters() -> None:
    assert ph.num_vfs(FLAVOR, 16) == 46
    assert ph.num_vfs({"spec": {"bfcfgParameters": ["NUM_OF_VFS = 8"]}}, 16) == 8
    assert ph.num_vfs({"spec": {}}, 16) == 16
    assert ph.num_vfs(None, 12) == 12
