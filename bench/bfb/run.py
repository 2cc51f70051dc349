#!/usr/bin/env python3
"""BFB download throughput, side by side: dpf's two BFB transfers vs curl vs wget, same file, one run.

    .venv/bin/python bench/bfb/run.py [--size-mib 512] [--rounds 3] [--baseline REV] [--record]

A BFB image is 1-2 GB. Two transfers of ours move it:
- the controller downloads it from the BFB's URL (`controller/provisioning/download.py`), on the same event loop
  that renews its leader lease;
- a host agent without the shared BFB directory streams it from the controller's BFBStore over gRPC
  (`agent/host/bfb.py` reading `controller/server/bfb_store.py`), on the agent's event loop, with its sha256 check.
So two numbers matter: throughput (against the standard tools as the bar) and how long the event loop is blocked
meanwhile (sampled every 10 ms by a probe task). The file is served on loopback, over HTTP by an aiohttp server
(sendfile) and over gRPC by the real BFBStore servicer (plaintext: the bench measures our code, not TLS), each in
a process of its own; every tool writes into the same directory and ends with the file on disk (the controller's
download fsyncs and renames, as in production; curl and wget are followed by an fsync of their file; the agent's
stream renames without fsync, as in production, after its sha256 check). Rounds rotate the order.
`--baseline REV` adds the controller's download as it was at git revision REV (an A/B in the same run).
`--record` writes the table into bench/RESULTS.md (## bfb).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import importlib.util
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import grpc

from dpf.agent.host.bfb import BfbFiles, ControllerFetcher
from dpf.controller.provisioning.download import download
from dpf.lab.bed.process import Child, free_port, wait_until
from dpf.proto.v1 import provisioning_pb2 as ppb

REPO = Path(__file__).resolve().parents[2]
SERVER = """
import sys
from aiohttp import web
root, port = sys.argv[1], int(sys.argv[2])
app = web.Application()
app.router.add_static("/", root)
web.run_app(app, host="127.0.0.1", port=port, print=None)
"""
GRPC_SERVER = """
import asyncio, sys
from pathlib import Path
import grpc
from dpf.controller.server.bfb_store import register
async def main():
    server = grpc.aio.server()
    register(server, Path(sys.argv[1]), insecure=True)
    server.add_insecure_port(f"127.0.0.1:{sys.argv[2]}")
    await server.start()
    await server.wait_for_termination()
asyncio.run(main())
"""
CONTROLLER = "dpf controller download (HTTP, fsync + rename)"
AGENT = "dpf host agent stream (BFBStore gRPC, sha256)"
BASELINE = "dpf controller download at {rev}"


@dataclass
class Samples:
    seconds: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    lag_p99_ms: list[float] = field(default_factory=list)
    lag_max_ms: list[float] = field(default_factory=list)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def run_tool(argv: list[str], out: Path) -> tuple[float, float]:
    cpu0, started = children_cpu(), time.monotonic()
    proc = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if await proc.wait() != 0:
        raise RuntimeError(f"{argv[0]} failed")
    await asyncio.to_thread(fsync_file, out)
    return time.monotonic() - started, children_cpu() - cpu0


async def run_ours(transfer: Callable[[], Awaitable[object]]) -> tuple[float, float, float, float]:
    lags: list[float] = []
    stop = asyncio.Event()

    async def probe() -> None:
        while not stop.is_set():
            before = time.monotonic()
            await asyncio.sleep(0.01)
            lags.append(max(0.0, time.monotonic() - before - 0.01))

    prober = asyncio.create_task(probe())
    cpu0, started = self_cpu(), time.monotonic()
    await transfer()
    seconds, cpu = time.monotonic() - started, self_cpu() - cpu0
    stop.set()
    await prober
    lags.sort()
    return seconds, cpu, lags[int(0.99 * (len(lags) - 1))] * 1000, lags[-1] * 1000


def load_baseline(rev: str, work: Path) -> ModuleType:
    source = subprocess.run(["git", "show", f"{rev}:controller/provisioning/download.py"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout
    path = work / "baseline_download.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("baseline_download", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


async def agent_stream(endpoint: str, directory: Path, source: ppb.BFBSource) -> None:
    files = BfbFiles(directory, ControllerFetcher([endpoint], grpc.aio.insecure_channel))
    state = await files.ensure(source)
    if not state.ready:
        raise RuntimeError(f"the agent's stream failed: {state.error}")


async def bench(size_mib: int, rounds: int, work: Path, baseline: str | None) -> dict[str, Samples]:
    served, target = work / "served", work / "bfb"
    served.mkdir()
    target.mkdir()
    source = served / "bf-bundle.bfb"
    digest = hashlib.sha256()
    with source.open("wb") as f:
        for _ in range(size_mib):
            block = os.urandom(1 << 20)
            digest.update(block)
            f.write(block)
    bfb = ppb.BFBSource(file_name=source.name, size=source.stat().st_size, sha256=digest.hexdigest())
    old = load_baseline(baseline, work) if baseline else None
    port, grpc_port = free_port(), free_port()
    server = Child("bfb http server", [sys.executable, "-c", SERVER, str(served), str(port)], work / "server.log")
    store = Child("bfb grpc server", [sys.executable, "-c", GRPC_SERVER, str(served), str(grpc_port)],
                  work / "grpc.log")
    try:
        wait_until(lambda: _answers(port), 15, "the bench HTTP server", while_alive=[server])
        wait_until(lambda: _listens(grpc_port), 15, "the bench BFBStore server", while_alive=[store])
        url = f"http://127.0.0.1:{port}/bf-bundle.bfb"
        names = [CONTROLLER, AGENT, "curl", "wget"] + ([BASELINE.format(rev=baseline)] if old else [])
        results = {name: Samples() for name in names}
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                out = target / f"{r}-{names.index(name)}.bfb"
                s = results[name]
                if name in (CONTROLLER, AGENT) or name.startswith("dpf controller download at"):
                    if name == AGENT:
                        out = target / f"agent-{r}" / bfb.file_name
                        out.parent.mkdir()
                        transfer = lambda out=out: agent_stream(f"127.0.0.1:{grpc_port}", out.parent, bfb)  # noqa: E731
                    else:
                        get = download if name == CONTROLLER else old.download  # type: ignore[union-attr]
                        transfer = lambda out=out, get=get: get(  # noqa: E731
                            url, out, out.with_name(f".{out.name}.bench.partial"), stall_timeout=30.0, label="bench")
                    seconds, cpu, p99, worst = await run_ours(transfer)
                    s.lag_p99_ms.append(p99)
                    s.lag_max_ms.append(worst)
                elif name == "curl":
                    seconds, cpu = await run_tool(["curl", "-sS", "--fail", "-o", str(out), url], out)
                else:
                    seconds, cpu = await run_tool(["wget", "-q", "-O", str(out), url], out)
                if out.stat().st_size != source.stat().st_size:
                    raise RuntimeError(f"{name}: {out} has {out.stat().st_size} bytes")
                s.seconds.append(seconds)
                s.cpu.append(cpu)
                out.unlink()
        return results
    finally:
        server.stop()
        store.stop()


def _listens(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _answers(port: int) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1):
            return True
    except OSError as exc:
        return "HTTP Error" in str(exc)


def table(results: dict[str, Samples], size_mib: int, rounds: int) -> str:
    lines = [f"| tool | MiB/s (median of {rounds}) | / curl | seconds | CPU s | event-loop lag p99 / max ms |",
             "|---|---|---|---|---|---|"]
    curl = statistics.median(results["curl"].seconds)
    for name, s in results.items():
        med = statistics.median(s.seconds)
        lag = (f"{statistics.median(s.lag_p99_ms):.1f} / {max(s.lag_max_ms):.1f}" if s.lag_p99_ms else "-")
        lines.append(f"| {name} | {size_mib / med:.0f} | {curl / med:.2f} | {med:.2f} | "
                     f"{statistics.median(s.cpu):.2f} | {lag} |")
    return "\n".join(lines)


def record(text: str, argv: list[str]) -> None:
    results = REPO / "bench" / "RESULTS.md"
    body = results.read_text()
    section = (f"## bfb\n\n`.venv/bin/python bench/bfb/run.py {' '.join(argv)}` on {platform.node()} "
               f"({os.cpu_count()} cores), {time.strftime('%Y-%m-%d')}, load average before the run "
               f"{os.getloadavg()[0]:.1f}. One file served over loopback, over HTTP by aiohttp (sendfile) and over "
               f"gRPC by the BFBStore servicer (plaintext), each in its own process; every tool but the agent's stream "
               f"ends with the file fsynced on disk. `/ curl` is curl's median time over the tool's.\n\n{text}\n")
    if "## bfb\n" in body:
        head, rest = body.split("## bfb\n", 1)
        tail = rest[rest.find("\n## "):] if "\n## " in rest else ""
        body = head + section + tail
    else:
        body = body.rstrip("\n") + "\n\n" + section
    results.write_text(body)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=512, help="size of the served BFB file")
    parser.add_argument("--rounds", type=int, default=3, help="downloads per tool (order rotates)")
    parser.add_argument("--baseline", metavar="REV", help="also run the controller's download as of this git revision")
    parser.add_argument("--record", action="store_true", help="write the table into bench/RESULTS.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dpf-bench-bfb-") as tmp:
        results = asyncio.run(bench(args.size_mib, args.rounds, Path(tmp), args.baseline))
    text = table(results, args.size_mib, args.rounds)
    print(text)
    if args.record:
        record(text, sys.argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
