"""BFB download over the real apiserver and a real HTTP server on 127.0.0.1: a BFB's file appears in the BFB
directory (byte-identical, 0644, SuccessfulDownload Event), failures are phase Error with a FailedDownload
Event naming the cause and are retried on their own, a pre-seeded file is trusted, a vanished file comes
back, and deletion removes the file, waiting while a DPU uses the BFB."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from dpf.controller.kube.rest import EVENT, Rest
from dpf.controller.manager import Controller
from dpf.controller.reconcilers.bfb import FILE_FINALIZER, BFBReconciler
from dpf.controller.reconcilers.inuse_protection import BFB_FINALIZER, InUseProtectionReconciler
from dpf.controller.reconcilers.kinds import BFB, DPU
from dpf.controller.settings import BFBSettings
from dpf.lab.bed.kube import ControlPlane

from ..controlplane.harness import controller_settings, eventually, host_rest, run, started
from .bfb_server import BFBServer

# Small bounds so failures and retries happen within a test; generous ones where a loaded machine must not
# turn a healthy local transfer into a "stall".
FAST = {"stall_timeout": 10.0, "retry_base": 0.5, "retry_max": 2.0, "recheck_period": 0.5}


@dataclasses.dataclass
class Env:
    rest: Rest
    controller: Controller
    reconciler: BFBReconciler
    directory: Path
    namespace: str

    def path(self, name: str) -> Path:
        return self.directory / f"{self.namespace}-{name}.bfb"

    async def create(self, name: str, url: str, file_name: str | None = None) -> None:
        spec: dict[str, Any] = {"url": url}
        if file_name:
            spec["fileName"] = file_name
        await self.rest.create(BFB, {"apiVersion": BFB.api_version, "kind": "BFB",
                                     "metadata": {"name": name, "namespace": self.namespace}, "spec": spec},
                               self.namespace)

    async def get(self, name: str) -> dict[str, Any] | None:
        return await self.rest.get(BFB, name, self.namespace)

    async def phase(self, name: str) -> str | None:
        obj = await self.get(name)
        return None if obj is None else (obj.get("status") or {}).get("phase")

    async def reaches(self, name: str, phase: str, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        async def check() -> bool:
            return await self.phase(name) == phase
        await eventually(check, f"BFB {name} phase {phase}", timeout=timeout)

    async def notes(self, name: str, reason: str) -> list[str]:
        events = (await self.rest.list(EVENT, self.namespace))["items"]
        return [e.get("note", "") for e in events
                if e.get("reason") == reason and e["regarding"].get("kind") == "BFB"
                and e["regarding"].get("name") == name]

    async def gone(self, name: str) -> bool:
        return await self.get(name) is None

    def sample(self, metric: str, **labels: str) -> float:
        return self.controller.metrics.registry.get_sample_value(metric, labels) or 0.0


@contextlib.asynccontextmanager
async def bfb_controller(kube: ControlPlane, namespace: str, tmp_path: Path, **bfb: Any) -> AsyncIterator[Env]:
    directory = tmp_path / "bfb"
    directory.mkdir(exist_ok=True)
    settings = dataclasses.replace(controller_settings(kube.kubeconfig, namespace),
                                   bfb=BFBSettings(directory=directory, **{**FAST, **bfb}))
    rest = await host_rest(kube.kubeconfig)
    try:
        controller = await started(Controller(settings, reconcilers=[BFBReconciler, InUseProtectionReconciler]))
        reconciler = next(r for r in controller.reconcilers if isinstance(r, BFBReconciler))
        try:
            yield Env(rest, controller, reconciler, directory, namespace)
        finally:
            await reconciler.close()  # the manager's stop does not know this hook yet
            await controller.stop()
    finally:
        await rest.close()


def _files(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def test_bfb_is_downloaded_and_ready(kube: ControlPlane, namespace: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with BFBServer() as server, bfb_controller(kube, namespace, tmp_path) as env:
            server.gate.clear()  # hold the body back: the Downloading phase is visible
            await env.create("bundle", server.url())
            await env.reaches("bundle", "Downloading")
            obj = await env.get("bundle")
            assert obj is not None
            assert obj["spec"]["fileName"] == f"{namespace}-bundle.bfb"  # the default, persisted
            assert FILE_FINALIZER in obj["metadata"]["finalizers"]
            server.gate.set()
            await env.reaches("bundle", "Ready")

            path = env.path("bundle")
            assert path.read_bytes() == server.payload
            assert stat.S_IMODE(path.stat().st_mode) == 0o644
            assert _files(env.directory) == [path.name], "no partial left behind"
            notes = await eventually(lambda: env.notes("bundle", "SuccessfulDownload"), "a SuccessfulDownload Event")
            assert server.sha256 in notes[0], notes
            assert f"{len(server.payload)} bytes" in notes[0], notes
            assert server.requests == 1
            assert env.sample("dpf_controller_bfb_downloads_total", result="success") == 1
            assert env.sample("dpf_controller_bfb_download_bytes_total") == len(server.payload)

    run(scenario())


def test_404_is_an_error_and_retried_until_the_server_is_fixed(kube: ControlPlane, namespace: str,
                                                              tmp_path: Path) -> None:
    async def scenario() -> None:
        async with BFBServer() as server, bfb_controller(kube, namespace, tmp_path) as env:
            server.mode = "404"
            await env.create("bundle", server.url("missing"))
            await env.reaches("bundle", "Error")
            notes = await eventually(lambda: env.notes("bundle", "FailedDownload"), "a FailedDownload Event")
            assert f"GET {server.url('missing')}: 404 Not Found" in notes[0], notes
            assert not env.path("bundle").exists()

            await eventually(lambda: server.requests >= 2, "a retry on its own")
            server.gate.clear()
            server.mode = "ok"
            await env.reaches("bundle", "Downloading")  # the next retry moves it back
            server.gate.set()
            await env.reaches("bundle", "Ready")
            assert env.path("bundle").read_bytes() == server.payload
            assert env.sample("dpf_controller_bfb_downloads_total", result="failure") >= 2

    run(scenario())


def test_a_stalled_download_fails_within_the_stall_timeout(kube: ControlPlane, namespace: str,
                                                           tmp_path: Path) -> None:
    async def scenario() -> None:
        async with BFBServer() as server, \
                bfb_controller(kube, namespace, tmp_path, stall_timeout=1.0, retry_base=300.0) as env:
            server.mode = "stall"
            await env.create("bundle", server.url())
            await eventually(server.partial_sent.is_set, "the server to send the first part")
            stalled_at = time.monotonic()
            assert [n for n in _files(env.directory) if n.endswith(".partial")], "the partial is being written"
            await env.reaches("bundle", "Error")
            # Detected after about stall_timeout (1 s); the bound is loose because the machine is shared.
            assert time.monotonic() - stalled_at < 15.0
            notes = await eventually(lambda: env.notes("bundle", "FailedDownload"), "a FailedDownload Event")
            assert "no data for 1s after 1048576 bytes (stalled)" in notes[0], notes
            assert _files(env.directory) == [], "no partial (and no file) left behind"

    run(scenario())


def test_a_truncated_transfer_fails_and_leaves_nothing(kube: ControlPlane, namespace: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with BFBServer() as server, bfb_controller(kube, namespace, tmp_path, retry_base=300.0) as env:
            server.mode = "truncated"
            await env.create("bundle", server.url())
            await env.reaches("bundle", "Error")
            notes = await eventually(lambda: env.notes("bundle", "FailedDownload"), "a FailedDownload Event")
            assert f"connection closed after 1048576 of {len(server.payload)} bytes" in notes[0], notes
            assert _files(env.directory) == []

    run(scenario())


def test_a_preseeded_file_is_trusted_without_any_request(kube: ControlPlane, namespace: str,
                                                         tmp_path: Path) -> None:
    async def scenario() -> None:
        async with BFBServer() as server, bfb_controller(kube, namespace, tmp_path) as env:
            seeded = env.directory / "doca-2.9.bfb"
            seeded.write_bytes(b"copied here by hand")
            await env.create("bundle", server.url(), file_name="doca-2.9.bfb")
            await env.reaches("bundle", "Ready")
            notes = await eventually(lambda: env.notes("bundle", "SuccessfulDownload"), "a SuccessfulDownload Event")
            assert "already in the BFB directory" in notes[0], notes
            assert server.requests == 0
            assert seeded.read_bytes() == b"copied here by hand"

    run(scenario())


def test_a_vanished_file_is_downloaded_again(kube: ControlPlane, namespace: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with BFBServer() as server, bfb_controller(kube, namespace, tmp_path) as env:
            await env.create("bundle", server.url())
            await env.reaches("bundle", "Ready")
            env.path("bundle").unlink()
            await eventually(lambda: env.path("bundle").is_file(), "the file to be downloaded again")
            await env.reaches("bundle", "Ready")
            assert env.path("bundle").read_bytes() == server.payload
            assert server.requests == 2

    run(scenario())


def test_leftover_partials_go_other_files_stay(kube: ControlPlane, namespace: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with BFBServer() as server, bfb_controller(kube, namespace, tmp_path) as env:
            name = f"{namespace}-bundle.bfb"
            crashed = env.directory / f".{name}.0e9c5a2e-dead-4bad-8bad-000000000000.partial"
            crashed.write_bytes(b"half of an old download")
            others = [env.directory / "notes.txt", env.directory / ".other.bfb.1234.partial",
                      env.directory / "other.bfb"]
            for other in others:
                other.write_bytes(b"not ours")
            await env.create("bundle", server.url())
            await env.reaches("bundle", "Ready")
            assert not crashed.exists()
            assert all(o.read_bytes() == b"not ours" for o in others)

    run(scenario())


def test_downloads_run_at_most_max_concurrent_at_once(kube: ControlPlane, namespace: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with BFBServer() as server, bfb_controller(kube, namespace, tmp_path, max_concurrent=1) as env:
            server.gate.clear()
            await env.create("one", server.url("one"))
            await env.create("two", server.url("two"))
            await env.reaches("one", "Downloading")
            await env.reaches("two", "Downloading")  # waiting for a slot is still Downloading
            await eventually(lambda: server.in_flight == 1, "one request in flight")
            await asyncio.sleep(0.5)  # give a wrong controller time to start the second one
            assert server.requests == 1
            server.gate.set()
            await env.reaches("one", "Ready")
            await env.reaches("two", "Ready")
            assert server.max_in_flight == 1

    run(scenario())


def test_deleting_an_unused_bfb_removes_its_file(kube: ControlPlane, namespace: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with BFBServer() as server, bfb_controller(kube, namespace, tmp_path) as env:
            await env.create("bundle", server.url())
            await env.reaches("bundle", "Ready")
            await eventually(lambda: _has_finalizers(env, "bundle"), "both finalizers on the BFB")
            await env.rest.delete(BFB, "bundle", namespace)
            await eventually(lambda: env.gone("bundle"), "the BFB to be deleted", timeout=10.0)
            assert _files(env.directory) == []

    run(scenario())


def test_a_file_two_bfbs_name_stays_until_both_are_deleted(kube: ControlPlane, namespace: str,
                                                            tmp_path: Path) -> None:
    async def scenario() -> None:
        async with BFBServer() as server, bfb_controller(kube, namespace, tmp_path) as env:
            shared = env.directory / "doca-2.9.bfb"
            shared.write_bytes(b"one image, two names")
            await env.create("first", server.url(), file_name=shared.name)
            await env.create("second", server.url(), file_name=shared.name)
            await env.reaches("first", "Ready")
            await env.reaches("second", "Ready")
            await eventually(lambda: _has_finalizers(env, "first"), "both finalizers on the BFB")

            await env.rest.delete(BFB, "first", namespace)
            await eventually(lambda: env.gone("first"), "the first BFB to be deleted")
            assert shared.read_bytes() == b"one image, two names", "the second BFB still names the file"
            await env.rest.delete(BFB, "second", namespace)
            await eventually(lambda: env.gone("second"), "the second BFB to be deleted")
            assert not shared.exists()
            assert server.requests == 0

    run(scenario())


def test_deleting_a_bfb_in_use_keeps_its_file_until_the_dpu_goes(kube: ControlPlane, namespace: str,
                                                                  tmp_path: Path) -> None:
    async def scenario() -> None:
        async with BFBServer() as server, bfb_controller(kube, namespace, tmp_path) as env:
            await env.create("bundle", server.url())
            await env.rest.create(DPU, {"apiVersion": DPU.api_version, "kind": "DPU",
                                        "metadata": {"name": "host1-dpu", "namespace": namespace},
                                        "spec": {"nodeName": "host1", "bfb": "bundle"}}, namespace)
            await env.reaches("bundle", "Ready")
            await eventually(lambda: _has_finalizers(env, "bundle"), "both finalizers on the BFB")

            await env.rest.delete(BFB, "bundle", namespace)
            await env.reaches("bundle", "Deleting")
            await eventually(lambda: env.notes("bundle", "InUse"), "an InUse Event")
            await asyncio.sleep(0.5)  # give a wrong controller time to remove the file
            assert await env.get("bundle") is not None
            assert env.path("bundle").read_bytes() == server.payload

            await env.rest.delete(DPU, "host1-dpu", namespace)
            await eventually(lambda: env.gone("bundle"), "the BFB to be deleted")
            assert _files(env.directory) == []

    run(scenario())


def test_deleting_a_bfb_mid_download_cancels_it(kube: ControlPlane, namespace: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with BFBServer() as server, bfb_controller(kube, namespace, tmp_path, stall_timeout=300.0) as env:
            server.mode = "stall"
            await env.create("bundle", server.url())
            await eventually(server.partial_sent.is_set, "the download to start")
            await env.rest.delete(BFB, "bundle", namespace)
            await eventually(lambda: env.gone("bundle"), "the BFB to be deleted", timeout=10.0)
            assert _files(env.directory) == []
            assert not _download_tasks()

    run(scenario())


def test_close_cancels_running_downloads(kube: ControlPlane, namespace: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with BFBServer() as server, bfb_controller(kube, namespace, tmp_path, stall_timeout=300.0) as env:
            server.mode = "stall"
            await env.create("bundle", server.url())
            await eventually(server.partial_sent.is_set, "the download to start")
            assert _download_tasks()
            await env.reconciler.close()  # what the manager calls when this replica stops leading
            assert not _download_tasks()
            assert _files(env.directory) == [], "the partial is removed"

    run(scenario())


async def _has_finalizers(env: Env, name: str) -> bool:
    obj = await env.get(name)
    return obj is not None and {FILE_FINALIZER, BFB_FINALIZER} <= set(obj["metadata"].get("finalizers") or ())


def _download_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("bfb-download/") and not t.done()]
