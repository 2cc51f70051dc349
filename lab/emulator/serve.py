"""Serve emulated BFBs over HTTP, generated on the fly (GiB-scale without a file), with `Range: bytes=N-` resume.

    with BfbHttpServer({"bf-bundle.bfb": EmulatedBfb("bf-bundle-2.9.1", 1 << 30)}) as server:
        url = server.url("bf-bundle.bfb")
"""

from __future__ import annotations

import contextlib
import http.server
import re
import threading

from dpf.lab.emulator.bfb import EmulatedBfb

_RANGE = re.compile(r"^bytes=(\d+)-$")


class BfbHttpServer:
    def __init__(self, images: dict[str, EmulatedBfb], host: str = "127.0.0.1") -> None:
        self.images = dict(images)
        self.requests: list[tuple[str, int]] = []  # (name, first byte) per GET
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                image = server.images.get(self.path.lstrip("/"))
                if image is None:
                    self.send_error(404)
                    return
                offset = 0
                m = _RANGE.match(self.headers.get("Range", ""))
                if m:
                    offset = int(m[1])
                    if offset >= image.total_size:
                        self.send_error(416)
                        return
                server.requests.append((self.path.lstrip("/"), offset))
                self.send_response(206 if m else 200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(image.total_size - offset))
                if m:
                    self.send_header("Content-Range", f"bytes {offset}-{image.total_size - 1}/{image.total_size}")
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    for chunk in image.chunks(offset):
                        self.wfile.write(chunk)

        self._httpd = http.server.ThreadingHTTPServer((host, 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="emulator-bfb-http", daemon=True)
        self._thread.start()

    def url(self, name: str) -> str:
        host, port = self._httpd.server_address[:2]
        assert isinstance(host, str), "an AF_INET server's address is a (host string, port) pair"
        return f"http://{host}:{port}/{name}"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> BfbHttpServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
