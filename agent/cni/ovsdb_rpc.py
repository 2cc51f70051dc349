"""A small asyncio OVSDB JSON-RPC client (RFC 7047): `transact` and nothing else, on one connection.

Used by `dpf.agent.cni.ovs_ports` for point reads and batched port transactions without spawning
`ovs-vsctl` (three process starts per ADD cost more CPU than the whole attachment on a 2-core DPU).
Keeps no replica. Answers the server's echo probes; on a broken connection every waiter fails with
a transient SwitchError and the next call reconnects. When the agent runtime owns a single OVSDB
connection for the whole process (anchors pattern 5), the port batches move onto it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging

from dpf.agent.cni.errors import SwitchError

log = logging.getLogger(__name__)
DB = "Open_vSwitch"


class OvsdbRpc:
    def __init__(self, remote: str, timeout: float = 10.0) -> None:
        if not remote.startswith("unix:"):
            raise ValueError(f"OVSDB remote {remote!r}: only unix:<path> is supported")
        self.path = remote.removeprefix("unix:")
        self.timeout = timeout
        """Bound on one transaction's answer."""
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task | None = None
        self._pending: dict[int, asyncio.Future] = {}
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()

    async def _connect(self) -> None:
        async with self._lock:
            if self._writer is not None:
                return
            try:
                self._reader, self._writer = await asyncio.open_unix_connection(self.path, limit=1 << 24)
            except OSError as exc:
                raise SwitchError(f"OVSDB at {self.path} is not reachable: {exc.strerror}", transient=True) from exc
            self._task = asyncio.create_task(self._read(self._reader), name="cni-ovsdb-reader")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._drop(SwitchError("OVSDB connection closed", transient=True))

    def _drop(self, error: Exception) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None
        self._task = None
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(error)
        self._pending.clear()

    async def _read(self, reader: asyncio.StreamReader) -> None:
        decoder = json.JSONDecoder()
        buf = ""
        try:
            while True:
                chunk = await reader.read(1 << 16)
                if not chunk:
                    raise ConnectionResetError("ovsdb-server closed the connection")
                buf += chunk.decode()
                while buf:
                    buf = buf.lstrip()
                    try:
                        message, end = decoder.raw_decode(buf)
                    except ValueError:
                        break  # incomplete: wait for more bytes
                    buf = buf[end:]
                    self._dispatch(message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any read failure ends this connection for every waiter
            log.warning("OVSDB connection to %s lost: %s", self.path, exc)
            self._drop(SwitchError(f"lost the OVSDB connection: {exc}", transient=True))

    def _dispatch(self, message: dict) -> None:
        if message.get("method") == "echo" and self._writer is not None:
            self._writer.write(json.dumps({"id": message.get("id"), "result": message.get("params"),
                                           "error": None}).encode())
            return
        fut = self._pending.pop(message.get("id"), None) if "id" in message else None
        if fut is None or fut.done():
            return
        if message.get("error") is not None:
            fut.set_exception(SwitchError(f"OVSDB error: {message['error']}"))
        else:
            fut.set_result(message.get("result"))

    async def transact(self, ops: list[dict]) -> list[dict]:
        """Run one transaction; raise SwitchError naming the first failed operation."""
        await self._connect()
        assert self._writer is not None
        request_id = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._pending[request_id] = fut
        self._writer.write(json.dumps({"id": request_id, "method": "transact", "params": [DB, *ops]}).encode())
        try:
            results = await asyncio.wait_for(fut, self.timeout)
        except TimeoutError:
            self._pending.pop(request_id, None)
            raise SwitchError(f"ovsdb-server did not answer within {self.timeout:.0f}s", transient=True) from None
        for op, result in zip(ops, results, strict=False):
            if isinstance(result, dict) and result.get("error"):
                detail = result.get("details", "")
                raise SwitchError(f"OVSDB refused {op['op']} on {op['table']}: {result['error']} {detail}".strip())
        if len(results) > len(ops) and results[-1] and results[-1].get("error"):
            raise SwitchError(f"OVSDB refused the transaction: {results[-1]['error']} "
                              f"{results[-1].get('details', '')}".strip())
        return results


def ovs_map(pairs: dict[str, str] | tuple[tuple[str, str], ...]) -> list:
    items = pairs.items() if isinstance(pairs, dict) else pairs
    return ["map", [[k, v] for k, v in items]]


def from_map(value: list) -> dict[str, str]:
    return dict(value[1]) if isinstance(value, list) and value and value[0] == "map" else {}


def from_set(value: object) -> list:
    if isinstance(value, list) and value and value[0] == "set":
        return value[1]
    return [value]
