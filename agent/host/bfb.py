"""The BFB file a flash needs, ready on the host: from the BFB directory (`--bfb-dir`; upstream's shared PVC),
or, when the file is not there and a controller is configured, streamed from the controller's BFBStore over
the agent's mTLS channel: into `<name>.partial`, resumed from that file's size after a cut, checked against
the expected size and sha256, then renamed into place (so a present `<name>` is always a whole file).

A file found in the directory is trusted when no sha256 is given (as upstream trusts its PVC); with one it is
hashed once per (size, mtime) and a mismatch is reported, never flashed.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from dpf.proto.v1 import provisioning_pb2 as ppb
from dpf.proto.v1 import provisioning_pb2_grpc as ppb_grpc

log = logging.getLogger(__name__)

HASH_BLOCK = 4 << 20
FETCH_ATTEMPTS = 5
FETCH_RETRY_BASE = 0.2


@dataclass(frozen=True)
class BfbState:
    ready: bool
    error: str = ""
    path: Path | None = None


class FetchError(Exception):
    pass


class ControllerFetcher:
    """Streams a file from the controller's BFBStore (`Read`), failing over between replicas."""

    def __init__(self, endpoints: Sequence[str], channel: Callable[[str], grpc.aio.Channel]) -> None:
        self.endpoints = tuple(endpoints)
        self.channel = channel
        self.requests: list[tuple[str, int]] = []  # (file, offset) of every Read sent: resume is observable

    async def fetch(self, name: str, partial: Path, expected_size: int, attempt: int) -> None:
        """Append the rest of `name` to `partial` (from its current size). Raises FetchError or grpc errors."""
        endpoint = self.endpoints[attempt % len(self.endpoints)]
        offset = await asyncio.to_thread(_size_or_zero, partial)
        if expected_size and offset >= expected_size:
            return
        self.requests.append((name, offset))
        channel = self.channel(endpoint)
        try:
            call = ppb_grpc.BFBStoreStub(channel).Read(ppb.BFBReadRequest(file_name=name, offset=offset))
            out = await asyncio.to_thread(open, partial, "ab")
            with out:
                async for chunk in call:
                    if chunk.offset != offset:
                        raise FetchError(f"the controller sent bytes at {chunk.offset}, expected {offset}")
                    if expected_size and chunk.size != expected_size:
                        raise FetchError(f"the controller's {name} is {chunk.size} bytes, the BFB says "
                                         f"{expected_size}")
                    await asyncio.to_thread(out.write, chunk.data)
                    offset += len(chunk.data)
        finally:
            await channel.close()


class BfbFiles:
    def __init__(self, directory: Path, fetcher: ControllerFetcher | None) -> None:
        self.directory = directory
        self.fetcher = fetcher
        self._locks: dict[str, asyncio.Lock] = {}
        self._verified: dict[str, tuple[int, int, str]] = {}  # name -> (size, mtime_ns, sha256) hashed once

    async def ensure(self, source: ppb.BFBSource) -> BfbState:
        name = source.file_name
        if not name or "/" in name or "\\" in name or name in (".", ".."):
            return BfbState(False, f"bfb.file_name {name!r} is not a plain file name")
        async with self._locks.setdefault(name, asyncio.Lock()):
            path = self.directory / name
            if path.is_file():
                why = await self._check(path, source)
                return BfbState(not why, why, path if not why else None)
            if self.fetcher is None:
                return BfbState(False, f"{path} does not exist and no controller is configured to stream it from")
            why = await self._download(path, source)
            return BfbState(not why, why, path if not why else None)

    async def _check(self, path: Path, source: ppb.BFBSource) -> str:
        st = await asyncio.to_thread(path.stat)
        if source.size and st.st_size != source.size:
            return f"{path} is {st.st_size} bytes, the BFB says {source.size}"
        if not source.sha256:
            return ""
        known = self._verified.get(path.name)
        if known is None or known[:2] != (st.st_size, st.st_mtime_ns):
            digest = await asyncio.to_thread(sha256_of, path)
            known = self._verified[path.name] = (st.st_size, st.st_mtime_ns, digest)
        if known[2] != source.sha256.lower():
            return f"{path} has sha256 {known[2]}, the BFB says {source.sha256}"
        return ""

    async def _download(self, path: Path, source: ppb.BFBSource) -> str:
        assert self.fetcher is not None
        partial = path.with_name(f"{path.name}.partial")
        self.directory.mkdir(parents=True, exist_ok=True)
        delay, last, complete = FETCH_RETRY_BASE, "", False
        for attempt in range(FETCH_ATTEMPTS):
            try:
                await self.fetcher.fetch(source.file_name, partial, source.size, attempt)
                complete = True
                break
            except grpc.aio.AioRpcError as exc:
                last = f"{exc.code().name}: {exc.details()}"
                if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT,
                                  grpc.StatusCode.PERMISSION_DENIED):
                    break  # asking again will not help; the next pass of the worker will
            except (FetchError, OSError) as exc:
                last = str(exc)
                partial.unlink(missing_ok=True)  # the bytes we have are suspect: start over
            log.info("streaming %s from the controller: %s; resuming (attempt %d)", path.name, last, attempt + 2)
            await asyncio.sleep(delay)
            delay *= 2
        if not complete:
            return f"streaming {path.name} from the controller failed: {last}"
        why = await self._check(partial, source)
        if why:
            partial.unlink(missing_ok=True)
            return f"streamed {path.name} does not match: {why}"
        os.replace(partial, path)
        if source.sha256:
            self._verified[path.name] = self._verified.pop(partial.name)
        log.info("BFB %s streamed from the controller", path.name)
        return ""


def _size_or_zero(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()
