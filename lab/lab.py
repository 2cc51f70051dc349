"""The local lab: the real components of a DPF deployment, started on one machine.

The host cluster's control plane with the dpf CRDs, a DPU cluster that is a control plane of its own, a chart
repository on loopback HTTPS (the controller's mirror of upstream's public one), the dpf controller, and emulated
servers with their host agents; then provisioning as DPF does it (`provision.py`): upstream's hbn_only BFB,
DPUFlavor and DPUSet, every DPU's phases printed with its flash progress until all are Ready. Then the
service-chaining scenario (`sfc_demo.py`) on the DPUs it provisioned: upstream's hbn_only interfaces, DPUService
doca-hbn (`hbn_service.py`) and chain, traffic through its pods, and a DPUService whose pods get net1 through
Multus with addresses from a DPUServiceIPAM pool (`service_pods.py`); then a rolling update of the DPUSet to a new
BFB, maxUnavailable respected and shown.
Each step prints what it does. Once up, the lab supervises its long-running processes as systemd would
(`bed/supervise.py`): one that dies is restarted with back-off and a line saying so, so faults can be tried
in it; only a process that keeps failing stops the lab. Ctrl-C or SIGTERM stops everything in reverse order
and leaves nothing behind. A second lab on the same workdir is refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from types import FrameType

from dpf.lab import chains, hbn_ovn, service_pods
from dpf.lab.bed.chart_repo import ChartRepo
from dpf.lab.bed.kube import ControlPlane
from dpf.lab.bed.netns import NetnsBed
from dpf.lab.bed.process import ProcessFailed
from dpf.lab.bed.supervise import RestartPolicy, Supervisor
from dpf.lab.bed.tools import ToolMissing, tool
from dpf.lab.controller import ControllerProcess
from dpf.lab.hbn_ovn_demo import DEPLOYMENT, ChartSources, HbnOvnDeployment, serve_and_deploy
from dpf.lab.provision import NAMESPACE, Provisioning, ProvisioningError
from dpf.lab.service_pods import ServicePodError
from dpf.lab.sfc_demo import DemoError, SfcDemo

POLL_INTERVAL = 0.1
"""How often the lab looks for exited processes (the first restart waits RestartPolicy.first_delay on top)."""


class LabError(Exception):
    pass


def say(message: str) -> None:
    print(f"[lab] {message}", flush=True)


class Lab:
    def __init__(self, workdir: Path, hosts: int = 2, dpus_per_host: int = 1, update: bool = True,
                 use_case: str = "hbn_only") -> None:
        self.workdir = workdir
        self.use_case = use_case
        self.hosts = hosts
        self.dpus_per_host = dpus_per_host
        self.update = update
        self._stack = contextlib.ExitStack()
        self._stop = threading.Event()
        self.host: ControlPlane | None = None
        self.controller: ControllerProcess | None = None
        self.provisioning: Provisioning | None = None
        self.demo: SfcDemo | None = None
        self.hbn_ovn: HbnOvnDeployment | None = None
        self.charts: ChartRepo | None = None
        self.supervisor = Supervisor(say, RestartPolicy())
        self._pid = os.getpid()

    def __enter__(self) -> Lab:
        self._lock()
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._stack.callback(signal.signal, sig, signal.signal(sig, self._on_signal))
        return self

    def __exit__(self, *exc: object) -> None:
        say("stopping: the DPUService (its Helm release uninstalled), servers (DPU agents, kubelets, OVS), host "
            "agents, controller, chart repository, control planes and the network namespaces")
        started = time.monotonic()
        self._stack.close()
        say(f"stopped cleanly in {time.monotonic() - started:.1f}s")

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if os.getpid() != self._pid:
            # A forked helper (pyroute2 forks to create network namespaces) being stopped: it must die as
            # it would without our handler, never run the lab's teardown.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if self._stop.is_set():
            return
        say(f"received {signal.Signals(signum).name}")
        self._stop.set()
        raise KeyboardInterrupt  # unwinds a start-up step in progress; __exit__ cleans up

    def _lock(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        lock = open(self.workdir / "lab.lock", "w")  # noqa: SIM115 - held for the lab's lifetime
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            lock.close()
            raise LabError(f"another lab is running on {self.workdir}; stop it or pass --workdir") from exc
        self._stack.callback(lock.close)
        lock.write(str(os.getpid()))
        lock.flush()
        for entry in self.workdir.iterdir():  # the lab is ephemeral: every run starts clean
            if entry.name != "lab.lock":
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()

    def start(self) -> None:
        if os.geteuid() != 0:
            raise LabError("the lab needs root (network namespaces, Open vSwitch); run it with sudo")
        try:
            self._start_control_plane()
            host = self.host
            assert host is not None
            provisioning = self.provisioning = Provisioning(host, self.workdir, self._stack, say, self.hosts,
                                                            self.dpus_per_host)
            self._apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}])
            cluster = provisioning.start_dpu_cluster()
            if self.use_case == "hbn_ovn":
                self._start_hbn_ovn(provisioning)
            else:
                self._start_hbn_only(host, cluster, provisioning)
        except (ToolMissing, ProcessFailed, TimeoutError, DemoError, ServicePodError, ProvisioningError,
                RuntimeError) as exc:
            raise LabError(str(exc)) from exc
        self._supervise()
        self._print_usage()

    def _start_hbn_only(self, host: ControlPlane, cluster: ControlPlane, provisioning: Provisioning) -> None:
        """Upstream's hbn_only: its BFB, flavor and DPUSet provisioned, then the service-chaining scenario on those
        DPUs, then a rolling update of the BFB."""
        self._start_chart_repo()
        assert self.charts is not None
        self._start_controller(provisioning.bfb_dir, ((service_pods.PUBLIC_REPO, self.charts.url),),
                               self.charts.ca_file)
        assert self.controller is not None
        provisioning.register_dpu_cluster(self._apply)
        provisioning.start_servers(self.controller)
        provisioning.provision(self._apply)
        self.demo = SfcDemo(host, cluster, self.controller, list(provisioning.dpus.values()), self.workdir,
                            self._stack, say, watched=lambda: [s.machine for s in provisioning.servers])
        self._stack.callback(self.demo.service_pods.stop, host)  # while the controller runs to uninstall it
        self.demo.start()
        if self.update:
            provisioning.rolling_update(self._apply)
            self.demo.wait_traffic()

    def _start_hbn_ovn(self, provisioning: Provisioning) -> None:
        """Upstream's hbn_ovn use case (05.2's DPUDeployment) on the DPUs its own DPUSet provisions."""
        sources = ChartSources(self.workdir, self._stack)
        say(f"chart repository at {sources.charts.url} and OCI registry at {sources.registry.host} (loopback HTTPS): "
            f"the lab's stand-ins for {hbn_ovn.HTTP_REPO} and {hbn_ovn.OCI_REPO}, under upstream's chart names and "
            "versions")
        self._start_controller(provisioning.bfb_dir, sources.mirrors, sources.ca_file)
        assert self.controller is not None
        controller = self.controller
        provisioning.register_dpu_cluster(self._apply)
        bed = NetnsBed(owner="lab")
        self._stack.callback(bed.cleanup)
        self.hbn_ovn = HbnOvnDeployment(
            provisioning.host, provisioning, bed, say, self._apply,
            watched=lambda: [c for c in (controller.child, *(s.machine for s in provisioning.servers)) if c])
        self.hbn_ovn.prepare_dpu_cluster()
        provisioning.start_servers(controller)
        # Deleted while the controller still runs (LIFO): its DPUServices' releases are uninstalled, in order.
        self._stack.callback(self._delete_hbn_ovn)
        serve_and_deploy(self.hbn_ovn, provisioning)

    def _delete_hbn_ovn(self) -> None:
        assert self.host is not None
        say(f"deleting DPUDeployment {DEPLOYMENT} (its chains, interfaces and services first, then its DPUSet)")
        self.host.kubectl("delete", "dpudeployment", DEPLOYMENT, "-n", NAMESPACE, "--ignore-not-found",
                          "--wait=true", "--timeout=180s", check=False, timeout=200)

    def _apply(self, objects: list[dict]) -> None:
        assert self.host is not None
        result = self.host.kubectl("apply", "--server-side", "-f", "-", input=chains.to_yaml(objects), check=False)
        if result.returncode != 0:
            raise LabError(f"kubectl apply failed: {result.stderr.strip()}")
        for line in result.stdout.splitlines():
            say(f"  kubectl: {line}")

    def _start_chart_repo(self) -> None:
        self.charts = ChartRepo(self.workdir / "chart-repo", service_pods.charts())
        self._stack.callback(self.charts.stop)
        self.charts.start()
        say(f"chart repository at {self.charts.url} (loopback HTTPS, CA {self.charts.ca_file}): "
            f"{', '.join(c.name for c in self.charts.charts)}; the controller installs {service_pods.PUBLIC_REPO} "
            "charts from it")

    def _start_controller(self, bfb_dir: Path, mirrors: tuple[tuple[str, str], ...], ca_file: Path) -> None:
        assert self.host is not None
        say("starting the dpf controller (NodeState gRPC with mTLS on a unix socket, leader of one)")
        bfb_dir.mkdir(parents=True, exist_ok=True)
        self.controller = ControllerProcess(self.host.kubeconfig, NAMESPACE, self.workdir / "controller", bfb_dir,
                                            chart_mirrors=mirrors, ca_file=ca_file)
        self._stack.callback(self.controller.stop)
        self.controller.start()
        say(f"controller serving at {self.controller.endpoint}; log: {self.controller.workdir}/controller.log")

    def _supervise(self) -> None:
        """Watch every long-running process from here on (start-up itself fails fast on a death instead)."""
        assert self.host is not None
        assert self.provisioning is not None
        for plane in (self.host, self.provisioning.cluster):
            for child in plane.children if plane else ():
                self.supervisor.watch(child, child.name)
        if self.controller is not None and self.controller.child is not None:
            self.supervisor.watch(self.controller.child, "dpf controller")
        for label, child, log in self.provisioning.processes():
            self.supervisor.watch(child, label, log)

    def _start_control_plane(self) -> None:
        say("starting the host cluster: etcd + kube-apiserver + kube-controller-manager on loopback")
        self.host = ControlPlane(self.workdir / "host", name="dpf-lab")
        self._stack.callback(self.host.stop)
        self.host.start()
        say(f"kube-apiserver {self.host.version()} ready at {self.host.server} "
            f"in {self.host.startup_seconds:.1f}s")
        say(f"installed {len(self.host.crds)} CustomResourceDefinitions (dpf API groups)")

    def _print_usage(self) -> None:
        assert self.host is not None
        print(
            "\n"
            "The lab is up. Point kubectl at it from another shell:\n"
            f"  export KUBECONFIG={self.host.kubeconfig}\n"
            f"  {tool('kubectl')} get crd\n"
            f"  {tool('kubectl')} api-resources --api-group=provisioning.dpu.nvidia.com\n"
            f"\n{self.provisioning.usage() if self.provisioning else ''}\n"
            f"\n{self.demo.usage() if self.demo else ''}{self.hbn_ovn.usage() if self.hbn_ovn else ''}\n"
            f"\n{self._fault_usage()}\n"
            "\nPress Ctrl-C to stop the lab.\n",
            flush=True,
        )

    def _fault_usage(self) -> str:
        policy = self.supervisor.policy
        dpu = self.demo.dpus[0].name if self.demo and self.demo.dpus else "worker1-0000-08-00"
        agents = self.provisioning.agent_listing() if self.provisioning else []
        width = max((len(label) for label in [w.label for w in self.supervisor.watched] + [a[0] for a in agents]),
                    default=0)
        return "\n".join([
            f"Faults: the lab restarts a process that dies, as systemd's Restart=on-failure would (after "
            f"{policy.first_delay:g}s, doubling",
            f"to {policy.max_delay:g}s while it keeps failing), and says so; it stops only for one restarted more "
            f"than {policy.burst} times within {policy.interval:g}s.",
            "Kill one and watch it come back:",
            f"  kill -9 $(pgrep -f 'agent dpu --node {dpu}')    # or kill -9 <pid> from these lists",
            "Processes (pid, log):",
            *(f"  {w.label:<{width}}  {w.child.pid:>7}  {w.log}" for w in self.supervisor.watched),
            "DPU software, started by each DPU's OS after it joined and restarted by its emulated server:",
            *(f"  {label:<{width}}  {pid:>7}  {log}" for label, pid, log in agents),
        ])

    def wait(self, duration: float | None) -> None:
        """Run until a signal arrives, `duration` elapses, or a process keeps failing; restart ones that die."""
        deadline = None if duration is None else time.monotonic() + duration
        with contextlib.suppress(KeyboardInterrupt):
            while not self._stop.is_set():
                if deadline is not None and time.monotonic() >= deadline:
                    say(f"--for {duration:g}s elapsed")
                    return
                try:
                    self.supervisor.poll()
                except (ProcessFailed, OSError) as exc:
                    raise LabError(str(exc)) from exc
                self._stop.wait(POLL_INTERVAL)
