"""Kubernetes Events (events.k8s.io/v1) for notable transitions, e.g. an agent rejecting an object.

Repeats of the same (object, reason, note) within `dedupe_seconds` are dropped: a node NACKing on every
retry must not flood etcd. Emission never fails a reconcile: errors are logged.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable

from dpf.controller.kube.leader import _micro_time
from dpf.controller.kube.rest import EVENT, KubeError, Obj, Rest

log = logging.getLogger(__name__)

NORMAL, WARNING = "Normal", "Warning"


class EventRecorder:
    def __init__(self, controller: str, instance: str, dedupe_seconds: float = 300.0, max_remembered: int = 4096,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.controller = controller
        self.instance = instance
        self.dedupe_seconds = dedupe_seconds
        self._recent: OrderedDict[str, float] = OrderedDict()
        self._max = max_remembered
        self._clock = clock

    async def emit(self, rest: Rest, regarding: Obj, kind: str, type_: str, reason: str, note: str,
                   action: str = "Reconcile") -> bool:
        """Create one Event about `regarding` (an object dict with apiVersion/kind/metadata). True if created."""
        meta = regarding["metadata"]
        ident = f"{rest.name}|{meta.get('uid')}|{reason}|{note}"
        now = self._clock()
        seen = self._recent.get(ident)
        if seen is not None and now - seen < self.dedupe_seconds:
            return False
        self._recent[ident] = now
        self._recent.move_to_end(ident)
        while len(self._recent) > self._max:
            self._recent.popitem(last=False)
        namespace = meta.get("namespace") or "default"
        suffix = hashlib.sha256(f"{ident}|{now}".encode()).hexdigest()[:10]
        body = {
            "apiVersion": EVENT.api_version, "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{suffix}", "namespace": namespace},
            "eventTime": _micro_time(), "type": type_, "reason": reason, "action": action,
            "note": note[:1024], "reportingController": self.controller, "reportingInstance": self.instance[:128],
            "regarding": {"apiVersion": regarding.get("apiVersion", ""), "kind": kind,
                          "namespace": meta.get("namespace", ""), "name": meta["name"], "uid": meta.get("uid", ""),
                          "resourceVersion": meta.get("resourceVersion", "")},
        }
        try:
            await rest.create(EVENT, body, namespace)
        except KubeError as exc:
            log.warning("event %s on %s/%s not recorded: %s", reason, namespace, meta["name"], exc)
            return False
        return True
