"""The BFB file a flash needs, ready on the host: from the BFB directory (`--bfb-dir`; upstream's shared PVC),
or, when the file is not there and a controller is configured, streamed from the controller's BFBStore over
the agent's mTLS channel: into `<name>.partial`, resumed from that file's size after a cut, checked against
the expected size and sha256, then renamed into place (so a present `<name>` is always a whole file).

The stream is hashed as it arrives (a resumed one first hashes the bytes the partial already holds), in a writer
thread that also writes: the received chunks are handed over in batches, so the event loop only moves
references, and the finished file is never read back to be checked.

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
WRITE_BATCH = 8 << 20  # received bytes handed to the writer thread at once
FETCH_ATTEMPTS = 5
FETCH_RETRY_BASE = 0.2


@dataclass(frozen=True)
class BfbState:
    ready: bool
    error: str = ""
    path: Path | None = None


class FetchError(Exception):
    """The bytes received are suspect: the partial file is removed and the next attempt starts over."""


class StreamEnded(Exception):
    """The stream ended before the file did, without an error: the next attempt resumes."""


class ControllerFetcher:
    """Streams a file from the controller's BFBStore (`Read`), failing over between replicas."""

    def __init__(self, endpoints: Sequence[str], channel: Callable[[str], grpc.aio.Channel]) -> None:
        self.endpoints = tuple(endpoints)
        self.channel = channel
        self.requests: list[tuple[str, int]] = []  # (file, offset) of every Read sent: resume is observable

    async def fetch(self, name: str, partial: Path, expected_size: int, attempt: int) -> str:
        """Append the rest of `name` to `partial` (from its current size) and return the sha256 of the whole
        partial file. Raises FetchError or grpc errors (the bytes appended before a cut stay: resume)."""
        endpoint = self.endpoints[attempt % len(self.endpoints)]
        out = await asyncio.to_thread(_Partial.open, partial)
        try:
            offset = out.size
            if expected_size and offset >= expected_size:
                return out.hexdigest()
            self.requests.append((name, offset))
            channel = self.channel(endpoint)
            try:
                call = ppb_grpc.BFBStoreStub(channel).Read(ppb.BFBReadRequest(file_name=name, offset=offset))
                batch: list[bytes] = []
                batched, total = 0, -1
                writing: asyncio.Future[None] | None = None
                try:
                    async for chunk in call:
                        if chunk.offset != offset:
                            raise FetchError(f"the controller sent bytes at {chunk.offset}, expected {offset}")
                        if expected_size and chunk.size != expected_size:
                            raise FetchError(f"the controller's {name} is {chunk.size} bytes, the BFB says "
                                             f"{expected_size}")
                        total = chunk.size
                        batch.append(chunk.data)
                        batched += len(chunk.data)
                        offset += len(chunk.data)
                        if batched >= WRITE_BATCH:
                            if writing is not None:
                                await writing  # at most one batch in the writer while the next arrives
                            writing = asyncio.ensure_future(asyncio.to_thread(out.append, batch))
                            batch, batched = [], 0
                finally:
                    if writing is not None:
                        await writing
                    if batch:
                        await asyncio.to_thread(out.append, batch)  # what arrived before a cut is kept
            finally:
                await channel.close()
            whole = expected_size or total
            if whole >= 0 and out.size != whole:  # the stream ended early without an error: resume
                raise StreamEnded(f"the stream of {name} ended at {out.size} of {whole} bytes")
            return out.hexdigest()
        finally:
            out.close()


class _Partial:
    """The partial file, opened for appending, with the running sha256 of everything it holds (hashed from disk
    once when a resume finds bytes there). Used from worker threads, one call at a time."""

    def __init__(self, path: Path) -> None:
        self.file = open(path, "ab+")  # noqa: SIM115 (closed by close())
        self.digest = hashlib.sha256()
        self.file.seek(0)
        while block := self.file.read(HASH_BLOCK):
            self.digest.update(block)
        self.size = self.file.tell()

    @classmethod
    def open(cls, path: Path) -> _Partial:
        return cls(path)

    def append(self, chunks: list[bytes]) -> None:
        for data in chunks:
            self.digest.update(data)  # releases the GIL: the event loop keeps receiving meanwhile
            self.file.write(data)
            self.size += len(data)
        self.file.flush()

    def hexdigest(self) -> str:
        return self.digest.hexdigest()

    def close(self) -> None:
        self.file.close()


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
        delay, last, digest = FETCH_RETRY_BASE, "", ""
        for attempt in range(FETCH_ATTEMPTS):
            try:
                digest = await self.fetcher.fetch(source.file_name, partial, source.size, attempt)
                break
            except grpc.aio.AioRpcError as exc:
                last = f"{exc.code().name}: {exc.details()}"
                if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT,
                                  grpc.StatusCode.PERMISSION_DENIED):
                    break  # asking again will not help; the next pass of the worker will
                if exc.code() == grpc.StatusCode.OUT_OF_RANGE:
                    partial.unlink(missing_ok=True)  # longer than the controller's file: start over
            except StreamEnded as exc:
                last = str(exc)
            except (FetchError, OSError) as exc:
                last = str(exc)
                partial.unlink(missing_ok=True)  # the bytes we have are suspect: start over
            log.info("streaming %s from the controller: %s; resuming (attempt %d)", path.name, last, attempt + 2)
            await asyncio.sleep(delay)
            delay *= 2
        if not digest:
            return f"streaming {path.name} from the controller failed: {last}"
        st = await asyncio.to_thread(partial.stat)
        self._verified[partial.name] = (st.st_size, st.st_mtime_ns, digest)  # hashed while it arrived
        why = await self._check(partial, source)
        if why:
            partial.unlink(missing_ok=True)
            return f"streamed {path.name} does not match: {why}"
        os.replace(partial, path)
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
