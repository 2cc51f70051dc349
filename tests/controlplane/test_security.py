"""mTLS identity: a certificate from another CA is refused, a non-agent certificate is refused, and a node
cannot subscribe as another node (identity comes from the certificate, not the Hello)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import grpc
import pytest

from dpf.agent.runtime.settings import TLSFiles
from dpf.controller import pki
from dpf.controller.manager import Controller
from dpf.controller.settings import TLSSettings
from dpf.lab.bed.kube import ControlPlane
from dpf.lab.bed.pki import Authority
from dpf.proto.v1 import nodestate_pb2 as pb
from dpf.proto.v1 import nodestate_pb2_grpc as pb_grpc

from .harness import controller_settings, host_rest, node_files, run, started, write_files


def _credentials(files: TLSFiles) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(files.ca.read_bytes(), files.key.read_bytes(), files.cert.read_bytes())


async def _hello(port: int, files: TLSFiles, node: str, role: int = pb.ROLE_DPU) -> pb.StreamResponse:
    """Open a stream with `files`, say Hello as `node`; return the first answer (or raise AioRpcError)."""
    credentials = _credentials(files)
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        call = pb_grpc.NodeStateStub(channel).Stream()
        await call.write(pb.StreamRequest(hello=pb.Hello(node=node, role=role)))
        try:
            return await asyncio.wait_for(call.read(), 10)
        finally:
            call.cancel()


def test_identity_comes_from_the_certificate(kube: ControlPlane, namespace: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        rest = await host_rest(kube.kubeconfig)
        controller = Controller(controller_settings(kube.kubeconfig, namespace))
        await started(controller)
        port = controller.grpc_port
        node_a, node_b = f"dpu-a-{uuid.uuid4().hex[:6]}", f"dpu-b-{uuid.uuid4().hex[:6]}"
        try:
            files_a = await node_files(rest, namespace, node_a, "dpu", tmp_path / "a")

            welcome = await _hello(port, files_a, node_a)
            assert welcome.welcome.node == node_a
            assert welcome.welcome.controller == controller.identity

            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await _hello(port, files_a, node_b)
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert f"certificate is for node {node_a!r}; it cannot subscribe as node {node_b!r}" in \
                denied.value.details()

            with pytest.raises(grpc.aio.AioRpcError) as wrong_role:
                await _hello(port, files_a, node_a, pb.ROLE_HOST)
            assert wrong_role.value.code() == grpc.StatusCode.PERMISSION_DENIED

            # A certificate from another CA never completes the TLS handshake.
            foreign = Authority(tmp_path / "foreign").issue("a", node_a, organizations=(pki.AGENT_ORG,), client=True)
            files_foreign = write_files(tmp_path / "f", files_a.ca.read_bytes(), foreign.cert.read_bytes(),
                                   foreign.key.read_bytes())
            with pytest.raises(grpc.aio.AioRpcError) as handshake:
                await _hello(port, files_foreign, node_a)
            assert handshake.value.code() == grpc.StatusCode.UNAVAILABLE

            # Our CA, but not an agent certificate (the controller's own kind): refused by identity.
            ca = await pki.ensure_ca(rest, namespace, TLSSettings.ca_secret)
            server_pair = ca.issue_server(("127.0.0.1",))
            files_server = write_files(tmp_path / "s", ca.cert_pem, server_pair.cert_pem, server_pair.key_pem)
            with pytest.raises(grpc.aio.AioRpcError) as not_agent:
                await _hello(port, files_server, node_a)
            assert not_agent.value.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNAVAILABLE)
            assert controller.metrics.rejected_streams.labels("node-mismatch")._value.get() == 1
        finally:
            await controller.stop()
            await rest.close()

    run(scenario())
