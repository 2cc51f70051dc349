#!/usr/bin/env python3
"""DPUServices at scale: S DPUServices x C DPU clusters, from apply to all Ready, one changed value to rolled, and
delete to all releases uninstalled, with the controller's CPU and RSS.

    .venv/bin/python bench/services/run.py [--services 50] [--clusters 2] [--nodes 2] [--change one|all ...]
        [--workers 4 ...] [--helm-concurrency 4 ...] [--record]

Per setting, from scratch: the host cluster (etcd + kube-apiserver, our CRDs); C DPU clusters, each its own etcd +
kube-apiserver + kube-controller-manager (DaemonSet, service-account, garbage-collector controllers: DaemonSet
status is real) + kube-scheduler + kwok (sigs.k8s.io/kwok v0.8.0) playing the kubelets of `--nodes` Nodes, so each
DaemonSet really schedules its pods and kwok marks them Running and Ready (`--nodes 0`: no Nodes, a DaemonSet wants 0
pods, which upstream's Synced+Healthy counts as ready); a Helm chart repository on loopback HTTPS (the test chart
`tests/services/charts/tiny`: one DaemonSet), trusted by the controller through SSL_CERT_FILE; and `dpf controller
run` as a process of its own, so its CPU (user + system, from /proc) and peak RSS (VmHWM) are its alone. The Helm
processes it runs are its children: their CPU is reported apart (the controller's reaped-children time), and every
Helm call is counted by subcommand through a wrapper named `helm` on the controller's DPF_TOOLS_DIR.

Phases, each timed from the bench's first API call to the state a user checks (polled every 0.5 s):
- apply: S DPUServices created (one values.image each: tiny:1) → every DPUService Ready at its generation, and
  in every DPU cluster S DaemonSets each with numberReady == desiredNumberScheduled == --nodes. Per DPUService:
  its create to its Ready (p50 / p99).
- idle (`--idle` seconds, default 60): nothing changes; the controller's CPU and Helm calls meanwhile.
- change: `spec.helmChart.values.image` tiny:1 → tiny:2 in one DPUService (upstream's flow is per service; `--change
  all`: in every one; several values: one phase each, in turn, each to the next image) → rolled: its release's
  deployed digest (the Helm release description) changed, its DaemonSets carry the new image and are rolled out
  (updated == ready == desired at the current generation), the DPUService Ready.
- delete: every DPUService deleted → all gone (the finalizer goes after `helm uninstall` in every cluster), no
  DaemonSet left, and `helm list` empty in every DPU cluster.

`--workers` and `--helm-concurrency` (the controller's flags) take several values; every combination runs from
scratch, one after another.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import functools
import http.server
import itertools
import json
import math
import os
import platform
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import urllib3
from kubernetes import client as k8s

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from dpf.controller.helm import find_helm  # noqa: E402
from dpf.controller.settings import QueueSettings, ServicesSettings  # noqa: E402
from dpf.lab.bed.kube import ControlPlane  # noqa: E402
from dpf.lab.bed.kwok import STAGES, ensure_kwok, node_manifest  # noqa: E402
from dpf.lab.bed.process import Child, free_port, wait_until  # noqa: E402
from dpf.lab.bed.tools import tool, tools_dir  # noqa: E402

NAMESPACE = "bench"
CHART = ROOT / "tests" / "services" / "charts" / "tiny"
POD_STAGES = Path(__file__).resolve().parent / "pod-stages.yaml"
GROUP, VERSION = "svc.dpu.nvidia.com", "v1alpha1"
PROV = "provisioning.dpu.nvidia.com"
ROLE = ("dpu.nvidia.com/role", "service")  # the Nodes' label the DPUServices' serviceDaemonSet selects
DESCRIPTION_PREFIX = "dpf-dpuservice "
TICKS = os.sysconf("SC_CLK_TCK")
POLL = 0.5

def say(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


# -- measurements of the controller process ------------------------------------------------------------------------

@dataclass(frozen=True)
class Cpu:
    own: float  # user + system of the controller process (all its threads)
    helm: float  # user + system of its reaped children: the Helm processes

    @staticmethod
    def of(pid: int) -> Cpu:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return Cpu((int(fields[11]) + int(fields[12])) / TICKS, (int(fields[13]) + int(fields[14])) / TICKS)

    def __sub__(self, other: Cpu) -> Cpu:
        return Cpu(self.own - other.own, self.helm - other.helm)


def status_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


class HelmCounter:
    """A tools directory whose `helm` appends its subcommand to a file and execs the real Helm (one `sh` more per
    call); the other tools are links to the real ones."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True)
        self.directory = directory
        self.log = directory / "calls.log"
        self.log.touch()
        real = find_helm()
        for entry in tools_dir().iterdir():
            if entry.name != "helm":
                (directory / entry.name).symlink_to(entry)
        wrapper = directory / "helm"
        # One short O_APPEND write per call: concurrent calls do not interleave.
        wrapper.write_text(f'#!/bin/sh\necho "$1" >> {self.log}\nexec {real} "$@"\n')
        wrapper.chmod(0o755)

    def counts(self) -> Counter[str]:
        return Counter(self.log.read_text().split())


# -- the parts ------------------------------------------------------------------------------------------------------

class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def chart_repo(work: Path) -> Iterator[tuple[str, Path]]:
    """`helm package` + `helm repo index` served on loopback HTTPS (as tests/services/test_dpuservice_helm.py does);
    yields (the repository URL, its certificate)."""
    repo, cert, key = work / "repo", work / "repo.crt", work / "repo.key"
    repo.mkdir(parents=True)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-addext", "basicConstraints=critical,CA:TRUE"],
                   check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(repo)))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    url = f"https://127.0.0.1:{server.server_address[1]}"
    helm = find_helm()
    subprocess.run([helm, "package", str(CHART), "--destination", str(repo)], check=True, capture_output=True)
    subprocess.run([helm, "repo", "index", str(repo), "--url", url], check=True, capture_output=True)
    thread = threading.Thread(target=server.serve_forever, name="chart-repo", daemon=True)
    thread.start()
    try:
        yield url, cert
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@contextmanager
def dpu_cluster(work: Path, name: str, nodes: int) -> Iterator[ControlPlane]:
    """A DPU cluster whose DaemonSets really roll out: kube-controller-manager's DaemonSet controller, a scheduler,
    and kwok playing the kubelets of `nodes` Nodes labelled for the services."""
    # The node lifecycle controller lifts the not-ready NoSchedule taint a new Node gets once kwok makes it Ready (a
    # DaemonSet's pods do not tolerate it); the service-account controller makes the `default` one pods need.
    controllers = ("garbage-collector-controller", "namespace-controller", "daemonset-controller",
                   "serviceaccount-controller", "node-lifecycle-controller")
    with ExitStack() as stack:
        kube = stack.enter_context(ControlPlane(work, name=name, controllers=controllers,
                                                extra_controller_manager_args=["--node-monitor-grace-period=20s"]))
        if nodes:
            kubeconfig = str(kube.kubeconfig)
            scheduler = Child(f"kube-scheduler ({name})", [
                tool("kube-scheduler"), f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}", "--leader-elect=false", "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}"], work / "kube-scheduler.log")
            stack.callback(scheduler.stop)
            stages = work / "kwok-stages.yaml"
            stages.write_text(STAGES.read_text().rstrip("\n") + "\n---\n" + POD_STAGES.read_text())
            kwok = Child(f"kwok ({name})", [
                ensure_kwok(), "--kubeconfig", kubeconfig, "--config", str(stages), "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake", "--node-ip=192.0.2.1",
                "--node-lease-duration-seconds=40"], work / "kwok.log")
            stack.callback(kwok.stop)
            core = k8s.CoreV1Api(kube.client)
            for i in range(nodes):
                core.create_node(node_manifest(f"{name}-n{i}", {ROLE[0]: ROLE[1]}))

            def nodes_ready() -> bool:  # Ready and schedulable
                listed = core.list_node().items
                return sum(any(c.type == "Ready" and c.status == "True"
                               for c in (n.status and n.status.conditions) or ())
                           and not (n.spec and n.spec.taints) for n in listed) == nodes

            wait_until(nodes_ready, 120, f"{nodes} kwok Nodes Ready in {name}", while_alive=[kwok, *kube.children])
        yield kube


def start_controller(work: Path, kubeconfig: Path, workers: int, helm_concurrency: int, cert: Path,
                     helm_tools: HelmCounter, log_level: str) -> Child:
    work.mkdir(parents=True, exist_ok=True)
    socket = work / "nodestate.sock"
    args = ["controller", "run", "--kubeconfig", str(kubeconfig), "--namespace", NAMESPACE, "--watch-namespace",
            NAMESPACE, "--listen", f"unix:{socket}", "--health-listen", "127.0.0.1:0", "--no-leader-elect",
            "--log-level", log_level, "--bfb-dir", str(work / "bfb"), "--workers", str(workers),
            "--helm-concurrency", str(helm_concurrency)]
    argv = [sys.executable, "-m", "dpf.cli", *args]
    env = {**os.environ, "SSL_CERT_FILE": str(cert), "DPF_TOOLS_DIR": str(helm_tools.directory)}
    child = Child("dpf-controller", argv, work / "controller.log", env=env)
    wait_until(socket.exists, 60, "the controller's NodeState socket", while_alive=[child])
    return child


def dpuservice(name: str, repo_url: str, image: str) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "DPUService",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"serviceID": name,
                     "helmChart": {"source": {"repoURL": repo_url, "chart": "tiny", "version": "0.1.0"},
                                   "values": {"image": image}},
                     "serviceDaemonSet": {"nodeSelector": {"nodeSelectorTerms": [{"matchExpressions": [
                         {"key": ROLE[0], "operator": "In", "values": [ROLE[1]]}]}]}}}}


# -- what a user checks ---------------------------------------------------------------------------------------------

def ready(obj: dict[str, Any]) -> bool:
    status = obj.get("status") or {}
    if status.get("observedGeneration") != obj["metadata"].get("generation"):
        return False
    return any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or ())


def rolled_out(ds: dict[str, Any], image: str, nodes: int) -> bool:
    status = ds.get("status") or {}
    return (ds["spec"]["template"]["spec"]["containers"][0]["image"] == image
            and status.get("observedGeneration") == ds["metadata"].get("generation")
            and status.get("desiredNumberScheduled") == nodes and status.get("numberReady") == nodes
            and status.get("updatedNumberScheduled", 0) == nodes)


def quantile(values: list[float], q: float) -> float:
    """Nearest rank: the smallest value with at least q of the values at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@dataclass
class Phase:
    name: str
    seconds: float = 0.0
    cpu: Cpu = Cpu(0.0, 0.0)
    hwm_mb: float = 0.0
    helm_calls: Counter[str] = field(default_factory=Counter)
    singles: list[float] = field(default_factory=list)

    def calls(self) -> str:
        return ", ".join(f"{n} {k}" for k, n in sorted(self.helm_calls.items())) or "none"


@dataclass
class Result:
    services: int
    clusters: int
    nodes: int
    workers: int
    helm_concurrency: int
    setup: float = 0.0
    phases: list[Phase] = field(default_factory=list)
    rss_mb: float = 0.0
    all_ready: bool = False


class Bench:
    def __init__(self, host: ControlPlane, dpus: list[ControlPlane], controller: Child, counter: HelmCounter,
                 nodes: int, timeout: float, alive: list[Child]) -> None:
        self.custom = k8s.CustomObjectsApi(host.client)
        self.apps = [k8s.AppsV1Api(d.client) for d in dpus]
        self.dpus = dpus
        self.controller = controller
        self.counter = counter
        self.nodes = nodes
        self.timeout = timeout
        self.alive = alive

    def services(self) -> list[dict[str, Any]]:
        listed = self.custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "dpuservices")
        return list(cast(dict[str, Any], listed)["items"])

    def daemonsets(self) -> list[list[dict[str, Any]]]:
        """Per DPU cluster, its DaemonSets as the API shows them (camelCase dicts)."""
        return [list(a.api_client.sanitize_for_serialization(a.list_namespaced_daemon_set(NAMESPACE).items))
                for a in self.apps]

    def measure(self, name: str, act: Callable[[], object], done: Callable[[], bool]) -> Phase:
        """Run `act`, then poll until `done`: the phase's wall time, the
        controller's CPU, its peak RSS so far, and the Helm calls made meanwhile."""
        pid = self.controller.proc.pid
        cpu0, calls0 = Cpu.of(pid), self.counter.counts()
        started = time.monotonic()
        act()
        last = started
        while True:
            for child in self.alive:
                if not child.alive():
                    raise RuntimeError(f"{child.name} exited; see {child.log}")
            try:
                if done():
                    break
            except (k8s.ApiException, urllib3.exceptions.HTTPError) as exc:  # an overloaded apiserver
                say(f"{name}: polling failed ({exc}); again")
            now = time.monotonic()
            if now - started > self.timeout:
                raise TimeoutError(f"{name}: not done after {self.timeout:.0f}s")
            if now - last > 15:
                last = now
                say(f"{name}: {now - started:.0f}s")
            time.sleep(POLL)
        phase = Phase(name, time.monotonic() - started, Cpu.of(pid) - cpu0, status_mb(pid, "VmHWM"),
                      self.counter.counts() - calls0)
        say(f"{name}: done in {phase.seconds:.1f}s; controller CPU {phase.cpu.own:.1f}s + Helm {phase.cpu.helm:.1f}s;"
            f" peak RSS {phase.hwm_mb:.0f} MB; Helm calls: {phase.calls()}")
        return phase

    def helm_description(self, cluster: int, release: str) -> str:
        out = subprocess.run([find_helm(), "status", release, "-n", NAMESPACE, "-o", "json", "--kubeconfig",
                              str(self.dpus[cluster].kubeconfig)], check=True, capture_output=True, text=True).stdout
        return str(json.loads(out)["info"].get("description", ""))

    def descriptions(self, releases: list[tuple[int, str]]) -> dict[tuple[int, str], str]:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            return dict(zip(releases, pool.map(lambda r: self.helm_description(*r), releases), strict=True))

    def helm_releases(self, cluster: int) -> list[str]:
        out = subprocess.run([find_helm(), "list", "-q", "--deployed", "--failed", "--pending", "--uninstalling",
                              "-n", NAMESPACE, "--kubeconfig", str(self.dpus[cluster].kubeconfig)],
                             check=True, capture_output=True, text=True).stdout
        return out.split()


def run_one(services: int, clusters: int, nodes: int, workers: int, helm_concurrency: int, changes: list[str],
            idle: float, timeout: float, log_level: str, work: Path) -> Result:
    result = Result(services, clusters, nodes, workers, helm_concurrency)
    names = [f"svc-{i:03d}" for i in range(services)]
    cluster_names = [f"dpu{c}" for c in range(clusters)]
    setup_started = time.monotonic()
    with ExitStack() as stack:
        host = stack.enter_context(ControlPlane(work / "host", name="svch"))
        dpus = [stack.enter_context(dpu_cluster(work / name, f"svc{name}", nodes)) for name in cluster_names]
        url, cert = stack.enter_context(chart_repo(work / "charts"))
        k8s.CoreV1Api(host.client).create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=NAMESPACE)))
        docs: list[dict[str, Any]] = []
        for name, dpu in zip(cluster_names, dpus, strict=True):
            docs += [{"apiVersion": "v1", "kind": "Secret",
                      "metadata": {"name": f"{name}-admin", "namespace": NAMESPACE},
                      "data": {"admin.conf": base64.b64encode(dpu.kubeconfig.read_bytes()).decode()}},
                     {"apiVersion": f"{PROV}/v1alpha1", "kind": "DPUCluster",
                      "metadata": {"name": name, "namespace": NAMESPACE},
                      "spec": {"type": "static", "maxNodes": 10, "version": "v1.37.2",
                               "kubeconfig": f"{name}-admin"}}]
        host.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}))
        counter = HelmCounter(work / "tools")
        controller = start_controller(work / "controller", host.kubeconfig, workers, helm_concurrency, cert, counter,
                                      log_level)
        stack.callback(controller.stop)
        alive = [controller, *host.children, *(c for d in dpus for c in d.children)]
        bench = Bench(host, dpus, controller, counter, nodes, timeout, alive)

        def clusters_ready() -> bool:
            listed = cast(dict[str, Any], bench.custom.list_namespaced_custom_object(PROV, "v1alpha1", NAMESPACE,
                                                                                      "dpuclusters"))
            return sum((d.get("status") or {}).get("phase") == "Ready" for d in listed["items"]) == clusters

        wait_until(clusters_ready, 120, "the DPUClusters Ready", while_alive=alive)
        result.setup = time.monotonic() - setup_started
        say(f"{services} DPUServices x {clusters} DPU clusters ({nodes} kwok Nodes each), workers {workers}, Helm "
            f"concurrency {helm_concurrency}: set up in {result.setup:.0f}s")

        # -- apply → all Ready
        created: dict[str, float] = {}
        ready_at: dict[str, float] = {}

        def apply() -> dict[str, float]:
            for name in names:
                bench.custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "dpuservices",
                                                             dpuservice(name, url, "tiny:1"))
                created[name] = time.monotonic()
            return created

        def all_ready(image: str, which: list[str]) -> Callable[[], bool]:
            def check() -> bool:
                now = time.monotonic()
                for obj in bench.services():
                    if ready(obj):
                        ready_at.setdefault(obj["metadata"]["name"], now)
                if not all(n in ready_at for n in which):
                    return False
                for cluster, found in zip(cluster_names, bench.daemonsets(), strict=True):
                    by_name = {d["metadata"]["name"]: d for d in found}
                    for name in which:
                        ds = by_name.get(f"{cluster}-{name}")
                        if ds is None or not rolled_out(ds, image, nodes):
                            return False
                return True
            return check

        apply_phase = bench.measure("apply", apply, all_ready("tiny:1", names))
        apply_phase.singles = [ready_at[n] - created[n] for n in names]
        result.phases.append(apply_phase)
        if idle:  # what the controller costs while nothing changes
            until = time.monotonic() + idle
            result.phases.append(bench.measure(f"idle {idle:.0f} s", lambda: None, lambda: time.monotonic() >= until))

        # -- one value changed → rolled (each --change in turn, each a new image)
        for step, change in enumerate(changes, start=2):
            result.phases.append(change_phase(bench, change, names, cluster_names, f"tiny:{step}",
                                              created, ready_at, all_ready))

        # -- delete → all releases uninstalled
        def delete() -> dict[str, float]:
            for name in names:
                bench.custom.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "dpuservices", name)
            return {}

        def gone() -> bool:
            return not bench.services() and not any(bench.daemonsets())

        result.phases.append(bench.measure("delete", delete, gone))
        left = {name: bench.helm_releases(c) for c, name in enumerate(cluster_names)}
        if any(left.values()):
            raise RuntimeError(f"releases left after delete: {left}")
        result.rss_mb = status_mb(controller.proc.pid, "VmRSS")
        result.all_ready = True
        return result


def change_phase(bench: Bench, change: str, names: list[str], cluster_names: list[str], image: str,
                 created: dict[str, float], ready_at: dict[str, float],
                 all_ready: Callable[[str, list[str]], Callable[[], bool]]) -> Phase:
    """`values.image` set to `image` in one DPUService or in all, until rolled; the releases' digests checked."""
    changed = names[:1] if change == "one" else names
    releases = [(c, f"{cluster}-{n}") for c, cluster in enumerate(cluster_names) for n in changed]
    before = bench.descriptions(releases)
    ready_at.clear()

    def patch() -> None:
        for name in changed:
            bench.custom.patch_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "dpuservices", name,
                                                        {"spec": {"helmChart": {"values": {"image": image}}}})
            created[name] = time.monotonic()

    phase = bench.measure(f"change ({change})", patch, all_ready(image, changed))
    phase.singles = [ready_at[n] - created[n] for n in changed]
    after = bench.descriptions(releases)
    unchanged = [r for r in releases if after[r] == before[r] or not after[r].startswith(DESCRIPTION_PREFIX)]
    if unchanged:
        raise RuntimeError(f"rolled but the release digest did not change: {unchanged}")
    return phase


# -- the report -----------------------------------------------------------------------------------------------------

def table(results: list[Result]) -> str:
    lines = ["| services x clusters (kwok Nodes each) | workers | Helm concurrency | phase | wall s | per DPUService "
             "p50 / p99 s | controller CPU s (% of a core) | Helm CPU s | controller peak RSS MB | Helm calls |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for p in r.phases:
            singles = f"{quantile(p.singles, 0.5):.1f} / {quantile(p.singles, 0.99):.1f}" if p.singles else "-"
            lines.append(f"| {r.services} x {r.clusters} ({r.nodes}) | {r.workers} | {r.helm_concurrency} | {p.name} | "
                         f"{p.seconds:.1f} | {singles} | {p.cpu.own:.1f} ({100 * p.cpu.own / p.seconds:.0f} %) | "
                         f"{p.cpu.helm:.1f} | {p.hwm_mb:.0f} | {p.calls()} |")
    lines.append("")
    lines.extend(f"- {r.services} x {r.clusters}, workers {r.workers}, Helm concurrency {r.helm_concurrency}: setup "
                 f"{r.setup:.0f} s; {'all Ready, rolled and uninstalled' if r.all_ready else 'NOT finished'}; "
                 f"controller RSS at the end {r.rss_mb:.0f} MB" for r in results)
    return "\n".join(lines)


def record(text: str, argv: list[str]) -> None:
    """Append a run to the `## services` section of bench/RESULTS.md (made at the end when missing)."""
    results = ROOT / "bench" / "RESULTS.md"
    body = results.read_text()
    run = (f"### {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, load average at the end "
           f"{os.getloadavg()[0]:.1f}\n\n`.venv/bin/python bench/services/run.py {' '.join(argv)}` on "
           f"{platform.node()} ({os.cpu_count()} cores)\n\n{text}\n")
    heading = "\n## services\n"
    if heading not in body:
        body = body.rstrip("\n") + "\n" + heading + "\n"
    head, rest = body.split(heading, 1)
    nxt = rest.find("\n## ")
    section, tail = (rest, "") if nxt < 0 else (rest[:nxt + 1], rest[nxt + 1:])
    results.write_text(head + heading + section.rstrip("\n") + "\n\n" + run + ("\n" + tail if tail else ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--services", type=int, default=50, help="DPUServices (default 50)")
    parser.add_argument("--clusters", type=int, default=2, help="DPU clusters (default 2)")
    parser.add_argument("--nodes", type=int, default=2, help="kwok Nodes per DPU cluster (default 2; 0: none)")
    parser.add_argument("--change", choices=["one", "all"], nargs="+", default=["one"],
                        help="change the value in one DPUService (default) or in all of them; several: in turn")
    parser.add_argument("--workers", type=int, nargs="+", default=[QueueSettings.workers],
                        help=f"the controller's --workers (default {QueueSettings.workers}); several: one run each")
    parser.add_argument("--helm-concurrency", type=int, nargs="+", default=[ServicesSettings.helm_concurrency],
                        help="the controller's --helm-concurrency (default "
                             f"{ServicesSettings.helm_concurrency}); several: one run each")
    parser.add_argument("--idle", type=float, default=60.0,
                        help="seconds of nothing changing after all Ready, measured too (default 60; 0: none)")
    parser.add_argument("--timeout", type=float, default=1200.0, help="per phase, seconds")
    parser.add_argument("--log-level", default="warning", help="the controller's (default warning)")
    parser.add_argument("--record", action="store_true", help="append the table to bench/RESULTS.md")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="work under DIR/<setting> and keep it (logs)")
    args = parser.parse_args()
    if not shutil.which("openssl"):
        parser.error("openssl is needed for the chart repository's certificate")
    results = []
    for workers, concurrency in itertools.product(args.workers, args.helm_concurrency):
        with tempfile.TemporaryDirectory(prefix="dpf-bench-services-") as tmp:
            work = Path(tmp) if args.keep is None else args.keep / f"w{workers}-h{concurrency}"
            results.append(run_one(args.services, args.clusters, args.nodes, workers, concurrency, args.change,
                                   args.idle, args.timeout, args.log_level, work))
        print(table(results), flush=True)
    if args.record:
        record(table(results), sys.argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
