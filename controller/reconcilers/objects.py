"""Writes every svc.* reconciler needs, each one request and only when something differs: add/remove our
finalizer (a merge patch guarded by resourceVersion, so a concurrent edit gives 409 and a retry instead of
a lost finalizer), server-side apply of a child object, and the status subresource (conditions built with
`controller/api/conditions.py`). Also the pure helpers around them. Callers: the mirror and per-node set
reconcilers. Never reads from the apiserver: objects come from the watch caches.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from dpf.controller.api import conditions as cond
from dpf.controller.api.meta import Condition
from dpf.controller.errors import TemporaryError
from dpf.controller.kube.rest import Kind, KubeError, Obj, Rest
from dpf.controller.reconcilers.kinds import NAMESPACE

CACHE_LAG_RETRY = 0.05  # a 409 on a resourceVersion-guarded patch: our cache is one event behind

# Annotations that describe how an object was written, not what it should carry to its children.
_TOOLING_PREFIXES = ("kubectl.kubernetes.io/", "deployment.kubernetes.io/")


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def name_of(obj: Mapping[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{meta.get('namespace', '')}/{meta['name']}"


def carried_annotations(annotations: Mapping[str, str] | None) -> dict[str, str]:
    return {k: v for k, v in (annotations or {}).items() if not k.startswith(_TOOLING_PREFIXES)}


def owner_reference(owner: Obj) -> dict[str, Any]:
    return {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["metadata"]["name"],
            "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}


def controller_uid(kind: str) -> Any:
    """An informer index function: the uid of the object's controlling owner of `kind`."""
    def index(obj: Obj) -> list[str]:
        return [ref["uid"] for ref in obj["metadata"].get("ownerReferences") or ()
                if ref.get("controller") and ref.get("kind") == kind and ref.get("uid")]
    return index


def controller_name(obj: Obj, kind: str) -> str | None:
    for ref in obj["metadata"].get("ownerReferences") or ():
        if ref.get("controller") and ref.get("kind") == kind:
            return ref.get("name")
    return None


def current_conditions(obj: Obj) -> list[Condition]:
    """The object's conditions as models; entries that do not parse (another writer's bug) are dropped."""
    out = []
    for raw in (obj.get("status") or {}).get("conditions") or ():
        try:
            out.append(Condition.model_validate(raw))
        except ValidationError:
            continue
    return out


def build_conditions(obj: Obj, types: Sequence[str], marks: Iterable[tuple[str, str, str, str]],
                     at: datetime) -> list[Condition]:
    """Our condition types on `obj` after `marks` ((type, status, reason, message)), with Ready summarized.

    Seeds missing types as Unknown/Pending, keeps lastTransitionTime when a status does not change, and
    returns only `types` (other writers' conditions are theirs). Pure: the clock is `at`.
    """
    generation = int(obj["metadata"].get("generation") or 0)
    conditions = [c for c in current_conditions(obj) if c.type in types]
    conditions = cond.ensure(conditions, types, now=at, generation=generation)
    for type_, status, reason, message in marks:
        conditions = cond.set_condition(conditions, type_, status, reason, message, now=at, generation=generation)
    return cond.summarize(conditions, now=at, generation=generation)


def status_differs(obj: Obj, desired: Mapping[str, Any], absent: Sequence[str] = ()) -> bool:
    """Whether obj's status lacks what `desired` says, or still holds a key of `absent` (dropped from the apply,
    so the server removes it)."""
    current = obj.get("status") or {}
    return any(current.get(key) != value for key, value in desired.items()) or any(k in current for k in absent)


def status_body(obj: Obj, conditions: Sequence[Condition], **extra: Any) -> dict[str, Any]:
    """The status we own: conditions, observedGeneration and kind-specific fields (JSON form)."""
    body: dict[str, Any] = {"conditions": [c.to_json() for c in conditions],
                            "observedGeneration": int(obj["metadata"].get("generation") or 0)}
    body.update({k: v for k, v in extra.items() if v is not None})
    return body


async def write_status(rest: Rest, kind: Kind, obj: Obj, status: Mapping[str, Any], field_manager: str,
                       absent: Sequence[str] = ()) -> bool:
    """Server-side apply `status` to obj's status subresource if it differs from the cached object (or still
    holds a key of `absent`)."""
    if not status_differs(obj, status, absent):
        return False
    meta = obj["metadata"]
    body = {"apiVersion": kind.api_version, "kind": kind.kind,
            "metadata": {"name": meta["name"], "namespace": meta.get("namespace", "")}, "status": dict(status)}
    await rest.apply(kind, body, field_manager, subresource="status")
    return True


async def add_finalizer(rest: Rest, kind: Kind, obj: Obj, finalizer: str) -> Obj:
    """Ensure `finalizer` is on obj (returns the object as written, or obj unchanged)."""
    finalizers = list(obj["metadata"].get("finalizers") or ())
    if finalizer in finalizers:
        return obj
    meta = obj["metadata"]
    patch = {"metadata": {"finalizers": [*finalizers, finalizer], "resourceVersion": meta["resourceVersion"]}}
    return await _guarded_patch(rest, kind, obj, patch)


async def remove_finalizer(rest: Rest, kind: Kind, obj: Obj, finalizer: str) -> None:
    finalizers = list(obj["metadata"].get("finalizers") or ())
    if finalizer not in finalizers:
        return
    meta = obj["metadata"]
    patch = {"metadata": {"finalizers": [f for f in finalizers if f != finalizer],
                          "resourceVersion": meta["resourceVersion"]}}
    await _guarded_patch(rest, kind, obj, patch)


async def _guarded_patch(rest: Rest, kind: Kind, obj: Obj, patch: Obj) -> Obj:
    meta = obj["metadata"]
    try:
        return await rest.merge_patch(kind, meta["name"], patch, meta.get("namespace"))
    except KubeError as exc:
        if exc.conflict:
            raise TemporaryError(f"{kind.kind} {name_of(obj)} changed meanwhile; retrying", CACHE_LAG_RETRY) \
                from None
        raise


def child_differs(current: Obj | None, desired: Obj) -> bool:
    """True if applying `desired` (labels, annotations, owners, spec) would change `current`."""
    if current is None:
        return True
    have, want = current["metadata"], desired["metadata"]
    for key in ("labels", "annotations"):
        held = have.get(key) or {}
        if any(held.get(k) != v for k, v in (want.get(key) or {}).items()):
            return True
    uids = {ref.get("uid") for ref in have.get("ownerReferences") or ()}
    if any(ref["uid"] not in uids for ref in want.get("ownerReferences") or ()):
        return True
    return current.get("spec") != desired.get("spec")


async def ensure_namespace(rest: Rest, namespace: str) -> None:
    """Create `namespace` when missing: create-only (some roles grant create on namespaces, not get), and
    AlreadyExists is success."""
    try:
        await rest.create(NAMESPACE, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    except KubeError as exc:
        if not exc.conflict:
            raise
