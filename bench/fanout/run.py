"""Fan-out benchmark: time from a CR write to the affected agents' ACK, controller CPU and RSS, against the
upstream way (every node client watching the apiserver itself). Not a test; prints a table.

    .venv/bin/python bench/fanout/run.py --agents 100 1000 --procs 4

Per N: a fresh bed control plane (etcd + kube-apiserver), one ServiceInterface per node, the controller
as a subprocess (`dpf controller run`, mTLS), N agents over --procs processes. Scenarios:
  burst   every one of the N ServiceInterfaces is patched (32 writes in flight); latency per object =
          agent apply time (the ACK is sent right after) - start of that object's PATCH request.
  single  one object patched at a time, `--singles` samples.
The same writes are then repeated with N direct apiserver watchers instead of agents.
"""

# ruff: noqa: ASYNC109, ASYNC210, ASYNC220, ASYNC230 - a benchmark driver: its few blocking calls sit between
# measurements, never inside one.
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from dpf.controller import pki  # noqa: E402
from dpf.controller.kube import clients  # noqa: E402
from dpf.controller.kube.rest import SECRET, Kind, Rest  # noqa: E402
from dpf.controller.reconcilers.kinds import DPU_CLUSTER, SERVICE_INTERFACE  # noqa: E402
from dpf.lab.bed.kube import ControlPlane  # noqa: E402
from dpf.lab.bed.process import free_port  # noqa: E402

NAMESPACE = "bench"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mb(pid: int, key: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Result:
    mode: str
    n: int
    burst: list[float] = field(default_factory=list)
    burst_total: list[float] = field(default_factory=list)
    single: list[float] = field(default_factory=list)
    server_cpu: float = 0.0  # % of one core during the measured writes
    server_rss: float = 0.0
    server_hwm: float = 0.0
    apiserver_cpu: float = 0.0
    apiserver_rss: float = 0.0
    connect_seconds: float = 0.0


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


class Observations:
    """Reads the clients' JSON-lines files incrementally."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files
        self.offsets = dict.fromkeys(files, 0)
        self.seen: dict[tuple[str, str], float] = {}
        self.ready = 0

    def poll(self) -> None:
        for path in self.files:
            if not path.exists():
                continue
            with open(path) as f:
                f.seek(self.offsets[path])
                data = f.read()
            complete = data[: data.rfind("\n") + 1]
            self.offsets[path] += len(complete)
            for line in complete.splitlines():
                record = json.loads(line)
                if "ready" in record:
                    self.ready += record["ready"]
                else:
                    self.seen.setdefault((record["node"], record["value"]), record["t"])

    async def wait(self, keys: list[tuple[str, str]], timeout: float) -> dict[tuple[str, str], float]:
        deadline = time.monotonic() + timeout
        while True:
            self.poll()
            missing = [k for k in keys if k not in self.seen]
            if not missing:
                return {k: self.seen[k] for k in keys}
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(missing)} of {len(keys)} observations missing, e.g. {missing[:3]}")
            await asyncio.sleep(0.02)


async def write_round(rest: Rest, nodes: list[str], value: str, parallel: int = 32) -> dict[str, float]:
    started: dict[str, float] = {}
    gate = asyncio.Semaphore(parallel)

    async def one(node: str) -> None:
        async with gate:
            started[node] = time.time()
            await rest.merge_patch(SERVICE_INTERFACE, f"si-{node}", {"spec": {"physical": {"interfaceName": value}}},
                                   NAMESPACE)

    await asyncio.gather(*(one(n) for n in nodes))
    return started


async def measure(rest: Rest, nodes: list[str], obs: Observations, result: Result, rounds: int, singles: int,
                  tag: str, server_pid: int, apiserver_pid: int) -> None:
    cpu0, api0, t0 = cpu_seconds(server_pid), cpu_seconds(apiserver_pid), time.monotonic()
    for r in range(rounds):
        value = f"{tag}b{r}"
        started = await write_round(rest, nodes, value)
        seen = await obs.wait([(n, value) for n in nodes], timeout=300)
        result.burst += [seen[(n, value)] - started[n] for n in nodes]
        result.burst_total.append(max(seen.values()) - min(started.values()))
    for i in range(singles):
        node = random.choice(nodes)
        value = f"{tag}s{i}"
        started = await write_round(rest, [node], value)
        seen = await obs.wait([(node, value)], timeout=60)
        result.single.append(seen[(node, value)] - started[node])
    elapsed = time.monotonic() - t0
    result.server_cpu = 100 * (cpu_seconds(server_pid) - cpu0) / elapsed
    result.apiserver_cpu = 100 * (cpu_seconds(apiserver_pid) - api0) / elapsed
    result.server_rss, result.server_hwm = rss_mb(server_pid), rss_mb(server_pid, "VmHWM")
    result.apiserver_rss = rss_mb(apiserver_pid)


def spawn_clients(mode: str, nodes: list[str], procs: int, work: Path, extra: list[str]) -> tuple[
        list[subprocess.Popen[bytes]], list[Path]]:
    children, files = [], []
    for i in range(procs):
        share = nodes[i::procs]
        if not share:
            continue
        out = work / f"{mode}-{i}.jsonl"
        files.append(out)
        log = open(work / f"{mode}-{i}.log", "wb")  # noqa: SIM115 - closed with the process
        children.append(subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("clients.py")), "--mode", mode, "--out", str(out),
             "--nodes", *share, *extra], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT))
    return children, files


def stop(children: list[subprocess.Popen[bytes]]) -> None:
    for child in children:
        child.terminate()
    for child in children:
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


async def bench(n: int, procs: int, rounds: int, singles: int, skip_watch: bool) -> list[Result]:
    work = Path(tempfile.mkdtemp(prefix=f"dpf-fanout-{n}-"))
    results = []
    with ControlPlane(work / "kube", name="fanout") as cp:
        rest = await clients.from_kubeconfig_file(cp.kubeconfig, "bench", pool_size=64)
        try:
            await rest.create(Kind("", "v1", "namespaces", "Namespace", namespaced=False),
                              {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
            await rest.create(SECRET, {"apiVersion": "v1", "kind": "Secret",
                                       "metadata": {"name": "dpu-kubeconfig", "namespace": NAMESPACE},
                                       "data": {"admin.conf": __import__("base64").b64encode(
                                           cp.kubeconfig.read_bytes()).decode()}}, NAMESPACE)
            await rest.create(DPU_CLUSTER, {"apiVersion": DPU_CLUSTER.api_version, "kind": "DPUCluster",
                                            "metadata": {"name": "dpu", "namespace": NAMESPACE},
                                            "spec": {"type": "static", "version": "v1.37.2",
                                                     "kubeconfig": "dpu-kubeconfig"}}, NAMESPACE)
            nodes = [f"dpu-{i:04d}" for i in range(n)]
            gate = asyncio.Semaphore(32)

            async def create(node: str) -> None:
                async with gate:
                    await rest.create(SERVICE_INTERFACE, {
                        "apiVersion": SERVICE_INTERFACE.api_version, "kind": "ServiceInterface",
                        "metadata": {"name": f"si-{node}", "namespace": NAMESPACE, "labels": {"bench.dpf/node": node}},
                        "spec": {"node": node, "interfaceType": "physical", "physical": {"interfaceName": "init"}}},
                        NAMESPACE)

            await asyncio.gather(*(create(node) for node in nodes))
            apiserver_pid = next(c.pid for c in cp.children if c.name.startswith("kube-apiserver"))

            # ---- dpf: controller + N agents over gRPC/mTLS -----------------------------------------------
            port, health = free_port(), free_port()
            log = open(work / "controller.log", "wb")  # noqa: SIM115
            controller = subprocess.Popen(
                [sys.executable, "-m", "dpf.cli", "controller", "run", "--kubeconfig", str(cp.kubeconfig),
                 "--namespace", NAMESPACE, "--watch-namespace", NAMESPACE, "--listen", f"127.0.0.1:{port}",
                 "--health-listen", f"127.0.0.1:{health}", "--log-level", "warning"],
                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
            children: list[subprocess.Popen[bytes]] = []
            try:
                deadline = time.monotonic() + 60
                while True:
                    try:
                        with urllib.request.urlopen(f"http://127.0.0.1:{health}/readyz", timeout=1) as answer:
                            if b"leader" in answer.read():
                                break
                    except OSError:
                        pass
                    if time.monotonic() > deadline or controller.poll() is not None:
                        raise RuntimeError(f"controller did not become ready; see {work / 'controller.log'}")
                    await asyncio.sleep(0.2)
                ca = await pki.ensure_ca(rest, NAMESPACE, "dpf-controller-ca")
                for node in nodes:
                    pair = ca.issue_node(node, "dpu")
                    d = work / "certs" / node
                    d.mkdir(parents=True)
                    (d / "ca.crt").write_bytes(ca.cert_pem)
                    (d / "tls.crt").write_bytes(pair.cert_pem)
                    (d / "tls.key").write_bytes(pair.key_pem)
                result = Result("dpf NodeState (gRPC, mTLS)", n)
                t0 = time.monotonic()
                children, files = spawn_clients("grpc", nodes, procs, work,
                                                ["--endpoint", f"127.0.0.1:{port}", "--certs", str(work / "certs"),
                                                 "--state", str(work / "state")])
                obs = Observations(files)
                await obs.wait([(node, "init") for node in nodes], timeout=600)
                while obs.ready < n:
                    obs.poll()
                    await asyncio.sleep(0.1)
                result.connect_seconds = time.monotonic() - t0
                await asyncio.sleep(2.0)  # let the connection storm settle before measuring
                await measure(rest, nodes, obs, result, rounds, singles, "g", controller.pid, apiserver_pid)
                results.append(result)
            finally:
                stop(children)
                controller.terminate()
                controller.wait(20)

            # ---- upstream way: N direct apiserver watches ------------------------------------------------
            if not skip_watch:
                result = Result("direct apiserver watches", n)
                t0 = time.monotonic()
                children, files = spawn_clients("watch", nodes, procs, work,
                                                ["--kubeconfig", str(cp.kubeconfig), "--namespace", NAMESPACE])
                try:
                    obs = Observations(files)
                    while obs.ready < n:
                        obs.poll()
                        if any(c.poll() is not None for c in children):
                            raise RuntimeError(f"a watch client died; see {work}/watch-*.log")
                        await asyncio.sleep(0.1)
                    result.connect_seconds = time.monotonic() - t0
                    await asyncio.sleep(2.0)
                    await measure(rest, nodes, obs, result, rounds, singles, "w", apiserver_pid, apiserver_pid)
                    result.server_rss = result.server_hwm = 0.0
                    result.server_cpu = 0.0
                    results.append(result)
                finally:
                    stop(children)
        finally:
            await rest.close()
    print(f"(work dir with logs: {work})")
    return results


def table(results: list[Result]) -> str:
    ms = 1000
    lines = ["| clients | N | connect+sync s | burst p50 ms | burst p99 ms | burst all-ACKed s | single p50 ms | "
             "single p99 ms | controller CPU % | controller RSS MB (peak) | apiserver CPU % | apiserver RSS MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        controller = (f"{r.server_cpu:.0f} | {r.server_rss:.0f} ({r.server_hwm:.0f})" if r.server_rss else "- | -")
        burst = f"{pct(r.burst, 50) * ms:.0f} | {pct(r.burst, 99) * ms:.0f}"
        lines.append(
            f"| {r.mode} | {r.n} | {r.connect_seconds:.1f} | {burst} | "
            f"{statistics.median(r.burst_total):.2f} | {pct(r.single, 50) * ms:.0f} | {pct(r.single, 99) * ms:.0f} | "
            f"{controller} | {r.apiserver_cpu:.0f} | {r.apiserver_rss:.0f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, nargs="+", default=[100], help="values of N")
    parser.add_argument("--procs", type=int, default=4, help="client processes N is spread over")
    parser.add_argument("--rounds", type=int, default=3, help="burst rounds (each patches all N objects)")
    parser.add_argument("--singles", type=int, default=30, help="single-write samples")
    parser.add_argument("--skip-watch", action="store_true", help="do not run the direct-watch comparison")
    args = parser.parse_args()
    results: list[Result] = []
    for n in args.agents:
        results += asyncio.run(bench(n, args.procs, args.rounds, args.singles, args.skip_watch))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
