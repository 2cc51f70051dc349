"""DPUServiceCredentialRequest → a ServiceAccount and its token in the target cluster, written as a Secret in the
host cluster and renewed before it expires (upstream DPF v24.10's credential request controller).

Per request (`ObjectKey("dpuservicecredentialrequest", namespace, name)`):
- Target: the host cluster, or the DPU cluster of `spec.targetCluster` (the DPUCluster reconciler's connection,
  made from its kubeconfig Secret). A DPUCluster that does not exist or is not connected yet is reported in
  `ServiceAccountReconciled` and tried again when it connects. Unset namespaces (`serviceAccount`, `secret`,
  `targetCluster`) mean the request's own, as upstream.
- ServiceAccount: server-side applied with `automountServiceAccountToken: false` and two labels naming the
  request (in a DPU cluster, its namespace is created when missing). One that exists without them was not
  made for this request: it is never taken over (no token is minted for someone else's account, e.g. the
  controller's own); the condition says so. The same holds for a Secret of that name.
- Token: TokenRequest with `expirationSeconds` = `spec.duration` (unset: the apiserver's default). Renewed when
  the token is inside the last 20% of its lifetime, older than 24h, or no longer matches the request (type,
  duration, account, cluster, server); otherwise reused. The next check is scheduled for the renewal point.
- Secret (host cluster, Opaque, `spec.metadata` labels/annotations plus the two request labels): key
  `kubeconfig` (one cluster with server and CA, a user and a context named after the ServiceAccount, token auth,
  context namespace = the account's), or the `tokenFile` keys KUBERNETES_SERVICE_HOST, KUBERNETES_SERVICE_PORT,
  KUBERNETES_CA_DATA (the CA, PEM) and TOKEN_FILE (the token). Server and CA are those the controller itself
  uses for that cluster.
- Status: `serviceAccount`, `targetCluster` (ns/name; absent for the host), `secret`, `issuedAt` and
  `expirationTimestamp` (the token's own `iat` and `exp` claims), and the conditions `ServiceAccountReconciled`,
  `SecretReconciled` and `Ready`.
- A renamed ServiceAccount or changed target: the old account (as status records it) is deleted; a moved
  Secret: the old one is deleted. Deletion, in order: the ServiceAccount (skipped when its DPUCluster is gone),
  then the Secret, then the finalizer `dpu.nvidia.com/dpuservicecredentialrequest`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from dpf.controller.api import conditions as cond
from dpf.controller.api.svc import DPUServiceCredentialRequest
from dpf.controller.clusters import Cluster
from dpf.controller.errors import TemporaryError
from dpf.controller.kube import events
from dpf.controller.kube.informer import Informer, key_of, key_of_event
from dpf.controller.kube.rest import SECRET, Kind, KubeError, Obj, Rest
from dpf.controller.reconcilers import objects
from dpf.controller.reconcilers.base import Reconciler
from dpf.controller.reconcilers.keys import ObjectKey
from dpf.controller.reconcilers.kinds import DPU_CLUSTER, SVC, V1ALPHA1

log = logging.getLogger(__name__)

CREDENTIAL_REQUEST = Kind(SVC, V1ALPHA1, "dpuservicecredentialrequests", "DPUServiceCredentialRequest")
SERVICE_ACCOUNT = Kind("", "v1", "serviceaccounts", "ServiceAccount")
FINALIZER = DPUServiceCredentialRequest.FINALIZERS[0]
NAME_LABEL = "dpu.nvidia.com/dpuservicecredentialrequest-name"
NAMESPACE_LABEL = "dpu.nvidia.com/dpuservicecredentialrequest-namespace"
FINGERPRINT_ANNOTATION = "dpu.nvidia.com/dpuservicecredentialrequest-token"
SA_RECONCILED, SECRET_RECONCILED = "ServiceAccountReconciled", "SecretReconciled"
TYPES = (cond.READY, SA_RECONCILED, SECRET_RECONCILED)
TARGET_INDEX = "target-cluster"
HOST = "host"

REFRESH_FRACTION = 0.2  # renew inside the last 20% of the lifetime (upstream)
MAX_TOKEN_AGE = timedelta(hours=24)  # and at least this often (upstream)
RETRY = 10.0  # a failed step (target not connected, a refusal): try again after this many seconds
MIN_REQUEUE = 1.0
TOKEN_KEYS = {"kubeconfig": ("kubeconfig",),
              "tokenFile": ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT", "KUBERNETES_CA_DATA", "TOKEN_FILE")}
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class StepFailed(Exception):
    """One step could not be done; `condition` is the condition to mark False, the message names the field."""

    def __init__(self, condition: str, reason: str, message: str) -> None:
        super().__init__(message)
        self.condition = condition
        self.reason = reason


@dataclass(frozen=True)
class Target:
    """Where the ServiceAccount lives: the cluster's client, its status name, and the server/CA it is reached at."""

    rest: Rest
    name: str | None  # "ns/name" of the DPUCluster; None for the host
    server: str
    ca: bytes

    @property
    def label(self) -> str:
        return f"DPU cluster {self.name}" if self.name else "the host cluster"


@dataclass(frozen=True)
class Token:
    token: str
    issued_at: datetime
    expires_at: datetime

    @property
    def ttl(self) -> timedelta:
        return self.expires_at - self.issued_at

    def refresh_at(self) -> datetime:
        """When a renewal is due: the last 20% of the lifetime, or 24h after issue, whichever comes first."""
        return min(self.expires_at - self.ttl * REFRESH_FRACTION, self.issued_at + MAX_TOKEN_AGE)


def parse_duration(text: str) -> float:
    """Go's time.ParseDuration for the units the CRD pattern allows (ms, s, m, h), in seconds."""
    if not text or _DURATION_PART.sub("", text):
        raise ValueError(f"{text!r} is not a duration like 24h, 90m or 1h30m")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(text))


def _jwt_claims(token: str) -> dict[str, Any]:
    try:
        payload = token.split(".")[1]
        return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return {}


def _token(raw: str) -> Token | None:
    """The token with its lifetime read from its own claims (iat, exp), or None if it has none."""
    claims = _jwt_claims(raw)
    iat, exp = claims.get("iat"), claims.get("exp")
    if not isinstance(iat, int) or not isinstance(exp, int):
        return None
    return Token(raw, datetime.fromtimestamp(iat, UTC), datetime.fromtimestamp(exp, UTC))


def _time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def _stamp(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ca_of(rest: Rest) -> tuple[str, bytes]:
    """The server URL and CA bundle (PEM) a client uses."""
    configuration = rest.api.configuration
    ca_path = getattr(configuration, "ssl_ca_cert", None)
    ca = Path(ca_path).read_bytes() if ca_path else b""
    return str(configuration.host), ca


def secret_data(kind: str, target: Target, account: str, account_namespace: str, token: str) -> dict[str, str]:
    """The Secret's data (plain text; base64 is added when written) for `kind` kubeconfig or tokenFile."""
    if kind == "kubeconfig":
        cluster = (target.name or HOST).replace("/", "-")
        document = {
            "apiVersion": "v1", "kind": "Config", "current-context": account,
            "clusters": [{"name": cluster, "cluster": {
                "server": target.server, "certificate-authority-data": base64.b64encode(target.ca).decode()}}],
            "users": [{"name": account, "user": {"token": token}}],
            "contexts": [{"name": account, "context": {"cluster": cluster, "user": account,
                                                        "namespace": account_namespace}}],
        }
        return {"kubeconfig": yaml.safe_dump(document, sort_keys=False)}
    url = urlsplit(target.server)
    port = url.port or (443 if url.scheme == "https" else 80)
    return {"KUBERNETES_SERVICE_HOST": url.hostname or "", "KUBERNETES_SERVICE_PORT": str(port),
            "KUBERNETES_CA_DATA": target.ca.decode(), "TOKEN_FILE": token}


class CredentialRequestReconciler(Reconciler):
    name = "dpuservicecredentialrequest"
    kind = "DPUServiceCredentialRequest"

    def setup(self) -> None:
        self.clock: Callable[[], datetime] = objects.now  # tests move it to reach a renewal point
        self._expiries: dict[tuple[str, str], float] = {}  # request -> its token's expiry (unix time)
        host = self.ctx.clusters.host
        self.requests: Informer = host.informer(CREDENTIAL_REQUEST)
        self.requests.add_index(TARGET_INDEX, lambda o: [t] if (t := _target_name(o)) else [])
        self.requests.add_handler(lambda _t, old, new: self._enqueue(*key_of_event(old, new)))
        self.clusters: Informer = host.informer(DPU_CLUSTER)
        self.clusters.add_handler(lambda _t, old, new: self._enqueue_for(
            "/".join(key_of_event(old, new))))
        self.ctx.clusters.on_dpu_added(lambda c: self._enqueue_for(c.name))

    def _enqueue(self, namespace: str, name: str) -> None:
        self.ctx.queue.add(ObjectKey(self.name, namespace, name))

    async def close(self) -> None:
        """A term ends: a follower keeps no tokens, so it shows no expiry (the next leader's first pass does)."""
        self._expiries.clear()
        self._show_expiry()

    def _enqueue_for(self, cluster: str) -> None:
        for obj in self.requests.by_index(TARGET_INDEX, cluster):
            self._enqueue(*key_of(obj))

    def all_keys(self) -> Iterable[Hashable]:
        return [ObjectKey(self.name, *key_of(o)) for o in self.requests.list()]

    def synced(self) -> bool:
        return self.requests.synced.is_set() and self.clusters.synced.is_set()

    # ---- reconcile ---------------------------------------------------------------------------------------
    async def reconcile(self, key: ObjectKey) -> float | None:
        obj = self.requests.get(key.namespace, key.name)
        if obj is None or obj["metadata"].get("deletionTimestamp"):
            self._expiries.pop((key.namespace, key.name), None)
            self._show_expiry()
        if obj is None:
            return None
        rest = self.ctx.clusters.host.rest
        if obj["metadata"].get("deletionTimestamp"):
            return await self._delete(obj)
        obj = await objects.add_finalizer(rest, CREDENTIAL_REQUEST, obj, FINALIZER)
        spec = obj.get("spec") or {}
        namespace = obj["metadata"]["namespace"]
        account = spec["serviceAccount"]["name"]
        account_ns = spec["serviceAccount"].get("namespace") or namespace
        secret_name = spec["secret"]["name"]
        secret_ns = spec["secret"].get("namespace") or namespace
        status = obj.get("status") or {}
        marks: list[tuple[str, str, str, str]] = []
        extra: dict[str, Any] = {"serviceAccount": status.get("serviceAccount"),
                                 "targetCluster": status.get("targetCluster"), "secret": status.get("secret"),
                                 "issuedAt": status.get("issuedAt"),
                                 "expirationTimestamp": status.get("expirationTimestamp")}
        delay: float | None = None
        try:
            target = self._target(obj)
            await self._forget_old_account(obj, target, f"{account_ns}/{account}")
            await self._ensure_account(obj, target, account, account_ns)
            marks.append((SA_RECONCILED, "True", cond.SUCCESS, ""))
            extra.update(serviceAccount=f"{account_ns}/{account}", targetCluster=target.name)
            await self._forget_old_secret(obj, f"{secret_ns}/{secret_name}")
            token = await self._ensure_secret(obj, target, account, account_ns, secret_name, secret_ns)
            marks.append((SECRET_RECONCILED, "True", cond.SUCCESS, ""))
            extra.update(secret=f"{secret_ns}/{secret_name}", issuedAt=_stamp(token.issued_at),
                         expirationTimestamp=_stamp(token.expires_at))
            delay = max(MIN_REQUEUE, (token.refresh_at() - self.clock()).total_seconds())
            self._expiries[(key.namespace, key.name)] = token.expires_at.timestamp()
        except StepFailed as failed:
            marks.append((failed.condition, "False", failed.reason, str(failed)))
            self.ctx.metrics.credential_failures.labels(failed.condition).inc()
            if failed.reason == cond.ERROR:  # Pending (a cluster not connected yet) is waiting, not a failure
                await self.ctx.events.emit(rest, obj, self.kind, events.WARNING, f"{failed.condition}Failed",
                                           str(failed))
            if failed.condition == SA_RECONCILED:
                marks.append((SECRET_RECONCILED, "False", cond.PENDING, "waiting for the ServiceAccount"))
            delay = RETRY
        conditions = objects.build_conditions(obj, TYPES, marks, objects.now())
        body = objects.status_body(obj, conditions, **extra)
        if extra.get("targetCluster") is None:
            body.pop("targetCluster", None)
        self._show_expiry()
        await objects.write_status(rest, CREDENTIAL_REQUEST, obj, body, self.ctx.settings.kube.field_manager)
        return delay

    def _show_expiry(self) -> None:
        """The soonest expiry among kept tokens (0 when none): one gauge, not a series per request."""
        self.ctx.metrics.credential_expiry.set(min(self._expiries.values(), default=0.0))

    # ---- the target cluster --------------------------------------------------------------------------------
    def _target(self, obj: Obj) -> Target:
        name = _target_name(obj)
        if name is None:
            server, ca = _ca_of(self.ctx.clusters.host.rest)
            return Target(self.ctx.clusters.host.rest, None, server, ca)
        namespace, cluster_name = name.split("/", 1)
        if self.clusters.get(namespace, cluster_name) is None:
            raise StepFailed(SA_RECONCILED, cond.PENDING,
                             f"spec.targetCluster: DPUCluster {name} does not exist")
        cluster = self.ctx.clusters.dpu.get(name)
        if cluster is None:
            raise StepFailed(SA_RECONCILED, cond.PENDING,
                             f"spec.targetCluster: DPUCluster {name} is not connected (see its Created condition)")
        server, ca = _ca_of(cluster.rest)
        return Target(cluster.rest, name, server, ca)

    def _recorded_target(self, obj: Obj) -> Rest | None:
        """The client of the cluster status says the account was made in (None: that DPUCluster is gone)."""
        recorded = (obj.get("status") or {}).get("targetCluster")
        if not recorded:
            return self.ctx.clusters.host.rest
        cluster: Cluster | None = self.ctx.clusters.dpu.get(recorded)
        if cluster is not None:
            return cluster.rest
        namespace, name = recorded.split("/", 1)
        if self.clusters.get(namespace, name) is None:
            return None  # the cluster is gone, and its account with it
        raise TemporaryError(f"DPUCluster {recorded} (where the old ServiceAccount is) is not connected", RETRY)

    # ---- the ServiceAccount --------------------------------------------------------------------------------
    async def _ensure_account(self, obj: Obj, target: Target, account: str, account_ns: str) -> None:
        labels = _labels(obj)
        where = f"ServiceAccount {account_ns}/{account} in {target.label}"
        try:
            current = await target.rest.get(SERVICE_ACCOUNT, account, account_ns)
        except KubeError as exc:
            raise StepFailed(SA_RECONCILED, cond.ERROR, f"spec.serviceAccount: reading {where}: {exc}") from None
        if current is not None:
            held = current["metadata"].get("labels") or {}
            if any(held.get(k) != v for k, v in labels.items()):
                raise StepFailed(SA_RECONCILED, cond.ERROR,
                                 f"spec.serviceAccount: {where} exists and was not made for this "
                                 "DPUServiceCredentialRequest; it is not taken over: name another account")
            if current.get("automountServiceAccountToken") is False:
                return
        body = {"apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": account, "namespace": account_ns, "labels": labels},
                "automountServiceAccountToken": False}
        try:
            try:
                await target.rest.apply(SERVICE_ACCOUNT, body, self.ctx.settings.kube.field_manager)
            except KubeError as exc:
                if not (exc.not_found and target.name):
                    raise
                # A DPU cluster gets the namespace made, as the mirror does for its sets (never the host).
                await objects.ensure_namespace(target.rest, account_ns)
                await target.rest.apply(SERVICE_ACCOUNT, body, self.ctx.settings.kube.field_manager)
        except KubeError as exc:
            raise StepFailed(SA_RECONCILED, cond.ERROR, _field_error("spec.serviceAccount", where, exc)) from None

    async def _forget_old_account(self, obj: Obj, target: Target, current: str) -> None:
        status = obj.get("status") or {}
        recorded = status.get("serviceAccount")
        if not recorded or (recorded == current and status.get("targetCluster") == target.name):
            return
        rest = self._recorded_target(obj)
        if rest is not None:
            await self._delete_account(obj, rest, recorded)
            log.info("DPUServiceCredentialRequest %s: old ServiceAccount %s (%s) deleted", objects.name_of(obj),
                     recorded, status.get("targetCluster") or HOST)

    async def _delete_account(self, obj: Obj, rest: Rest, account: str) -> None:
        namespace, name = account.split("/", 1)
        current = await rest.get(SERVICE_ACCOUNT, name, namespace)
        if current is None:
            return
        held = current["metadata"].get("labels") or {}
        if any(held.get(k) != v for k, v in _labels(obj).items()):
            return  # not ours (never taken over): leave it
        await rest.delete(SERVICE_ACCOUNT, name, namespace, uid=current["metadata"]["uid"])

    # ---- the token and the Secret --------------------------------------------------------------------------
    async def _ensure_secret(self, obj: Obj, target: Target, account: str, account_ns: str, secret_name: str,
                             secret_ns: str) -> Token:
        spec = obj["spec"]
        kind = spec["type"]
        duration = spec.get("duration")
        fingerprint = hashlib.sha256(json.dumps(
            [kind, duration or "", account_ns, account, target.name or HOST, target.server,
             hashlib.sha256(target.ca).hexdigest()]).encode()).hexdigest()[:32]
        host = self.ctx.clusters.host.rest
        where = f"Secret {secret_ns}/{secret_name}"
        try:
            current = await host.get(SECRET, secret_name, secret_ns)
        except KubeError as exc:
            raise StepFailed(SECRET_RECONCILED, cond.ERROR, f"spec.secret: reading {where}: {exc}") from None
        if current is not None and any((current["metadata"].get("labels") or {}).get(k) != v
                                       for k, v in _labels(obj).items()):
            raise StepFailed(SECRET_RECONCILED, cond.ERROR,
                             f"spec.secret: {where} exists and was not made for this DPUServiceCredentialRequest; "
                             "it is not overwritten: name another Secret")
        token = self._reusable(obj, current, fingerprint, kind)
        if token is None:
            token = await self._issue(target, account, account_ns, duration)
            why = _why_issued(current, fingerprint)
            log.info("DPUServiceCredentialRequest %s: token issued (%s) for %s/%s in %s, expires %s",
                     objects.name_of(obj), why, account_ns, account, target.label, _stamp(token.expires_at))
            self.ctx.metrics.credential_tokens.labels("dpucluster" if target.name else HOST, why).inc()
            await self.ctx.events.emit(
                host, obj, self.kind, events.NORMAL, "TokenIssued" if why == "new" else "TokenRenewed",
                f"token for ServiceAccount {account_ns}/{account} in {target.label} written to {where} "
                f"({why}); it expires at {_stamp(token.expires_at)}")
        data = secret_data(kind, target, account, account_ns, token.token)
        meta = spec.get("metadata") or {}
        body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": secret_name, "namespace": secret_ns,
                             "labels": {**(meta.get("labels") or {}), **_labels(obj)},
                             "annotations": {**(meta.get("annotations") or {}), FINGERPRINT_ANNOTATION: fingerprint}},
                "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}
        if current is None or _secret_differs(current, body):
            try:
                await host.apply(SECRET, body, self.ctx.settings.kube.field_manager)
            except KubeError as exc:
                raise StepFailed(SECRET_RECONCILED, cond.ERROR, _field_error("spec.secret", where, exc)) from None
        return token

    def _reusable(self, obj: Obj, current: Obj | None, fingerprint: str, kind: str) -> Token | None:
        """The token in the current Secret if it was issued for this request as it is now and is not due. Its
    lifetime comes from the token's own claims, never from status (which our cache may not show yet)."""
        if current is None:
            return None
        if (current["metadata"].get("annotations") or {}).get(FINGERPRINT_ANNOTATION) != fingerprint:
            return None
        data = current.get("data") or {}
        if set(data) != set(TOKEN_KEYS[kind]):
            return None
        try:
            if kind == "kubeconfig":
                document = yaml.safe_load(base64.b64decode(data["kubeconfig"]))
                raw = document["users"][0]["user"]["token"]
            else:
                raw = base64.b64decode(data["TOKEN_FILE"]).decode()
        except (KeyError, IndexError, TypeError, ValueError, yaml.YAMLError):
            return None
        token = _token(raw)
        return token if token is not None and self.clock() < token.refresh_at() else None

    async def _issue(self, target: Target, account: str, account_ns: str, duration: str | None) -> Token:
        spec: dict[str, Any] = {}
        if duration:
            spec["expirationSeconds"] = int(parse_duration(duration))
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                "metadata": {"name": account, "namespace": account_ns}, "spec": spec}
        try:
            answer = await target.rest.create(SERVICE_ACCOUNT, body, account_ns, subresource="token")
        except KubeError as exc:
            field = "spec.duration" if "expirationSeconds" in exc.message or "duration" in exc.message \
                else "spec.serviceAccount"
            raise StepFailed(SECRET_RECONCILED, cond.ERROR,
                             f"{field}: TokenRequest for ServiceAccount {account_ns}/{account} in {target.label} "
                             f"refused: {exc}") from None
        raw = answer["status"]["token"]
        token = _token(raw)
        if token is None:  # not a JWT with iat/exp: trust the answer's expiry, issued now
            expires = _time(answer["status"]["expirationTimestamp"]) or objects.now()
            token = Token(raw, objects.now(), expires)
        return token

    async def _forget_old_secret(self, obj: Obj, current: str) -> None:
        recorded = (obj.get("status") or {}).get("secret")
        if recorded and recorded != current:
            await self._delete_secret(obj, recorded)

    async def _delete_secret(self, obj: Obj, secret: str) -> None:
        namespace, name = secret.split("/", 1)
        host = self.ctx.clusters.host.rest
        current = await host.get(SECRET, name, namespace)
        if current is None:
            return
        if any((current["metadata"].get("labels") or {}).get(k) != v for k, v in _labels(obj).items()):
            return
        await host.delete(SECRET, name, namespace, uid=current["metadata"]["uid"])

    # ---- deletion ----------------------------------------------------------------------------------------
    async def _delete(self, obj: Obj) -> float | None:
        if FINALIZER not in (obj["metadata"].get("finalizers") or ()):
            return None
        status = obj.get("status") or {}
        account = status.get("serviceAccount")
        if account:
            rest = self._recorded_target(obj)
            if rest is not None:
                await self._delete_account(obj, rest, account)
        spec_secret = (obj.get("spec") or {}).get("secret") or {}
        secret = status.get("secret") or (
            f"{spec_secret.get('namespace') or obj['metadata']['namespace']}/{spec_secret['name']}"
            if spec_secret.get("name") else None)
        if secret:
            await self._delete_secret(obj, secret)  # only one carrying this request's labels
        await objects.remove_finalizer(self.ctx.clusters.host.rest, CREDENTIAL_REQUEST, obj, FINALIZER)
        return None


def _why_issued(current: Obj | None, fingerprint: str) -> str:
    """new: no Secret yet; changed: the request (type, duration, account, cluster) differs from the one the
    Secret's token was issued for; renewal: the same request, its token due (last fifth, or a day old)."""
    if current is None:
        return "new"
    held = (current["metadata"].get("annotations") or {}).get(FINGERPRINT_ANNOTATION)
    return "renewal" if held == fingerprint else "changed"


def _target_name(obj: Obj) -> str | None:
    target = (obj.get("spec") or {}).get("targetCluster")
    if not target or not target.get("name"):
        return None
    return f"{target.get('namespace') or obj['metadata']['namespace']}/{target['name']}"


def _labels(obj: Obj) -> dict[str, str]:
    meta = obj["metadata"]
    return {NAME_LABEL: meta["name"], NAMESPACE_LABEL: meta["namespace"]}


def _secret_differs(current: Obj, desired: Obj) -> bool:
    if current.get("type") != desired["type"] or (current.get("data") or {}) != desired["data"]:
        return True
    for key in ("labels", "annotations"):
        held = current["metadata"].get(key) or {}
        if any(held.get(k) != v for k, v in desired["metadata"][key].items()):
            return True
    return False



def _field_error(field: str, where: str, exc: KubeError) -> str:
    if exc.status == 404 and exc.reason == "NotFound":
        return f"{field}: writing {where}: its namespace does not exist ({exc.message})"
    return f"{field}: writing {where}: {exc}"
