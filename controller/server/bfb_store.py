"""BFBStore: serves the controller's BFB directory to host agents that have no shared mount of it (upstream
needs an RWX volume, usually NFS, for that). Same gRPC server, port and mTLS as NodeState.

`Read(file_name, offset)` streams the file from `offset` in chunks that each carry their offset and the
file's total size, so an agent resumes a cut stream from what it has and checks the size. Refused: a name
with a path separator (or "."/".."): INVALID_ARGUMENT; a file that is not there: NOT_FOUND; an offset past
the end: OUT_OF_RANGE; a caller whose certificate is not a host agent's: PERMISSION_DENIED (BFBs are for
hosts; a DPU or a stranger has no business reading them). With `--insecure` the caller is not checked.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from dpf.controller.server import identity as ident
from dpf.proto.v1 import provisioning_pb2 as ppb
from dpf.proto.v1 import provisioning_pb2_grpc as ppb_grpc

log = logging.getLogger(__name__)

# Measured (bench/bfb, 512 MiB over loopback): 1 MiB streams fastest; 256 KiB pays per-message costs, and 2-16 MiB
# messages are slower still (each waits on HTTP/2 flow-control windows smaller than itself). Well under gRPC's
# default 4 MiB receive limit.
CHUNK_BYTES = 1 << 20


class BFBStoreServer(ppb_grpc.BFBStoreServicer):
    def __init__(self, directory: Path, insecure: bool, chunk_bytes: int = CHUNK_BYTES) -> None:
        self.directory = directory
        self.insecure = insecure
        self.chunk_bytes = chunk_bytes

    async def Read(self, request: ppb.BFBReadRequest,
                   context: grpc.aio.ServicerContext) -> AsyncIterator[ppb.BFBChunk]:
        caller = await self._authorise(context)
        name = request.file_name
        if not name or "/" in name or "\\" in name or name in (".", ".."):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"file_name {name!r} must be a plain file name in the BFB directory")
        try:
            fd = os.open(self.directory / name, os.O_RDONLY)
        except FileNotFoundError:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"the controller has no BFB file {name!r}")
        except OSError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"cannot open {name!r}: {exc.strerror}")
        try:
            size = os.fstat(fd).st_size
            offset = request.offset
            if offset > size:
                await context.abort(grpc.StatusCode.OUT_OF_RANGE, f"offset {offset} is past the end of {name!r} "
                                                                  f"({size} bytes)")
            log.info("BFBStore: %s reads %s from %d of %d bytes", caller, name, offset, size)
            while offset < size:
                data = await asyncio.to_thread(os.pread, fd, min(self.chunk_bytes, size - offset), offset)
                if not data:
                    break  # the file shrank under us: the agent's size check catches it
                yield ppb.BFBChunk(data=data, offset=offset, size=size)
                offset += len(data)
        finally:
            os.close(fd)

    async def _authorise(self, context: grpc.aio.ServicerContext) -> str:
        if self.insecure:
            return "an insecure client"
        try:
            who = ident.from_auth_context(context.auth_context())
        except ident.IdentityError as exc:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
        if who.role != "host":
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"BFB files are served to host agents only; {who.node} is a {who.role} agent")
        return f"host {who.node}"


def register(server: grpc.aio.Server, directory: Path, insecure: bool) -> BFBStoreServer:
    """Add the BFBStore service to the controller's gRPC server."""
    servicer = BFBStoreServer(directory, insecure)
    ppb_grpc.add_BFBStoreServicer_to_server(servicer, server)
    return servicer
