"""The agent's CNI endpoint: a root-only unix socket that the shim (`dpf.cni.shim`) talks to.

One request per connection (`dpf.cni.wire`). The server acknowledges as soon as it has read the
request, then runs it with a bound on concurrent work and on accepted requests (bursts queue or
get a quick code 11, never unbounded memory). A request runs to completion even if the shim gave
up (a half-done DEL is worse than a late one). The socket directory is recreated 0700 and the
socket is 0600, so only root can drive attachments (anchors pattern 16).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import stat

from dpf.agent.cni import netconf, reclaim
from dpf.agent.cni.attach import Attacher
from dpf.agent.cni.errors import CniError, to_cni
from dpf.agent.cni.settings import CniSettings
from dpf.cni import wire

log = logging.getLogger(__name__)


def prepare_socket_dir(settings: CniSettings) -> None:
    directory = settings.socket.parent
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = directory.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise RuntimeError(f"{directory} is not a directory owned by us; refusing to serve the CNI socket there")
    os.chmod(directory, 0o700)
    with contextlib.suppress(FileNotFoundError):
        settings.socket.unlink()


class CniServer:
    def __init__(self, settings: CniSettings, attacher: Attacher) -> None:
        self.settings = settings
        self.attacher = attacher
        self._work = asyncio.Semaphore(settings.max_concurrent)
        self._accepted = 0
        self._tasks: set[asyncio.Task] = set()
        self._server: asyncio.base_events.Server | None = None
        self.ready = False

    async def start(self) -> None:
        prepare_socket_dir(self.settings)
        old = os.umask(0o177)  # the socket is born 0600: no window where others could connect
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.settings.socket),
                                                           limit=wire.MAX_LINE)
        finally:
            os.umask(old)
        os.chmod(self.settings.socket, 0o600)
        self.ready = True
        log.info("CNI server listening on %s", self.settings.socket)

    async def stop(self) -> None:
        self.ready = False
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self.settings.drain_timeout)
        with contextlib.suppress(FileNotFoundError):
            self.settings.socket.unlink()

    async def resync(self, reason: str) -> reclaim.ResyncReport:
        return await reclaim.resync(self.attacher, reason)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                line = await asyncio.wait_for(reader.readline(), self.settings.read_timeout)
                message = json.loads(line)
            except (TimeoutError, ValueError, asyncio.LimitOverrunError) as exc:
                await self._send(writer, wire.error(wire.DECODE_FAILURE, f"unreadable request: {type(exc).__name__}"))
                return
            if self._accepted >= self.settings.max_pending:
                await self._send(writer, wire.error(wire.TRY_AGAIN_LATER,
                                                    f"agent busy: {self._accepted} CNI requests in flight"))
                return
            self._accepted += 1
            task = asyncio.create_task(self._run(message), name=f"cni-{message.get('command')}")
            self._tasks.add(task)
            task.add_done_callback(self._finished)
            await self._send(writer, {"ack": True})
            answer = await asyncio.shield(task)
            await self._send(writer, answer)
        except (ConnectionError, asyncio.CancelledError):
            pass  # the shim gave up or we are stopping; the request itself still completes
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _finished(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        self._accepted -= 1

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, message: dict) -> None:
        writer.write(wire.encode(message))
        await writer.drain()

    async def _run(self, message: dict) -> dict:
        command = str(message.get("command", ""))
        env = {str(k): str(v) for k, v in (message.get("env") or {}).items()}
        what = f"{command} {env.get('CNI_CONTAINERID', '-')}/{env.get('CNI_IFNAME', '-')}"
        try:
            if message.get("v") != wire.PROTOCOL:
                raise CniError(wire.INCOMPATIBLE_VERSION, f"shim speaks protocol {message.get('v')}, agent "
                               f"{wire.PROTOCOL}: upgrade the CNI binary")
            req = self._parse(command, env, str(message.get("config", "")), str(message.get("plugin", "")))
            async with self._work:
                doc = await asyncio.wait_for(self.attacher.handle(req), self.settings.request_timeout)
            return wire.success(doc)
        except Exception as exc:  # noqa: BLE001 - every failure is answered as a CNI error
            err = to_cni(exc, what)
            log.info("%s failed: code %d: %s", what, err.code, err.msg)
            return err.wire()

    @staticmethod
    def _parse(command: str, env: dict[str, str], config: str, plugin: str) -> netconf.Request:
        try:
            return netconf.parse(command, env, config, plugin)
        except CniError:
            if command != "DEL" or not env.get("CNI_CONTAINERID") or not env.get("CNI_IFNAME"):
                raise
            # DEL must not fail on a config we can no longer read: unplug by identity alone.
            return netconf.Request(command="DEL", version=wire.CURRENT_VERSION, name="", plugin=plugin,
                                   ipam_only=False, container_id=env["CNI_CONTAINERID"],
                                   ifname=env["CNI_IFNAME"], netns=env.get("CNI_NETNS", ""))
