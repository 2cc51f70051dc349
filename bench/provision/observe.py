"""The bench's own view of the DPUs: one watch on a thread, re-listed (paged) only when the watch cannot resume.

Why not a list per second: at N=1000 a full list of the DPUs every second is itself load on the host apiserver
the bench measures, and the list broke there (`IncompleteRead`) on a loaded host, which ended the run. A watch
costs the apiserver one event per change, times each phase change when it happens rather than at the next
poll, and a broken watch is only resumed (from the last resourceVersion), or re-listed in pages with a timeout
when the apiserver no longer has that version (410). Nothing here raises into the bench: a failure is counted,
said, and retried after a second.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import watch as k8s_watch

PAGE = 250
LIST_TIMEOUT = (10, 60)  # connect, read seconds of one page
WATCH_SECONDS = 240  # the apiserver ends a watch after this; it is resumed from the last resourceVersion
WATCH_READ_TIMEOUT = WATCH_SECONDS + 30  # a stalled connection (no event, no end) is given up after this


class DpuWatch:
    """Per DPU: when it was first seen, each phase it went through (with when), when it was first Ready."""

    def __init__(self, kubeconfig: Path, group: str, version: str, namespace: str,
                 say: Callable[[str], None]) -> None:
        self.api = k8s.CustomObjectsApi(k8s_config.new_client_from_config(str(kubeconfig)))
        self.group, self.version, self.namespace = group, version, namespace
        self.say = say
        self.first_seen: dict[str, float] = {}
        self.ready_at: dict[str, float] = {}
        self.transitions: dict[str, list[tuple[str, float]]] = {}
        self.phase: dict[str, str] = {}
        self.failures = 0
        self.relists = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dpu-watch", daemon=True)

    def start(self) -> DpuWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()  # the watch thread ends at its next event or timeout (a daemon: never waited on)

    def phase_counts(self) -> dict[str, int]:
        with self._lock:
            counts: dict[str, int] = {}
            for phase in self.phase.values():
                counts[phase or "-"] = counts.get(phase or "-", 0) + 1
            return dict(sorted(counts.items(), key=lambda kv: -kv[1]))

    def _seen(self, dpu: dict[str, Any], now: float) -> None:
        name = dpu["metadata"]["name"]
        phase = (dpu.get("status") or {}).get("phase", "")
        with self._lock:
            self.first_seen.setdefault(name, now)
            self.phase[name] = phase
            seen = self.transitions.setdefault(name, [])
            if not seen or seen[-1][0] != phase:
                seen.append((phase, now))
            if phase == "Ready":
                self.ready_at.setdefault(name, now)

    def _list(self) -> str:
        """Every DPU, in pages; the list's resourceVersion, to watch from."""
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"limit": PAGE, "_request_timeout": LIST_TIMEOUT}
            if token:
                kwargs["_continue"] = token
            page = self.api.list_namespaced_custom_object(self.group, self.version, self.namespace, "dpus", **kwargs)
            now = time.monotonic()
            for dpu in page["items"]:
                self._seen(dpu, now)
            token = page["metadata"].get("continue")
            if not token:
                return str(page["metadata"]["resourceVersion"])

    def _run(self) -> None:
        resource_version: str | None = None
        while not self._stop.is_set():
            try:
                if resource_version is None:
                    resource_version = self._list()
                    self.relists += 1
                stream = k8s_watch.Watch().stream(
                    self.api.list_namespaced_custom_object, self.group, self.version, self.namespace, "dpus",
                    resource_version=resource_version, timeout_seconds=WATCH_SECONDS, allow_watch_bookmarks=True,
                    _request_timeout=(10, WATCH_READ_TIMEOUT))
                for event in stream:
                    if self._stop.is_set():
                        return
                    obj = event["object"]
                    if event["type"] == "ERROR":  # a 410 delivered as an event: list again
                        raise k8s.ApiException(status=(obj or {}).get("code", 500), reason="watch error event")
                    resource_version = obj["metadata"]["resourceVersion"]
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._seen(obj, time.monotonic())
            except k8s.ApiException as exc:
                self._failed(f"{exc.status} {exc.reason}")
                if exc.status == 410:
                    resource_version = None
            except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:  # an overloaded apiserver
                self._failed(f"{type(exc).__name__}: {exc}")

    def _failed(self, what: str) -> None:
        if self._stop.is_set():  # the bench is tearing its clusters down
            return
        self.failures += 1
        self.say(f"the bench's DPU watch broke ({what}); resuming in 1 s")
        self._stop.wait(1.0)
