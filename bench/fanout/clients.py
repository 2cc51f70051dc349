"""Simulated node clients for the fan-out benchmark, run as a separate process (several in parallel).

  grpc mode:  N agent runtimes (the real dpf.agent.runtime, mTLS) with a handler that records when each
              ServiceInterface value was applied (the ACK follows immediately).
  watch mode: N direct apiserver watches (kubernetes_asyncio), each for one node's objects by label, the
              way upstream's per-node components watch their CRs.

Each observed (node, interfaceName, unix time) is appended to --out as a JSON line; "ready" lines tell
the driver when every client is connected and in sync.
"""

# ruff: noqa: ASYNC110 - the simulated clients poll their own readiness once, before any measurement
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dpf.agent.runtime.handlers import Handler, Reporter
from dpf.agent.runtime.runtime import AgentRuntime
from dpf.agent.runtime.settings import AgentSettings, TLSFiles
from dpf.proto.v1 import sfc_pb2


class Recorder:
    def __init__(self, path: Path) -> None:
        self.file = open(path, "a", buffering=1)  # noqa: SIM115 - lives as long as the process

    def seen(self, node: str, value: str) -> None:
        self.file.write(json.dumps({"node": node, "value": value, "t": time.time()}) + "\n")


class BenchHandler(Handler):
    message_class = sfc_pb2.ServiceInterface

    def __init__(self, node: str, recorder: Recorder) -> None:
        self.node, self.recorder = node, recorder

    async def apply(self, desired: Mapping[str, Any], changed: set[str], removed: set[str],
                    reporter: Reporter) -> None:
        for name in changed:
            self.recorder.seen(self.node, desired[name][1].physical.interface_name)


async def grpc_clients(args: argparse.Namespace, recorder: Recorder) -> None:
    runtimes = []
    for node in args.nodes:
        certs = args.certs / node
        settings = AgentSettings(node=node, role="dpu", endpoints=(args.endpoint,), state_dir=args.state / node,
                                 tls=TLSFiles(certs / "ca.crt", certs / "tls.crt", certs / "tls.key"),
                                 backoff_base=0.5, backoff_max=5.0, connect_timeout=30.0, resync_period=0)
        runtimes.append(AgentRuntime(settings, [BenchHandler(node, recorder)]))
    tasks = [asyncio.create_task(r.run()) for r in runtimes]
    while not all(r.connected.is_set() and r.session and r.session.acked for r in runtimes):
        await asyncio.sleep(0.2)
    recorder.file.write(json.dumps({"ready": len(runtimes)}) + "\n")
    await asyncio.gather(*tasks)


async def watch_clients(args: argparse.Namespace, recorder: Recorder) -> None:
    from kubernetes_asyncio import config
    from kubernetes_asyncio.client import ApiClient, Configuration

    from dpf.controller.kube.rest import Kind, Rest

    kind = Kind("svc.dpu.nvidia.com", "v1alpha1", "serviceinterfaces", "ServiceInterface")
    configuration = Configuration()
    await config.load_kube_config(config_file=str(args.kubeconfig), client_configuration=configuration)
    configuration.connection_pool_maxsize = len(args.nodes) + 10
    rest = Rest(ApiClient(configuration), "bench", request_timeout=120)
    ready = 0

    async def one(node: str) -> None:
        nonlocal ready
        selector = f"bench.dpf/node={node}"
        listing = await rest.list(kind, args.namespace, selector)
        rv = listing["metadata"]["resourceVersion"]
        ready += 1
        while True:
            async for event in rest.watch(kind, rv, 3600, args.namespace, selector):
                rv = event["object"]["metadata"]["resourceVersion"]
                if event["type"] == "MODIFIED":
                    recorder.seen(node, event["object"]["spec"]["physical"]["interfaceName"])

    tasks = [asyncio.create_task(one(n)) for n in args.nodes]
    while ready < len(args.nodes):
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.0)  # the watch requests are sent right after the lists; let them establish
    recorder.file.write(json.dumps({"ready": len(args.nodes)}) + "\n")
    await asyncio.gather(*tasks)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("grpc", "watch"), required=True)
    parser.add_argument("--nodes", nargs="+", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--endpoint", default="")
    parser.add_argument("--certs", type=Path)
    parser.add_argument("--state", type=Path)
    parser.add_argument("--kubeconfig", type=Path)
    parser.add_argument("--namespace", default="")
    args = parser.parse_args()
    recorder = Recorder(args.out)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(grpc_clients(args, recorder) if args.mode == "grpc" else watch_clients(args, recorder))
    return 0


if __name__ == "__main__":
    sys.exit(main())
