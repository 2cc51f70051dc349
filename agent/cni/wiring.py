"""Wire the CNI server into the DPU agent: the node's IP pool blocks come from the controller's stream.

The contract, for the DPU agent process (`dpf agent dpu --cni-socket PATH`):

    async def serve_cni(runtime: AgentRuntime, settings: CniSettings, ovsdb: Ovsdb | None = None) -> None

- Registers the dpf.v1.IPAMBlock handler (`dpf.agent.ipam.handler`) on `runtime` synchronously, before
  its first await, so `asyncio.gather(runtime.run(), serve_cni(runtime, settings))` (either order) works;
  registering while a stream is open subscribes on that stream.
- Re-applies the blocks the runtime stored from the last session, then reclaims attachments of gone pods,
  and only then opens the CNI socket: after an agent restart with the controller down, ADDs are served
  from the same pools at once (an ADD never sees "no pool" because the stream is not up yet).
- Transacts through `ovsdb`, the process's OVSDB client (the DPU agent shares its one client with the
  SFC programmer); without one it connects its own to `settings.ovsdb`. It joins the client on start
  and leaves it on stop (the client's last user closes it).
- Serves the socket (`settings.socket`, directory 0700, socket 0600) and runs the periodic resync until
  cancelled; cancellation stops accepting, lets in-flight requests finish (bounded by
  `settings.drain_timeout`) and removes the socket. Errors starting OVSDB or the socket propagate.
"""

from __future__ import annotations

import asyncio
import logging

from dpf.agent.cni.attach import Attacher
from dpf.agent.cni.ovs_ports import OvsPorts
from dpf.agent.cni.server import CniServer
from dpf.agent.cni.settings import CniSettings
from dpf.agent.ipam.handler import IpamBlockHandler
from dpf.agent.ipam.service import open_service
from dpf.agent.runtime.runtime import AgentRuntime
from dpf.agent.sfc.ovsdb import Ovsdb

log = logging.getLogger(__name__)


async def serve_cni(runtime: AgentRuntime, settings: CniSettings, ovsdb: Ovsdb | None = None) -> None:
    ipam = open_service(settings.state_dir / "leases.json")
    handler = IpamBlockHandler(ipam)
    applier = runtime.add_handler(handler)  # before any await: see the module docstring
    ports = OvsPorts(ovsdb) if ovsdb is not None else OvsPorts.standalone(settings.ovsdb, settings.ovs_timeout)
    await ports.start()
    server = CniServer(settings, Attacher(ports, ipam))
    try:
        if not await applier.reassert(runtime.statuses.reporter(handler.type_url)):
            log.error("the stored IP pool blocks no longer apply; ADDs fail until the controller sends new ones")
        log.info("IP pools on this node: %s", ", ".join(sorted(ipam.blocks)) or "none yet")
        await server.resync("start-up")
        await server.start()
        while True:
            await asyncio.sleep(settings.resync_interval)
            await server.resync("periodic")
    finally:
        await server.stop()
        await ports.stop()
