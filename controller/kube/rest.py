"""Generic, unstructured Kubernetes REST access over kubernetes_asyncio's ApiClient.

Objects are plain dicts (the apiserver's JSON), so reconcilers do not depend on generated models or on
`dpf.controller.api`. The ApiClient supplies kubeconfig loading, TLS, auth and connection pooling.
Callers: informers, reconcilers, leader election, events. Never caches: that is `informer.py`'s job.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.client.exceptions import ApiException

Obj = dict[str, Any]


@dataclass(frozen=True)
class Kind:
    """One resource type: where it lives in the API."""

    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None, subresource: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name:
            base += f"/{name}"
            if subresource:
                base += f"/{subresource}"
        return base

    def __str__(self) -> str:
        return f"{self.plural}.{self.group or 'core'}"


class KubeError(Exception):
    """An apiserver answer other than success; `status` is the HTTP code (0: no answer)."""

    def __init__(self, status: int, reason: str, message: str = "") -> None:
        super().__init__(f"{status} {reason}: {message}" if message else f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @property
    def gone(self) -> bool:
        return self.status == 410


def _error(exc: ApiException) -> KubeError:
    message = ""
    reason = exc.reason or ""
    try:
        body = json.loads(exc.body) if exc.body else {}
        message = body.get("message", "")
        reason = body.get("reason", reason)
    except (TypeError, ValueError):
        message = str(exc.body or "")
    return KubeError(exc.status or 0, reason, message)


class Rest:
    """Typed-free REST verbs for one cluster. `name` labels logs and metrics ("host", "dpu/ns/name")."""

    def __init__(self, api: ApiClient, name: str, request_timeout: float = 30.0) -> None:
        self.api = api
        self.name = name
        self.request_timeout = request_timeout

    async def close(self) -> None:
        await self.api.close()
        # aiohttp closes TLS transports asynchronously; give the loop a moment so their sockets really close
        # (otherwise a process that exits right after leaks them, with ResourceWarnings).
        await asyncio.sleep(0.05)

    async def _call(self, method: str, path: str, *, query: list[tuple[str, Any]] | None = None,
                    body: Any = None, content_type: str | None = None) -> Obj:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        try:
            return await self.api.call_api(
                path, method, query_params=query or [], header_params=headers, body=body,
                response_types_map={200: "object", 201: "object", 202: "object"},
                auth_settings=["BearerToken"], _return_http_data_only=True,
                _request_timeout=self.request_timeout)
        except ApiException as exc:
            raise _error(exc) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise KubeError(0, "Unreachable", f"{self.name}: {exc!r}") from None

    async def get(self, kind: Kind, name: str, namespace: str | None = None) -> Obj | None:
        try:
            return await self._call("GET", kind.path(namespace, name))
        except KubeError as exc:
            if exc.not_found:
                return None
            raise

    async def list(self, kind: Kind, namespace: str | None = None, label_selector: str | None = None,
                   limit: int = 500, field_selector: str | None = None) -> Obj:
        """A consistent list (all pages); returns {"items": [...], "metadata": {"resourceVersion": ...}}."""
        items: list[Obj] = []
        cont = ""
        while True:
            query: list[tuple[str, Any]] = [("limit", limit)]
            if label_selector:
                query.append(("labelSelector", label_selector))
            if field_selector:
                query.append(("fieldSelector", field_selector))
            if cont:
                query.append(("continue", cont))
            page = await self._call("GET", kind.path(namespace), query=query)
            items.extend(page.get("items") or [])
            meta = page.get("metadata") or {}
            cont = meta.get("continue") or ""
            if not cont:
                return {"items": items, "metadata": {"resourceVersion": meta.get("resourceVersion", "")}}

    async def watch(self, kind: Kind, resource_version: str, timeout_seconds: int,
                    namespace: str | None = None, label_selector: str | None = None) -> AsyncIterator[Obj]:
        """Yield watch events ({"type", "object"}) from `resource_version`, bookmarks included.

        Ends when the server closes the watch (timeout). An ERROR event raises KubeError (410 Gone means the
        resourceVersion is too old: the caller must re-list).
        """
        query: list[tuple[str, Any]] = [
            ("watch", "true"), ("allowWatchBookmarks", "true"), ("resourceVersion", resource_version),
            ("timeoutSeconds", timeout_seconds)]
        if label_selector:
            query.append(("labelSelector", label_selector))
        try:
            response = await self.api.call_api(
                kind.path(namespace), "GET", query_params=query, header_params={"Accept": "application/json"},
                auth_settings=["BearerToken"], _preload_content=False,
                _request_timeout=aiohttp.ClientTimeout(connect=self.request_timeout,
                                                       sock_read=timeout_seconds + 30))
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise KubeError(0, "Unreachable", f"{self.name}: {exc!r}") from None
        try:
            if response.status != 200:
                text = await response.text()
                try:
                    message = json.loads(text).get("message", text)
                except ValueError:
                    message = text
                raise KubeError(response.status, response.reason or "", message)
            while True:
                try:
                    line = await response.content.readline()
                except (aiohttp.ClientError, TimeoutError) as exc:
                    raise KubeError(0, "WatchBroken", f"{self.name}: {exc!r}") from None
                if not line:
                    return
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    status = event.get("object") or {}
                    raise KubeError(int(status.get("code") or 0), status.get("reason", ""),
                                    status.get("message", ""))
                yield event
        finally:
            response.release()

    async def create(self, kind: Kind, body: Obj, namespace: str | None = None,
                     subresource: str | None = None) -> Obj:
        """POST `body`; with `subresource` (e.g. a pod's "eviction"), to that subresource of `body`'s object."""
        path = kind.path(namespace, body["metadata"]["name"], subresource) if subresource else kind.path(namespace)
        return await self._call("POST", path, body=body)

    async def apply(self, kind: Kind, body: Obj, field_manager: str, *, subresource: str | None = None,
                    force: bool = True) -> Obj:
        """Server-side apply of `body` (must carry apiVersion, kind, metadata.name[, namespace])."""
        meta = body["metadata"]
        query: list[tuple[str, Any]] = [("fieldManager", field_manager)]
        if force:
            query.append(("force", "true"))
        return await self._call("PATCH", kind.path(meta.get("namespace"), meta["name"], subresource),
                                query=query, body=body, content_type="application/apply-patch+yaml")

    async def merge_patch(self, kind: Kind, name: str, patch: Obj, namespace: str | None = None,
                          subresource: str | None = None) -> Obj:
        return await self._call("PATCH", kind.path(namespace, name, subresource), body=patch,
                                content_type="application/merge-patch+json")

    async def replace(self, kind: Kind, body: Obj, subresource: str | None = None) -> Obj:
        meta = body["metadata"]
        return await self._call("PUT", kind.path(meta.get("namespace"), meta["name"], subresource), body=body)

    async def delete(self, kind: Kind, name: str, namespace: str | None = None, *, uid: str | None = None,
                     resource_version: str | None = None) -> None:
        """Delete by name (absent is fine). With `uid`, only that incarnation: if the name now holds another
        object, the apiserver answers 409 Conflict (KubeError.conflict) and nothing is deleted. With
        `resource_version` too, only if the object has not changed since it was read."""
        preconditions = {k: v for k, v in (("uid", uid), ("resourceVersion", resource_version)) if v}
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "preconditions": preconditions} if preconditions else None
        try:
            await self._call("DELETE", kind.path(namespace, name), body=body)
        except KubeError as exc:
            if not exc.not_found:
                raise


# Kinds the controller core itself uses.
LEASE = Kind("coordination.k8s.io", "v1", "leases", "Lease")
EVENT = Kind("events.k8s.io", "v1", "events", "Event")
SECRET = Kind("", "v1", "secrets", "Secret")
