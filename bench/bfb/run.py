#!/usr/bin/env python3
"""BFB download throughput, side by side: dpf's downloader vs curl vs wget, same file, same server, one run.

    .venv/bin/python bench/bfb/run.py [--size-mib 512] [--rounds 3] [--record]

A BFB image is 1-2 GB and the controller downloads it on the same event loop that renews its leader lease,
so two numbers matter: throughput (against the standard tools as the bar) and how long the event loop is
blocked meanwhile (sampled every 10 ms by a probe task). The file is served by an aiohttp server in a separate
process (sendfile), on loopback; every tool writes into the same directory and ends with the file on disk
(ours also fsyncs and renames, as in production; curl and wget are followed by an fsync of their file so the
comparison is fair). Rounds rotate the order. `--record` writes the table into bench/RESULTS.md (## bfb).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from dpf.controller.provisioning.download import download
from dpf.lab.bed.process import Child, free_port, wait_until

REPO = Path(__file__).resolve().parents[2]
SERVER = """
import sys
from aiohttp import web
root, port = sys.argv[1], int(sys.argv[2])
app = web.Application()
app.router.add_static("/", root)
web.run_app(app, host="127.0.0.1", port=port, print=None)
"""


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


async def run_dpf(url: str, out: Path) -> tuple[float, float, float, float]:
    lags: list[float] = []
    stop = asyncio.Event()

    async def probe() -> None:
        while not stop.is_set():
            before = time.monotonic()
            await asyncio.sleep(0.01)
            lags.append(max(0.0, time.monotonic() - before - 0.01))

    prober = asyncio.create_task(probe())
    cpu0, started = self_cpu(), time.monotonic()
    await download(url, out, out.with_name(f".{out.name}.bench.partial"), stall_timeout=30.0, label="bench")
    seconds, cpu = time.monotonic() - started, self_cpu() - cpu0
    stop.set()
    await prober
    lags.sort()
    return seconds, cpu, lags[int(0.99 * (len(lags) - 1))] * 1000, lags[-1] * 1000


async def bench(size_mib: int, rounds: int, work: Path) -> dict[str, Samples]:
    served, target = work / "served", work / "bfb"
    served.mkdir()
    target.mkdir()
    source = served / "bf-bundle.bfb"
    with source.open("wb") as f:
        for _ in range(size_mib):
            f.write(os.urandom(1 << 20))
    port = free_port()
    server = Child("bfb http server", [sys.executable, "-c", SERVER, str(served), str(port)], work / "server.log")
    try:
        wait_until(lambda: _answers(port), 15, "the bench HTTP server", while_alive=[server])
        url = f"http://127.0.0.1:{port}/bf-bundle.bfb"
        results = {name: Samples() for name in ("dpf (aiohttp, fsync + rename)", "curl", "wget")}
        tools = list(results)
        for r in range(rounds):
            for name in tools[r % 3:] + tools[:r % 3]:
                out = target / f"{r}-{name.split()[0]}.bfb"
                s = results[name]
                if name.startswith("dpf"):
                    seconds, cpu, p99, worst = await run_dpf(url, out)
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


def _answers(port: int) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1):
            return True
    except OSError as exc:
        return "HTTP Error" in str(exc)


def table(results: dict[str, Samples], size_mib: int, rounds: int) -> str:
    lines = [f"| tool | MiB/s (median of {rounds}) | seconds | CPU s | event-loop lag p99 / max ms |",
             "|---|---|---|---|---|"]
    for name, s in results.items():
        med = statistics.median(s.seconds)
        lag = (f"{statistics.median(s.lag_p99_ms):.1f} / {max(s.lag_max_ms):.1f}" if s.lag_p99_ms else "-")
        lines.append(f"| {name} | {size_mib / med:.0f} | {med:.2f} | {statistics.median(s.cpu):.2f} | {lag} |")
    return "\n".join(lines)


def record(text: str, argv: list[str]) -> None:
    results = REPO / "bench" / "RESULTS.md"
    body = results.read_text()
    section = (f"## bfb\n\n`.venv/bin/python bench/bfb/run.py {' '.join(argv)}` on {platform.node()} "
               f"({os.cpu_count()} cores), {time.strftime('%Y-%m-%d')}, load average before the run "
               f"{os.getloadavg()[0]:.1f}. One file served over loopback by aiohttp (sendfile) in its own process; "
               f"every tool ends with the file fsynced on disk.\n\n{text}\n")
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
    parser.add_argument("--record", action="store_true", help="write the table into bench/RESULTS.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dpf-bench-bfb-") as tmp:
        results = asyncio.run(bench(args.size_mib, args.rounds, Path(tmp)))
    text = table(results, args.size_mib, args.rounds)
    print(text)
    if args.record:
        record(text, sys.argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
