"""BFB → its file in the BFB directory (upstream DPF v24.10's BFB controller).

Phases (`status.phase` only; the kind has no conditions): Initializing → Downloading → Ready. The file is
`<directory>/<spec.fileName>` (default `<namespace>-<name>.bfb`, persisted into spec.fileName once). A file
that is already there is trusted, as upstream does (users pre-seed the cache by hand): Ready without any
request (upstream passes through Downloading for one pass first). A Ready BFB is requeued every
`recheck_period` and each reconcile stats its file: a vanished file is downloaded again.

Downloads are tasks owned by this reconciler, keyed by the BFB's uid, at most `max_concurrent` at once
(`controller/provisioning/download.py` does the transfer). A reconcile never waits for one: a finished task
stores its outcome and enqueues the BFB's key, and the next reconcile writes the phase and the Event
(`SuccessfulDownload` with size, sha256 and duration; Warning `FailedDownload` naming the cause).

Better than upstream, on purpose: a failed download is phase Error and is retried on its own with
exponential back-off (`retry_base` doubling up to `retry_max`), going back to Downloading; upstream's Error
is terminal. Partials left by a crash are removed when the file is downloaded again.

Deletion: our finalizer `bfb-file` lets the file go before the object does. While the in-use protection
finalizer is present (a DPUSet/DPU uses the BFB; `inuse_protection.py` removes it once nothing does) this
reconciler does nothing: the file is in use. Then: phase Deleting, cancel the download, remove the file (kept
if another live BFB names the same file) and its partials, remove our finalizer.

Leadership: `close()` cancels every download and forgets the in-memory state (outcomes, back-off); the
manager must call it when this replica stops leading and when it stops.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from dpf.controller.api.provisioning import BFB as BFBModel
from dpf.controller.errors import PermanentError, TemporaryError
from dpf.controller.kube.events import NORMAL, WARNING
from dpf.controller.kube.informer import Informer, key_of, key_of_event
from dpf.controller.kube.rest import KubeError, Obj
from dpf.controller.provisioning import download as dl
from dpf.controller.reconcilers import objects
from dpf.controller.reconcilers.base import Reconciler
from dpf.controller.reconcilers.inuse_protection import BFB_FINALIZER as PROTECTION_FINALIZER
from dpf.controller.reconcilers.keys import ObjectKey
from dpf.controller.reconcilers.kinds import BFB

log = logging.getLogger(__name__)

FILE_FINALIZER = "provisioning.dpu.nvidia.com/bfb-file"
INITIALIZING, DOWNLOADING, READY, DELETING, ERROR = "Initializing", "Downloading", "Ready", "Deleting", "Error"
CANCEL_TIMEOUT = 10.0  # a cancelled download finishes its in-flight disk write within this, seconds


@dataclass
class _Download:
    key: ObjectKey
    path: Path
    partial: Path
    task: asyncio.Task[None]


@dataclass(frozen=True)
class _Failure:
    cause: str
    attempt: int  # consecutive failures of this object
    delay: float
    not_before: float  # monotonic time of the next attempt


class BFBReconciler(Reconciler):
    name = "bfb"
    kind = "BFB"

    def setup(self) -> None:
        self.informer: Informer = self.ctx.clusters.host.informer(BFB)
        self.informer.add_handler(
            lambda _t, old, new: self.ctx.queue.add(ObjectKey(self.name, *key_of_event(old, new))))
        self.settings = self.ctx.settings.bfb
        self._slots = asyncio.Semaphore(self.settings.max_concurrent)
        self._downloads: dict[str, _Download] = {}  # by uid: running or waiting for a slot
        self._outcomes: dict[str, dl.Downloaded | _Failure] = {}  # by uid: finished, not yet written
        self._failures: dict[str, _Failure] = {}  # by uid: the last failure, until a download succeeds
        self._written: dict[str, tuple[int, str]] = {}  # by uid: (resourceVersion, phase) of our last write

    def all_keys(self) -> Iterable[Hashable]:
        return [ObjectKey(self.name, *key_of(o)) for o in self.informer.list()]

    def synced(self) -> bool:
        return self.informer.synced.is_set()

    async def close(self) -> None:
        """Cancel every download (partials are removed) and forget outcomes and back-off. Idempotent; the
        reconciler may be used again afterwards (a new leader term starts from the objects' phases)."""
        downloads = list(self._downloads.values())
        for d in downloads:
            d.task.cancel()
        if downloads:
            await asyncio.wait({d.task for d in downloads}, timeout=CANCEL_TIMEOUT)
        self._downloads.clear()
        self._outcomes.clear()
        self._failures.clear()
        self._written.clear()

    # ---- reconcile ---------------------------------------------------------------------------------------
    async def reconcile(self, key: ObjectKey) -> float | None:
        namespace, name = key.namespace, key.name
        obj = self.informer.get(namespace, name)
        await self._drop_others(key, obj)
        if obj is None:
            return None
        if obj["metadata"].get("deletionTimestamp"):
            await self._delete(obj)
            return None
        file_name = _file_name(obj)
        obj = await self._own(obj, file_name)
        return await self._sync(key, obj, self.settings.directory / file_name)

    async def _sync(self, key: ObjectKey, obj: Obj, path: Path) -> float | None:
        uid = obj["metadata"]["uid"]
        running = self._downloads.get(uid)
        if running is not None and running.path == path:
            await self._set_phase(obj, DOWNLOADING)
            return None
        if running is not None:  # an empty fileName was filled in differently meanwhile: fetch the new name
            await self._cancel(uid)
        outcome = self._outcomes.get(uid)
        if isinstance(outcome, dl.Downloaded) and outcome.path == path:
            await self._set_phase(obj, READY)
            await self._event(obj, NORMAL, "SuccessfulDownload",
                              f"downloaded {_url(obj)} to {path}: {outcome.size} bytes, sha256 {outcome.sha256}, "
                              f"in {outcome.seconds:.1f}s")
            self._outcomes.pop(uid, None)
            return self.settings.recheck_period
        if isinstance(outcome, _Failure):
            await self._set_phase(obj, ERROR)
            await self._event(obj, WARNING, "FailedDownload",
                              f"{outcome.cause}; attempt {outcome.attempt}, retrying in {_seconds(outcome.delay)}")
        self._outcomes.pop(uid, None)  # written, or a download of a file name no longer wanted

        if await asyncio.to_thread(path.is_file):
            if _phase(obj) != READY:
                size = await asyncio.to_thread(lambda: path.stat().st_size)
                log.info("BFB %s: %s is already in the BFB directory (%d bytes); not downloading", _name(obj),
                         path, size)
                await self._set_phase(obj, READY)
                await self._event(obj, NORMAL, "SuccessfulDownload",
                                  f"found {path} already in the BFB directory ({size} bytes); not downloaded")
            self._failures.pop(uid, None)
            return self.settings.recheck_period

        failure = self._failures.get(uid)
        if failure is not None and (wait := failure.not_before - time.monotonic()) > 0:
            await self._set_phase(obj, ERROR)
            return wait
        if _phase(obj) == READY:
            log.warning("BFB %s: %s vanished from the BFB directory; downloading it again", _name(obj), path)
        self._start(key, obj, path)
        await self._set_phase(obj, DOWNLOADING)
        return None

    # ---- downloads ---------------------------------------------------------------------------------------
    def _start(self, key: ObjectKey, obj: Obj, path: Path) -> None:
        uid = obj["metadata"]["uid"]
        partial = dl.partial_path(path.parent, path.name, uid, secrets.token_hex(4))
        task = asyncio.create_task(self._download(key, uid, _url(obj), path, partial),
                                   name=f"bfb-download/{_name(obj)}")
        self._downloads[uid] = _Download(key, path, partial, task)
        self.ctx.metrics.bfb_downloads_active.inc()

    async def _download(self, key: ObjectKey, uid: str, url: str, path: Path, partial: Path) -> None:
        label = str(key)
        try:
            async with self._slots:
                try:
                    await self._remove_partials(path)
                except OSError as exc:  # they only take space: the download itself may still work
                    log.warning("BFB %s: cannot remove old partial downloads of %s: %s", label, path, exc)
                log.info("BFB %s: downloading %s to %s", label, url, path)
                result = await dl.download(url, path, partial, stall_timeout=self.settings.stall_timeout,
                                           label=label, on_bytes=self.ctx.metrics.bfb_download_bytes.inc)
            log.info("BFB %s: downloaded %s (%d bytes, sha256 %s) in %.1fs", label, path, result.size,
                     result.sha256, result.seconds)
            self.ctx.metrics.bfb_downloads.labels("success").inc()
            self._failures.pop(uid, None)
            self._outcomes[uid] = result
        except dl.DownloadError as exc:
            self._failed(uid, label, str(exc))
        except Exception as exc:  # a bug must not leave the BFB Downloading forever: Error, and retried
            log.exception("BFB %s: download crashed", label)
            self._failed(uid, label, f"download of {url} crashed: {exc!r}")
        finally:
            self.ctx.metrics.bfb_downloads_active.dec()
            self._downloads.pop(uid, None)
        self.ctx.queue.add(key)  # not reached when cancelled: whoever cancelled owns the next step

    def _failed(self, uid: str, label: str, cause: str) -> None:
        previous = self._failures.get(uid)
        attempt = previous.attempt + 1 if previous else 1
        delay = min(self.settings.retry_max, self.settings.retry_base * 2 ** (attempt - 1))
        failure = _Failure(cause, attempt, delay, time.monotonic() + delay)
        log.warning("BFB %s: %s (attempt %d; retrying in %s)", label, cause, attempt, _seconds(delay))
        self.ctx.metrics.bfb_downloads.labels("failure").inc()
        self._failures[uid] = self._outcomes[uid] = failure

    async def _remove_partials(self, path: Path) -> None:
        """Partials of this file name that no running download writes: left by a crash, a former leader or a
        cancelled download."""
        busy = {d.partial for d in self._downloads.values()}
        partials = await asyncio.to_thread(dl.partials_of, path.parent, path.name)
        for partial in (p for p in partials if p not in busy):
            if await asyncio.to_thread(dl.remove_file, partial):
                log.info("removed partial download %s", partial)

    async def _cancel(self, uid: str) -> None:
        running = self._downloads.get(uid)
        if running is None:
            return
        running.task.cancel()
        done, _ = await asyncio.wait({running.task}, timeout=CANCEL_TIMEOUT)
        if not done:
            raise TemporaryError(f"download of {running.path} is still stopping", 1.0)

    async def _drop_others(self, key: ObjectKey, obj: Obj | None) -> None:
        """Forget downloads and state of objects that had this key before (deleted, or deleted and re-created)."""
        uid = obj["metadata"]["uid"] if obj is not None else None
        stale = {u for u, d in self._downloads.items() if d.key == key and u != uid}
        for u in stale:
            await self._cancel(u)
        live = {o["metadata"]["uid"] for o in self.informer.list()}
        for table in (self._outcomes, self._failures, self._written):
            for u in [u for u in table if u not in live]:
                del table[u]

    # ---- deletion ----------------------------------------------------------------------------------------
    async def _delete(self, obj: Obj) -> None:
        finalizers = obj["metadata"].get("finalizers") or ()
        if FILE_FINALIZER not in finalizers or PROTECTION_FINALIZER in finalizers:
            return  # not ours to clean up, or still in use (or not yet checked) by the in-use protection
        uid = obj["metadata"]["uid"]
        obj = await self._set_phase(obj, DELETING)
        await self._cancel(uid)
        path = self.settings.directory / _file_name(obj)
        try:
            await self._remove_partials(path)
            if self._shared(obj, path.name):
                log.info("BFB %s deleted; keeping %s, another BFB names it too", _name(obj), path)
            elif await asyncio.to_thread(dl.remove_file, path):
                log.info("BFB %s deleted; removed %s", _name(obj), path)
        except OSError as exc:
            await self._event(obj, WARNING, "FailedDelete", f"cannot remove {path}: {exc.strerror or exc}")
            raise TemporaryError(f"removing {path}: {exc}") from None
        self._outcomes.pop(uid, None)
        self._failures.pop(uid, None)
        await objects.remove_finalizer(self.ctx.clusters.host.rest, BFB, obj, FILE_FINALIZER)

    def _shared(self, obj: Obj, file_name: str) -> bool:
        uid = obj["metadata"]["uid"]
        for other in self.informer.list():
            meta = other["metadata"]
            if meta["uid"] == uid or meta.get("deletionTimestamp"):
                continue
            try:
                if _file_name(other) == file_name:
                    return True
            except PermanentError:
                continue
        return False

    # ---- writes ------------------------------------------------------------------------------------------
    async def _own(self, obj: Obj, file_name: str) -> Obj:
        """Our finalizer, and spec.fileName persisted when empty (the CRD lets it be filled in once), in one
        resourceVersion-guarded patch."""
        meta = obj["metadata"]
        finalizers = list(meta.get("finalizers") or ())
        patch: dict = {}
        if FILE_FINALIZER not in finalizers:
            patch["metadata"] = {"finalizers": [*finalizers, FILE_FINALIZER]}
        if not (obj.get("spec") or {}).get("fileName"):
            patch["spec"] = {"fileName": file_name}
        if not patch:
            return obj
        patch.setdefault("metadata", {})["resourceVersion"] = meta["resourceVersion"]
        try:
            return await self.ctx.clusters.host.rest.merge_patch(BFB, meta["name"], patch, meta["namespace"])
        except KubeError as exc:
            if exc.conflict:
                raise TemporaryError(f"BFB {_name(obj)} changed meanwhile; retrying", objects.CACHE_LAG_RETRY) \
                    from None
            raise

    async def _set_phase(self, obj: Obj, phase: str) -> Obj:
        """Server-side apply status.phase unless it is already `phase`; returns the object as written (or `obj`).

        Skips the write when the freshest view (`obj` or the cache, which moves during a reconcile's awaits)
        shows `phase`, or when we wrote `phase` and the cache has not seen any later write. resourceVersions are
        etcd revisions; they are compared only to skip a redundant write, anything unexpected writes."""
        meta = obj["metadata"]
        cached = self.informer.get(meta["namespace"], meta["name"])
        seen, cached_rv = _revision(obj), _revision(cached)
        freshest = cached if cached is not None and cached_rv is not None and seen is not None \
            and cached_rv > seen else obj
        if _phase(freshest) == phase:
            return obj
        written = self._written.get(meta["uid"])
        if written is not None and written[1] == phase and cached_rv is not None and cached_rv <= written[0]:
            return obj
        body = {"apiVersion": BFB.api_version, "kind": BFB.kind,
                "metadata": {"name": meta["name"], "namespace": meta["namespace"]}, "status": {"phase": phase}}
        result = await self.ctx.clusters.host.rest.apply(BFB, body, self.ctx.settings.kube.field_manager,
                                                         subresource="status")
        revision = _revision(result)
        if revision is not None:
            self._written[meta["uid"]] = (revision, phase)
        log.info("BFB %s: phase %s → %s", _name(obj), _phase(freshest), phase)
        return result

    async def _event(self, obj: Obj, type_: str, reason: str, note: str) -> None:
        await self.ctx.events.emit(self.ctx.clusters.host.rest, obj, "BFB", type_, reason, note)


def _file_name(obj: Obj) -> str:
    try:
        return BFBModel.model_validate(obj).effective_file_name()
    except ValidationError as exc:  # the CRD schema makes this unreachable through the apiserver
        raise PermanentError(f"BFB {_name(obj)} is invalid: {exc.errors()[0].get('msg')}") from None


def _url(obj: Obj) -> str:
    return (obj.get("spec") or {}).get("url", "")


def _phase(obj: Obj) -> str:
    return (obj.get("status") or {}).get("phase") or INITIALIZING


def _revision(obj: Obj | None) -> int | None:
    try:
        return int(obj["metadata"]["resourceVersion"]) if obj is not None else None
    except (KeyError, ValueError):
        return None


def _seconds(value: float) -> str:
    return f"{value:.0f}s" if value >= 10 else f"{value:.1f}s"


def _name(obj: Obj) -> str:
    return objects.name_of(obj)
