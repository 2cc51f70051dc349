"""Emulated BFB images: a small documented header plus a payload generated from a seed, and the stream verifier.

A real BFB is a boot stream (ATF, UEFI, the installer and the OS image); the emulated DPU only needs to tell a
complete, intact image from anything else, at GiB scale, without the image ever being stored. File layout:

    offset  size  field
    0       8     magic b"DPFEMBFB"
    8       4     format version, little-endian u32 (1)
    12      4     header length, little-endian u32 (128)
    16      8     payload size in bytes, little-endian u64
    24      32    sha256 of the payload
    56      64    version name, UTF-8, NUL-padded (e.g. "bf-bundle-2.9.1-30_24.11_ubuntu-22.04_prod")
    120     8     reserved, zero
    128     ...   payload

Payload: 64 KiB blocks; block i is a pseudo-random block drawn once from `random.Random(seed)` with its first
8 bytes replaced by i (u64 little-endian), the last block cut to the payload size. Every block differs, so a
dropped or repeated block changes the checksum.

As the real flasher does (`cat image.bfb bf.cfg > /dev/rshim0/boot`), the bf.cfg travels after the image in the
same stream: every byte after the payload up to the end of the stream is the bf.cfg (at most 128 KiB).
"""

from __future__ import annotations

import functools
import hashlib
import random
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"DPFEMBFB"
FORMAT_VERSION = 1
HEADER_SIZE = 128
BLOCK_SIZE = 64 * 1024
MAX_BFCFG = 128 * 1024
_HEADER = struct.Struct("<8sIIQ32s64s8x")
assert _HEADER.size == HEADER_SIZE


@dataclass(frozen=True)
class BfbHeader:
    version: str
    payload_size: int
    sha256: bytes

    def pack(self) -> bytes:
        name = self.version.encode()
        if len(name) > 64:
            raise ValueError(f"version name longer than 64 bytes: {self.version!r}")
        return _HEADER.pack(MAGIC, FORMAT_VERSION, HEADER_SIZE, self.payload_size, self.sha256, name)

    @classmethod
    def unpack(cls, raw: bytes) -> BfbHeader:
        """The header at the start of `raw`; ValueError naming the bad field otherwise."""
        if len(raw) < HEADER_SIZE:
            raise ValueError(f"short header: {len(raw)} of {HEADER_SIZE} bytes")
        magic, fmt, length, size, digest, name = _HEADER.unpack(raw[:HEADER_SIZE])
        if magic != MAGIC:
            raise ValueError(f"bad magic {magic!r}")
        if fmt != FORMAT_VERSION or length != HEADER_SIZE:
            raise ValueError(f"unsupported format {fmt} (header length {length})")
        try:
            version = name.rstrip(b"\0").decode()
        except UnicodeDecodeError as e:
            raise ValueError("version name is not UTF-8") from e
        return cls(version=version, payload_size=size, sha256=digest)


@functools.lru_cache(maxsize=16)
def _base_block(seed: int) -> bytes:
    return random.Random(seed).randbytes(BLOCK_SIZE)


@functools.lru_cache(maxsize=16)
def _payload_digest(seed: int, size: int) -> bytes:
    image = EmulatedBfb("digest", size, seed)
    sha = hashlib.sha256()
    for chunk in image._payload(0, size):
        sha.update(chunk)
    return sha.digest()


@dataclass(frozen=True)
class EmulatedBfb:
    """One emulated image. `corrupt_at` flips the payload byte at that offset after the checksum was taken."""

    version: str
    size: int  # payload bytes
    seed: int = 0
    corrupt_at: int | None = None

    @property
    def header(self) -> BfbHeader:
        return BfbHeader(self.version, self.size, _payload_digest(self.seed, self.size))

    @property
    def total_size(self) -> int:
        return HEADER_SIZE + self.size

    def _block(self, index: int) -> bytes:
        base = _base_block(self.seed)
        block = struct.pack("<Q", index) + base[8:]
        end = min(BLOCK_SIZE, self.size - index * BLOCK_SIZE)
        return block[:end]

    def _payload(self, offset: int, length: int, chunk: int = 1 << 20) -> Iterator[bytes]:
        end = min(self.size, offset + length)
        while offset < end:
            stop = min(end, offset + chunk)
            parts = []
            pos = offset
            while pos < stop:
                index, within = divmod(pos, BLOCK_SIZE)
                block = self._block(index)
                take = min(stop - pos, len(block) - within)
                parts.append(block[within:within + take])
                pos += take
            data = b"".join(parts)
            if self.corrupt_at is not None and offset <= self.corrupt_at < stop:
                flipped = bytearray(data)
                flipped[self.corrupt_at - offset] ^= 0xFF
                data = bytes(flipped)
            yield data
            offset = stop

    def chunks(self, offset: int = 0, chunk: int = 1 << 20) -> Iterator[bytes]:
        """The file's bytes (header + payload) from `offset`, in pieces of about `chunk` bytes (HTTP, resume)."""
        if offset < HEADER_SIZE:
            yield self.header.pack()[offset:]
            offset = HEADER_SIZE
        yield from self._payload(offset - HEADER_SIZE, self.size, chunk)

    def write(self, path: Path) -> Path:
        """Write the image as a regular file."""
        with open(path, "wb") as out:
            for data in self.chunks():
                out.write(data)
        return path


@dataclass(frozen=True)
class StreamOutcome:
    """What the emulated DPU made of one boot stream."""

    ok: bool
    error: str | None
    version: str | None
    payload_received: int
    payload_expected: int | None
    bfcfg: str | None  # None when the stream carried none


class StreamVerifier:
    """Consumes a boot stream piece by piece and checks it: header, full payload, sha256, then the bf.cfg."""

    def __init__(self) -> None:
        self._head = bytearray()
        self.header: BfbHeader | None = None
        self.error: str | None = None
        self._sha = hashlib.sha256()
        self.payload_received = 0
        self._cfg = bytearray()
        self._flip_next = False

    def corrupt_next_payload_byte(self) -> None:
        """Fault injection: the device garbles the next payload byte it receives (a bad transfer)."""
        self._flip_next = True

    def feed(self, data: memoryview) -> None:
        if self.error:
            return  # the stream is drained but ignored once it is known bad
        pos = 0
        if self.header is None:
            take = min(len(data), HEADER_SIZE - len(self._head))
            self._head += data[:take]
            pos = take
            if len(self._head) < HEADER_SIZE:
                return
            try:
                self.header = BfbHeader.unpack(bytes(self._head))
            except ValueError as e:
                self.error = f"invalid BFB header: {e}"
                return
        remaining = self.header.payload_size - self.payload_received
        take = min(len(data) - pos, remaining)
        if take > 0:
            piece = data[pos:pos + take]
            if self._flip_next:
                self._sha.update(bytes([piece[0] ^ 0xFF]))
                self._sha.update(piece[1:])
                self._flip_next = False
            else:
                self._sha.update(piece)
            self.payload_received += take
            pos += take
        if pos < len(data):
            self._cfg += data[pos:]
            if len(self._cfg) > MAX_BFCFG:
                self.error = f"bf.cfg larger than {MAX_BFCFG} bytes"

    def finish(self) -> StreamOutcome:
        header = self.header
        expected = header.payload_size if header else None
        error = self.error
        if error is None and header is None:
            error = f"stream ended inside the BFB header ({len(self._head)} of {HEADER_SIZE} bytes)"
        elif error is None and header and self.payload_received < header.payload_size:
            error = f"BFB truncated: {self.payload_received} of {header.payload_size} payload bytes received"
        elif error is None and header and self._sha.digest() != header.sha256:
            error = (f"BFB checksum mismatch: sha256 {self._sha.hexdigest()[:16]}... "
                     f"expected {header.sha256.hex()[:16]}...")
        cfg: str | None = None
        if error is None and self._cfg:
            try:
                cfg = self._cfg.decode()
            except UnicodeDecodeError:
                error = "bf.cfg is not UTF-8 text"
        return StreamOutcome(ok=error is None, error=error, version=header.version if header else None,
                             payload_received=self.payload_received, payload_expected=expected, bfcfg=cfg)


def main(argv: list[str] | None = None) -> int:
    """`python -m dpf.lab.emulator.bfb OUT --size BYTES [--seed N] [--version NAME]`: write an emulated BFB."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m dpf.lab.emulator.bfb", description=main.__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", type=int, required=True, help="payload bytes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--version", default="bf-bundle-emulated")
    args = parser.parse_args(argv)
    EmulatedBfb(args.version, args.size, args.seed).write(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
