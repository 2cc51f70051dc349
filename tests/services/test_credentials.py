"""DPUServiceCredentialRequest against real apiservers: the host control plane and a DPU cluster (`dpu_kube`).

The controller runs in-process as an admin. Every credential it writes is used: the Secret's kubeconfig or
token-file keys authenticate against the cluster they name as the ServiceAccount (SelfSubjectReview). Renewal is
reached by moving the reconciler's clock into the last 20% of a real token's lifetime (the apiserver refuses
tokens shorter than 10 minutes, so the lifetime itself cannot be shortened to test seconds).
"""

from __future__ import annotations

import base64
import json
import random
import re
import string
from datetime import UTC, datetime, timedelta
from typing import Any

import yaml

from dpf.controller.kube import clients
from dpf.controller.kube.rest import EVENT, SECRET, Kind, Obj, Rest
from dpf.controller.manager import Controller
from dpf.controller.reconcilers import objects
from dpf.controller.reconcilers.credentials import (
    CREDENTIAL_REQUEST,
    NAME_LABEL,
    SERVICE_ACCOUNT,
    CredentialRequestReconciler,
)
from dpf.controller.reconcilers.keys import ObjectKey
from dpf.lab.bed.kube import ControlPlane
from tests.api.helpers import create, refusal
from tests.controlplane.harness import controller_settings, dpu_cluster, eventually, host_rest, run, started

REVIEW = Kind("authentication.k8s.io", "v1", "selfsubjectreviews", "SelfSubjectReview", namespaced=False)


def request(namespace: str, name: str, **spec: Any) -> Obj:
    body = {"serviceAccount": {"name": f"{name}-sa"}, "type": "tokenFile", "secret": {"name": f"{name}-creds"},
            **spec}
    return {"apiVersion": CREDENTIAL_REQUEST.api_version, "kind": CREDENTIAL_REQUEST.kind,
            "metadata": {"name": name, "namespace": namespace}, "spec": body}


def condition(obj: Obj | None, type_: str) -> dict[str, Any]:
    return next((c for c in ((obj or {}).get("status") or {}).get("conditions") or () if c["type"] == type_), {})


async def ready(rest: Rest, namespace: str, name: str, **status: Any) -> Obj:
    async def check() -> Obj | None:
        obj = await rest.get(CREDENTIAL_REQUEST, name, namespace)
        if condition(obj, "Ready").get("status") != "True":
            return None
        held = obj.get("status") or {}  # type: ignore[union-attr]
        return obj if all(held.get(k) == v for k, v in status.items()) else None
    return await eventually(check, f"{namespace}/{name} Ready with {status}")


def decoded(secret: Obj) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}


def kubeconfig_of(secret: Obj) -> dict[str, Any]:
    data = decoded(secret)
    if "kubeconfig" in data:
        return yaml.safe_load(data["kubeconfig"])
    host = data["KUBERNETES_SERVICE_HOST"]
    host = f"[{host}]" if ":" in host else host
    return {"apiVersion": "v1", "kind": "Config", "current-context": "c",
            "clusters": [{"name": "c", "cluster": {
                "server": f"https://{host}:{data['KUBERNETES_SERVICE_PORT']}",
                "certificate-authority-data": base64.b64encode(data["KUBERNETES_CA_DATA"].encode()).decode()}}],
            "users": [{"name": "u", "user": {"token": data["TOKEN_FILE"]}}],
            "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}


async def whoami(secret: Obj) -> str:
    """The user the Secret's credentials authenticate as, asked of the server they name."""
    rest = await clients.from_kubeconfig_dict(kubeconfig_of(secret), "credential-test")
    try:
        review = await rest.create(REVIEW, {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview",
                                            "metadata": {"name": "me"}})
        return review["status"]["userInfo"]["username"]
    finally:
        await rest.close()


def reconciler(controller: Controller) -> CredentialRequestReconciler:
    return next(r for r in controller.reconcilers if isinstance(r, CredentialRequestReconciler))


def test_host_token_file_is_usable_renewed_in_its_last_fifth_moved_and_deleted_in_order(
        kube: ControlPlane, namespace: str) -> None:
    async def scenario() -> None:
        rest = await host_rest(kube.kubeconfig)
        controller = await started(Controller(controller_settings(kube.kubeconfig, namespace)))
        try:
            await rest.create(CREDENTIAL_REQUEST, request(
                namespace, "ovn", duration="15m",
                metadata={"labels": {"dpu.nvidia.com/image-pull-secret": ""}, "annotations": {"team": "net"}}),
                namespace)
            obj = await ready(rest, namespace, "ovn", serviceAccount=f"{namespace}/ovn-sa",
                              secret=f"{namespace}/ovn-creds")
            status = obj["status"]
            issued, expires = status["issuedAt"], status["expirationTimestamp"]
            assert _at(expires) - _at(issued) == timedelta(minutes=15)
            assert abs(_at(issued) - objects.now()) < timedelta(minutes=2)
            assert "targetCluster" not in status
            assert obj["metadata"]["finalizers"] == ["dpu.nvidia.com/dpuservicecredentialrequest"]
            account = await rest.get(SERVICE_ACCOUNT, "ovn-sa", namespace)
            assert account is not None
            assert account["automountServiceAccountToken"] is False
            secret = await rest.get(SECRET, "ovn-creds", namespace)
            assert secret is not None
            assert secret["type"] == "Opaque"
            assert set(decoded(secret)) == {"KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT",
                                            "KUBERNETES_CA_DATA", "TOKEN_FILE"}
            assert secret["metadata"]["labels"]["dpu.nvidia.com/image-pull-secret"] == ""
            assert secret["metadata"]["annotations"]["team"] == "net"
            assert await whoami(secret) == f"system:serviceaccount:{namespace}:ovn-sa"

            # Not due: another pass keeps the token. 12m into 15m (the last fifth): renewed, status follows.
            clock = reconciler(controller)
            controller.ctx.queue.add(clock_key(clock, namespace, "ovn"))
            same = await rest.get(SECRET, "ovn-creds", namespace)
            assert decoded(same)["TOKEN_FILE"] == decoded(secret)["TOKEN_FILE"]  # type: ignore[arg-type]
            clock.clock = lambda: objects.now() + timedelta(minutes=12, seconds=30)
            controller.ctx.queue.add(clock_key(clock, namespace, "ovn"))

            async def renewed() -> Obj | None:
                now = await rest.get(SECRET, "ovn-creds", namespace)
                return now if decoded(now)["TOKEN_FILE"] != decoded(secret)["TOKEN_FILE"] else None  # type: ignore[arg-type]
            fresh = await eventually(renewed, "the token renewed")
            clock.clock = objects.now
            # What an operator watching the request sees: an Event per issue, counters, the soonest expiry.
            notes = await eventually(lambda: _events(rest, namespace, "ovn", 2), "TokenIssued and TokenRenewed")
            assert notes[0][0] == "TokenIssued"
            assert f"ServiceAccount {namespace}/ovn-sa" in notes[0][1]
            assert notes[1][0] == "TokenRenewed"
            assert "(renewal)" in notes[1][1]
            assert "TOKEN" not in " ".join(n for _r, n in notes)
            assert decoded(fresh)["TOKEN_FILE"] not in str(notes)
            sample = controller.metrics.registry.get_sample_value
            assert sample("dpf_controller_credential_tokens_issued_total", {"target": "host", "why": "new"}) == 1
            # >= 1: until the clock is put back, every fresh token is also 12.5 minutes old to the reconciler.
            assert sample("dpf_controller_credential_tokens_issued_total", {"target": "host", "why": "renewal"}) >= 1
            expiry = sample("dpf_controller_credential_token_expiry_timestamp_seconds")
            assert expiry is not None
            assert abs(expiry - _claims(decoded(fresh)["TOKEN_FILE"])["exp"]) < 1
            assert await whoami(fresh) == f"system:serviceaccount:{namespace}:ovn-sa"
            claims = _claims(decoded(fresh)["TOKEN_FILE"])
            await ready(rest, namespace, "ovn", issuedAt=_stamp(claims["iat"]),
                        expirationTimestamp=_stamp(claims["exp"]))
            assert claims["exp"] - claims["iat"] == 900

            # The account renamed and the Secret moved: the old ones are deleted, the new ones work.
            await rest.merge_patch(CREDENTIAL_REQUEST, "ovn", {"spec": {"serviceAccount": {"name": "ovn-sa2"},
                                                                      "secret": {"name": "ovn-creds2"},
                                                                      "type": "kubeconfig"}}, namespace)
            await ready(rest, namespace, "ovn", serviceAccount=f"{namespace}/ovn-sa2",
                        secret=f"{namespace}/ovn-creds2")
            await eventually(lambda: _absent(rest, SERVICE_ACCOUNT, "ovn-sa", namespace), "the old account deleted")
            await eventually(lambda: _absent(rest, SECRET, "ovn-creds", namespace), "the old Secret deleted")
            moved = await rest.get(SECRET, "ovn-creds2", namespace)
            assert set(decoded(moved)) == {"kubeconfig"}  # type: ignore[arg-type]
            config = kubeconfig_of(moved)  # type: ignore[arg-type]
            assert config["contexts"][0]["context"]["namespace"] == namespace
            assert config["users"][0]["name"] == "ovn-sa2"
            assert await whoami(moved) == f"system:serviceaccount:{namespace}:ovn-sa2"  # type: ignore[arg-type]

            # Delete: the account, then the Secret, then the finalizer.
            await rest.delete(CREDENTIAL_REQUEST, "ovn", namespace)
            await eventually(lambda: _absent(rest, CREDENTIAL_REQUEST, "ovn", namespace), "the request gone")
            assert await rest.get(SERVICE_ACCOUNT, "ovn-sa2", namespace) is None
            assert await rest.get(SECRET, "ovn-creds2", namespace) is None
        finally:
            await controller.stop()
            await rest.close()

    run(scenario(), timeout=120)


def clock_key(reconciler_: CredentialRequestReconciler, namespace: str, name: str) -> ObjectKey:
    return ObjectKey(reconciler_.name, namespace, name)


def _at(stamp: str) -> datetime:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def _stamp(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def _events(rest: Rest, namespace: str, name: str, count: int) -> list[tuple[str, str]] | None:
    """(reason, note) of the Events about one request, oldest first, once there are `count`."""
    listing = await rest.list(EVENT, namespace)
    found = sorted((e["eventTime"], e["reason"], e["note"]) for e in listing["items"]
                   if e["regarding"]["kind"] == CREDENTIAL_REQUEST.kind and e["regarding"]["name"] == name)
    return [(reason, note) for _t, reason, note in found] if len(found) >= count else None


async def _absent(rest: Rest, kind: Kind, name: str, namespace: str) -> bool:
    return await rest.get(kind, name, namespace) is None


def test_dpu_cluster_kubeconfig_then_moved_to_the_host(kube: ControlPlane, dpu_kube: ControlPlane,
                                                        namespace: str) -> None:
    async def scenario() -> None:
        rest, dpu_rest = await host_rest(kube.kubeconfig), await host_rest(dpu_kube.kubeconfig)
        controller = await started(Controller(controller_settings(kube.kubeconfig, namespace)))
        try:
            await dpu_cluster(rest, namespace, dpu_kube.kubeconfig)
            # targetCluster without a namespace: the request's own (upstream makes it optional).
            await rest.create(CREDENTIAL_REQUEST, request(namespace, "dpu", type="kubeconfig",
                                                          targetCluster={"name": "dpu"}), namespace)
            obj = await ready(rest, namespace, "dpu", targetCluster=f"{namespace}/dpu")
            assert await dpu_rest.get(SERVICE_ACCOUNT, "dpu-sa", namespace) is not None  # namespace made there
            assert await rest.get(SERVICE_ACCOUNT, "dpu-sa", namespace) is None
            secret = await rest.get(SECRET, "dpu-creds", namespace)  # always in the host cluster
            config = kubeconfig_of(secret)  # type: ignore[arg-type]
            assert config["clusters"][0]["cluster"]["server"] == dpu_kube.server
            assert await whoami(secret) == f"system:serviceaccount:{namespace}:dpu-sa"  # type: ignore[arg-type]
            assert obj["status"]["serviceAccount"] == f"{namespace}/dpu-sa"

            # A restarted controller reuses the token it finds (nothing is due): the Secret is not rewritten.
            await controller.stop()
            controller = await started(Controller(controller_settings(kube.kubeconfig, namespace)))
            passes = controller.metrics.reconcile_seconds.labels("dpuservicecredentialrequest")
            await eventually(lambda: _count(passes) >= 1, "the new controller reconciled the request")
            assert (await rest.get(SECRET, "dpu-creds", namespace))["metadata"]["resourceVersion"] == \
                secret["metadata"]["resourceVersion"]  # type: ignore[index]

            # The target changes to the host: the DPU cluster's account is deleted, the host gets one.
            await rest.merge_patch(CREDENTIAL_REQUEST, "dpu", {"spec": {"targetCluster": None}}, namespace)
            async def on_host() -> Obj | None:
                obj = await ready(rest, namespace, "dpu", serviceAccount=f"{namespace}/dpu-sa")
                return None if "targetCluster" in obj["status"] else obj
            await eventually(on_host, "the request moved to the host")
            await eventually(lambda: _absent(dpu_rest, SERVICE_ACCOUNT, "dpu-sa", namespace),
                             "the DPU cluster's account deleted")
            moved = await rest.get(SECRET, "dpu-creds", namespace)
            assert kubeconfig_of(moved)["clusters"][0]["cluster"]["server"] == kube.server  # type: ignore[arg-type]
            assert await rest.get(SERVICE_ACCOUNT, "dpu-sa", namespace) is not None
            assert await whoami(moved) == f"system:serviceaccount:{namespace}:dpu-sa"  # type: ignore[arg-type]
            await rest.delete(CREDENTIAL_REQUEST, "dpu", namespace)
            await eventually(lambda: _absent(rest, CREDENTIAL_REQUEST, "dpu", namespace), "the request gone")
            assert await rest.get(SERVICE_ACCOUNT, "dpu-sa", namespace) is None
        finally:
            await controller.stop()
            await rest.close()
            await dpu_rest.close()

    run(scenario(), timeout=120)


def _count(histogram: Any) -> float:
    return next(m.value for metric in histogram.collect() for m in metric.samples if m.name.endswith("_count"))


def _garbage(rng: random.Random, alphabet: str, length: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(length))


def test_bad_input_is_refused_or_reported_naming_the_field(kube: ControlPlane, namespace: str) -> None:
    rng = random.Random(11)  # fixed seed: a failure is reproducible
    # The schema: fuzzed durations that are not Go durations, a type outside the enum, a reference without name.
    for _ in range(25):
        bad = _garbage(rng, string.ascii_letters + string.digits + ".:- ", rng.randint(1, 12))
        if re.fullmatch(r"([0-9]+(\.[0-9]+)?(ms|s|m|h))+", bad):
            continue  # happened to be valid
        message = refusal(create, kube, namespace, request(namespace, "x", duration=bad), dry_run=True)
        assert "spec.duration" in message, (bad, message)
    for bad in ("kubeConfig", "token", "", _garbage(rng, string.ascii_lowercase, 8)):
        assert "spec.type" in refusal(create, kube, namespace, request(namespace, "x", type=bad), dry_run=True)
    for field in ("serviceAccount", "secret", "targetCluster"):
        message = refusal(create, kube, namespace, request(namespace, "x", **{field: {"namespace": namespace}}),
                          dry_run=True)
        assert f"spec.{field}.name" in message, message
    # Namespaces are optional, as upstream.
    create(kube, namespace, request(namespace, "x"), dry_run=True)

    # What only the controller can find: each reported in a condition naming the field.
    async def scenario() -> None:
        rest = await host_rest(kube.kubeconfig)
        controller = await started(Controller(controller_settings(kube.kubeconfig, namespace)))
        try:
            await rest.apply(SERVICE_ACCOUNT, {"apiVersion": "v1", "kind": "ServiceAccount",
                                               "metadata": {"name": "someone-else", "namespace": namespace}}, "test")
            cases = {
                "badname": ({"serviceAccount": {"name": "Not_A_Name"}}, "spec.serviceAccount"),
                "short": ({"duration": "5m"}, "spec.duration"),
                "nocluster": ({"targetCluster": {"name": "absent"}}, "spec.targetCluster"),
                "foreign": ({"serviceAccount": {"name": "someone-else"}}, "not taken over"),
                "badsecret": ({"secret": {"name": "Bad_Secret"}}, "spec.secret"),
                "nons": ({"serviceAccount": {"name": "sa", "namespace": "no-such-ns"}}, "spec.serviceAccount"),
            }
            for name, (spec, _) in cases.items():
                await rest.create(CREDENTIAL_REQUEST, request(namespace, name, **spec), namespace)
            for name, (_, says) in cases.items():
                async def reported(name: str = name) -> str | None:
                    obj = await rest.get(CREDENTIAL_REQUEST, name, namespace)
                    failing = [c["message"] for c in (obj.get("status") or {}).get("conditions") or ()  # type: ignore[union-attr]
                               if c["type"] != "Ready" and c["status"] == "False"]
                    return next((m for m in failing if m), None)
                message = await eventually(reported, f"{name} reported")
                assert says in message, (name, message)
            # A refusal is also a Warning Event naming the field; waiting for a DPU cluster is not.
            warned = await eventually(lambda: _events(rest, namespace, "foreign", 1), "a Warning for foreign")
            assert warned[0][0] == "ServiceAccountReconciledFailed"
            assert "not taken over" in warned[0][1]
            assert await _events(rest, namespace, "nocluster", 1) is None
            foreign = await rest.get(SERVICE_ACCOUNT, "someone-else", namespace)
            assert NAME_LABEL not in (foreign["metadata"].get("labels") or {})  # type: ignore[index]
            for name in cases:
                await rest.delete(CREDENTIAL_REQUEST, name, namespace)
            for name in cases:
                await eventually(lambda name=name: _absent(rest, CREDENTIAL_REQUEST, name, namespace), f"{name} gone")
            assert await rest.get(SERVICE_ACCOUNT, "someone-else", namespace) is not None  # never deleted
        finally:
            await controller.stop()
            await rest.close()

    run(scenario(), timeout=120)
