"""A BFB the host does not have is streamed from the controller's BFBStore: resumed after a cut from what the
partial file holds, checked against size and sha256, renamed into place; then flashed."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from dpf.agent.host.bfb import BfbFiles, ControllerFetcher
from dpf.controller.pki import CertificateAuthority
from dpf.controller.server.bfb_store import BFBStoreServer
from dpf.lab.emulator import EmulatedHost
from dpf.proto.v1 import nodestate_pb2 as pb
from dpf.proto.v1 import provisioning_pb2 as ppb
from dpf.proto.v1 import provisioning_pb2_grpc as ppb_grpc
from tests.hostagent.harness import MiniController, RunningAgent, agent_settings, eventually, image, provisioning, run


class CutOnce(BFBStoreServer):
    """The real servicer, whose first stream breaks after `cut_after` chunks (a dropped connection)."""

    def __init__(self, directory: Path, cut_after: int) -> None:
        super().__init__(directory, insecure=True, chunk_bytes=256 * 1024)
        self.cut_after = cut_after
        self.offsets: list[int] = []

    async def Read(self, request: ppb.BFBReadRequest,
                   context: grpc.aio.ServicerContext) -> AsyncIterator[ppb.BFBChunk]:
        self.offsets.append(request.offset)
        sent = 0
        async for chunk in super().Read(request, context):
            if len(self.offsets) == 1 and sent == self.cut_after:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset (test)")
            yield chunk
            sent += 1


def test_a_bfb_streamed_from_the_controller_resumes_after_a_cut_and_is_flashed(host: EmulatedHost,
                                                                                tmp_path: Path) -> None:
    served = tmp_path / "controller-bfb"
    path, bfb = image(served, size=4 << 20)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    local = tmp_path / "host-bfb"

    async def scenario() -> None:
        store = CutOnce(served, cut_after=5)
        controller = await MiniController(served).start(store)
        agent = RunningAgent(agent_settings(controller, host.root, tmp_path / "state", local))
        try:
            spec = provisioning(install="uid-1/1", size=path.stat().st_size, sha256=digest)
            controller.publish({"dpf/dpu-a": spec})
            await eventually(lambda: controller.install_state("dpf/dpu-a") == ppb.INSTALL_STATE_DONE, "the install")
            assert store.offsets == [0, 5 * 256 * 1024]  # the second Read resumed where the cut left the file
            assert (local / "os.bfb").read_bytes() == path.read_bytes()
            assert not (local / "os.bfb.partial").exists()
            assert controller.latest("dpf/dpu-a").detail.bfb_ready
        finally:
            await agent.stop()
            await controller.stop()

    run(scenario())
    assert host.dpus[0].boots[-1].version == bfb.version


def test_a_streamed_bfb_with_the_wrong_sha256_is_refused_and_never_flashed(host: EmulatedHost,
                                                                           tmp_path: Path) -> None:
    served = tmp_path / "controller-bfb"
    _path, _ = image(served, size=1 << 20)
    local = tmp_path / "host-bfb"

    async def scenario() -> None:
        controller = await MiniController(served).start()
        agent = RunningAgent(agent_settings(controller, host.root, tmp_path / "state", local))
        try:
            controller.publish({"dpf/dpu-a": provisioning(install="uid-1/1", sha256="00" * 32)})
            seen = await eventually(lambda: (s := controller.latest("dpf/dpu-a")) and s.detail.bfb_error and s,
                                    "the BFB error")
            assert "does not match" in seen.detail.bfb_error
            assert "00000000" in seen.detail.bfb_error
            assert not seen.detail.bfb_ready
            assert seen.verdict == pb.VERDICT_FAILED
            assert seen.detail.install.state == ppb.INSTALL_STATE_WAITING
            assert not (local / "os.bfb").exists()
        finally:
            await agent.stop()
            await controller.stop()

    run(scenario())
    assert host.dpus[0].rshim.streams == []


@pytest.mark.parametrize(("name", "code"), [("../etc/passwd", grpc.StatusCode.INVALID_ARGUMENT),
                                            ("a/b.bfb", grpc.StatusCode.INVALID_ARGUMENT),
                                            ("..", grpc.StatusCode.INVALID_ARGUMENT),
                                            ("missing.bfb", grpc.StatusCode.NOT_FOUND)])
def test_the_bfb_store_refuses_names_with_separators_and_unknown_files(tmp_path: Path, name: str,
                                                                       code: grpc.StatusCode) -> None:
    image(tmp_path / "bfb", size=1 << 20)

    async def scenario() -> None:
        controller = await MiniController(tmp_path / "bfb").start()
        try:
            async with grpc.aio.insecure_channel(controller.endpoint) as channel:
                call = ppb_grpc.BFBStoreStub(channel).Read(ppb.BFBReadRequest(file_name=name))
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    async for _chunk in call:
                        pass
                assert refused.value.code() == code
                assert name in (refused.value.details() or "")
        finally:
            await controller.stop()

    run(scenario())


def test_the_bfb_store_serves_host_agents_only(tmp_path: Path) -> None:
    path, _ = image(tmp_path / "bfb", size=1 << 20)
    ca = CertificateAuthority.generate()
    server_pair = ca.issue_server(("localhost",))

    async def read(role: str) -> bytes:
        pair = ca.issue_node("host-1", role)
        credentials = grpc.ssl_channel_credentials(ca.cert_pem, pair.key_pem, pair.cert_pem)
        async with grpc.aio.secure_channel(f"localhost:{port}", credentials) as channel:
            call = ppb_grpc.BFBStoreStub(channel).Read(ppb.BFBReadRequest(file_name="os.bfb", offset=1000))
            return b"".join([chunk.data async for chunk in call])

    async def scenario() -> None:
        nonlocal port
        server = grpc.aio.server()
        ppb_grpc.add_BFBStoreServicer_to_server(BFBStoreServer(tmp_path / "bfb", insecure=False), server)
        port = server.add_secure_port("localhost:0", grpc.ssl_server_credentials(
            [(server_pair.key_pem, server_pair.cert_pem)], root_certificates=ca.cert_pem,
            require_client_auth=True))
        await server.start()
        try:
            assert await read("host") == path.read_bytes()[1000:]
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await read("dpu")
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "host agents only" in (refused.value.details() or "")
        finally:
            await server.stop(0)

    port = 0
    run(scenario())


class EndsEarly(BFBStoreServer):
    """The real servicer, whose first stream ends cleanly (no error status) after `chunks` chunks."""

    def __init__(self, directory: Path, chunks: int) -> None:
        super().__init__(directory, insecure=True, chunk_bytes=256 * 1024)
        self.chunks = chunks
        self.offsets: list[int] = []

    async def Read(self, request: ppb.BFBReadRequest,
                   context: grpc.aio.ServicerContext) -> AsyncIterator[ppb.BFBChunk]:
        self.offsets.append(request.offset)
        sent = 0
        async for chunk in super().Read(request, context):
            if len(self.offsets) == 1 and sent == self.chunks:
                return
            yield chunk
            sent += 1


def fetch_into(local: Path, controller: MiniController) -> BfbFiles:
    return BfbFiles(local, ControllerFetcher([controller.endpoint], grpc.aio.insecure_channel))


def test_a_resumed_stream_is_checked_whole_a_bad_kept_prefix_is_refused_then_fetched_again(tmp_path: Path) -> None:
    """The sha256 covers the bytes a cut stream left in the partial file too, not only those streamed after."""
    served = tmp_path / "controller-bfb"
    path, _ = image(served, size=3 << 20)
    data = path.read_bytes()
    source = ppb.BFBSource(file_name="os.bfb", size=len(data), sha256=hashlib.sha256(data).hexdigest())
    local = tmp_path / "host-bfb"
    local.mkdir()
    kept = bytearray(data[:1 << 20])
    kept[1000] ^= 0xFF  # one flipped byte in what an earlier stream left
    (local / "os.bfb.partial").write_bytes(kept)

    async def scenario() -> None:
        store = CutOnce(served, cut_after=-1)
        controller = await MiniController(served).start(store)
        try:
            files = fetch_into(local, controller)
            refused = await files.ensure(source)
            assert not refused.ready
            assert "does not match" in refused.error
            assert source.sha256 in refused.error
            assert not (local / "os.bfb").exists()
            assert not (local / "os.bfb.partial").exists()
            fetched = await files.ensure(source)  # the next pass starts over
            assert fetched.ready, fetched.error
            assert store.offsets == [1 << 20, 0]
            assert (local / "os.bfb").read_bytes() == data
        finally:
            await controller.stop()

    run(scenario())


def test_a_stream_that_ends_early_without_an_error_is_resumed_not_taken_for_the_file(tmp_path: Path) -> None:
    """Even when the DPU spec gives neither size nor sha256, the file is the size every chunk announced."""
    served = tmp_path / "controller-bfb"
    path, _ = image(served, size=2 << 20)
    local = tmp_path / "host-bfb"

    async def scenario() -> None:
        store = EndsEarly(served, chunks=3)
        controller = await MiniController(served).start(store)
        try:
            state = await fetch_into(local, controller).ensure(ppb.BFBSource(file_name="os.bfb"))
            assert state.ready, state.error
            assert store.offsets == [0, 3 * 256 * 1024]
            assert (local / "os.bfb").read_bytes() == path.read_bytes()
        finally:
            await controller.stop()

    run(scenario())
