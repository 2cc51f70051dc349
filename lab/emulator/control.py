"""The emulated host's control socket: power (for the `ipmitool`-shaped command) and faults, from any process.

Protocol: one JSON object per line each way on the unix socket `<root>/run/emulator/control.sock`.
    {"op": "power", "action": "status|on|off|cycle|reset"} -> {"ok": true, "power": "on"}
    {"op": "faults", "dpu": 0, "set": {"stall": true, "rate": 8000000, "timings": {"install": 2}}}
    {"op": "status"} -> {"ok": true, "power": "on", "dpus": [{"name", "state", "version", "bytes", "boots",
                          "streams", ...}]}  (bytes: of the last boot stream; streams: boot streams seen)
Errors: {"ok": false, "error": "..."}.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

Handler = Callable[[dict[str, Any]], dict[str, Any]]


class ControlServer:
    def __init__(self, path: Path, handle: Handler) -> None:
        self.path = path
        self._handle = handle
        path.parent.mkdir(parents=True, exist_ok=True)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(str(path))
        self._sock.listen(8)
        self._stop = False
        self._thread = threading.Thread(target=self._serve, name=f"emulator-control-{path.parent.name}",
                                        daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self._sock.accept()  # blocks; close() wakes it with shutdown()
            except OSError:
                return
            with conn:
                conn.settimeout(30)
                self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn.makefile("rw") as stream:
            for line in stream:
                try:
                    reply = self._handle(json.loads(line))
                except Exception as e:  # noqa: BLE001 - the caller gets the reason; the server keeps serving
                    reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
                stream.write(json.dumps(reply) + "\n")
                stream.flush()

    def close(self) -> None:
        self._stop = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)
        self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def request(path: Path, message: dict[str, Any], timeout: float = 30) -> dict[str, Any]:
    """Send one request to the control socket at `path` and return the reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        with sock.makefile("rw") as stream:
            stream.write(json.dumps(message) + "\n")
            stream.flush()
            return json.loads(stream.readline())
