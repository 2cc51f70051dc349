"""Controller settings: typed dataclasses grouped by concern, loaded once in main and passed down.

Every timeout, retry bound and rate is a named field with a default; the CLI maps flags onto these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class KubeSettings:
    """How to reach the host cluster."""

    kubeconfig: Path | None = None
    """Kubeconfig of the host cluster; None means in-cluster service-account config."""
    namespace: str = "dpf-operator-system"
    """Namespace of the controller's own objects: the leader Lease and the CA Secret."""
    watch_namespace: str | None = None
    """Only watch host-cluster objects (DPUClusters) in this namespace; None watches all namespaces."""
    request_timeout: float = 30.0
    """Timeout of one non-watch API request, seconds."""
    watch_timeout: int = 300
    """Server-side timeout of one watch request, seconds; the watch then resumes from its resourceVersion."""
    relist_backoff: float = 1.0
    """Delay before re-listing after a failed list or watch, seconds (doubles up to relist_backoff_max)."""
    relist_backoff_max: float = 30.0
    field_manager: str = "dpf-controller"
    """Server-side-apply field manager for objects the controller writes."""


@dataclass(frozen=True)
class QueueSettings:
    """The rate-limited work queue."""

    workers: int = 4
    """Concurrent reconciles (always serial per key). Most reconciles wait on apiserver round trips, and every
    reconciler shares these workers: with 16, a DPU alone provisioned 3-4x faster at N=100 (bench/RESULTS.md,
    provision run 2; `--workers 16` for fleets). The default stays 4, the setting every CI run so far has held."""
    backoff_base: float = 0.05
    """First retry delay of a failing key, seconds; doubles per consecutive failure."""
    backoff_max: float = 60.0
    """Upper bound of a key's retry delay, seconds."""
    qps: float = 50.0
    """Overall rate of retries per second (token bucket; fresh events are not limited) ..."""
    burst: int = 200
    """... with this bucket size."""


@dataclass(frozen=True)
class LeaderSettings:
    """Leader election with a coordination.k8s.io Lease."""

    enabled: bool = True
    lease_name: str = "dpf-controller"
    lease_duration: float = 15.0
    """A leader that has not renewed for this long is considered gone, seconds."""
    renew_deadline: float = 10.0
    """The leader steps down if it could not renew for this long, seconds (< lease_duration)."""
    retry_period: float = 2.0
    """How often candidates try to acquire and the leader renews, seconds."""
    identity: str = ""
    """This replica's identity in the Lease; empty means hostname plus a random suffix."""
    pod_name: str = ""
    """This replica's Pod (in dpf-operator-system); when set, the leader labels it so the Service selects it alone."""


@dataclass(frozen=True)
class TLSSettings:
    """mTLS for the NodeState gRPC server."""

    insecure: bool = False
    """Serve plain text and trust the node named in Hello. Lab only."""
    ca_secret: str = "dpf-controller-ca"
    """Secret (in KubeSettings.namespace) holding the CA that signs node and server certificates."""
    server_names: tuple[str, ...] = ("localhost", "127.0.0.1")
    """DNS names / IP addresses put into the server certificate's SANs."""
    cert_validity_days: int = 365
    """Validity of certificates the controller issues."""


@dataclass(frozen=True)
class ServerSettings:
    """The NodeState gRPC server."""

    listen: str = "0.0.0.0:5443"
    keepalive_time: float = 20.0
    """HTTP/2 keepalive ping interval on idle streams, seconds (detects dead agents)."""
    keepalive_timeout: float = 10.0
    hello_timeout: float = 10.0
    """An agent must send Hello within this many seconds of opening a stream."""
    max_message_bytes: int = 64 * 1024 * 1024


@dataclass(frozen=True)
class HTTPSettings:
    """The /healthz, /readyz and /metrics endpoint."""

    listen: str = "0.0.0.0:8081"


@dataclass(frozen=True)
class IPAMSettings:
    """DPUServiceIPAM splitting."""

    release_grace: float = 600.0
    """Seconds a node that left a pool (no longer matches, or deleted) keeps its block reserved; a DPU that
    comes back within this time gets the same addresses, after it the block is free for other nodes."""


@dataclass(frozen=True)
class BFBSettings:
    """BFB downloads into the BFB directory (upstream: the shared PVC mounted at /bfb in the controller and
    in every DMS pod)."""

    directory: Path = Path("/bfb")
    """Where BFB files are cached as <spec.fileName>; must exist (the controller does not create it)."""
    stall_timeout: float = 60.0
    """A download that receives no bytes for this long (or cannot connect within it) fails, seconds."""
    retry_base: float = 10.0
    """First retry delay after a failed download, seconds; doubles per consecutive failure ..."""
    retry_max: float = 600.0
    """... up to this bound."""
    max_concurrent: int = 2
    """Downloads running at once; more BFBs wait (phase Downloading) for a slot."""
    recheck_period: float = 60.0
    """A Ready BFB's file is checked this often, seconds; a vanished file is downloaded again."""


@dataclass(frozen=True)
class ProvisioningSettings:
    """The DPU phase machine (`controller/provisioning/dpu_phases.py`): how long each phase may take and how
    often it is tried again before the DPU goes to phase Error (upstream has no timeouts and no retries)."""

    initializing_timeout: float = 900.0
    """Seconds phase Initializing may wait for the host's OOB bridge label and a DPU cluster with room."""
    node_effect_timeout: float = 900.0
    """Seconds phase Node Effect may take (a drain waits for evictions)."""
    pending_timeout: float = 1800.0
    """Seconds phase Pending may wait for the BFB to become Ready (its download)."""
    dms_timeout: float = 600.0
    """Seconds phase DMS Deployment may wait for the host agent: connected, holding the rshim, BFB file ready."""
    install_timeout: float = 1800.0
    """Seconds one install attempt may take, stream and boot ("DPU is ready"); sent to the host agent too."""
    reboot_timeout: float = 900.0
    """Seconds an automatic host reboot may take until the host agent reports the host booted again."""
    manual_reboot_timeout: float = 86400.0
    """Seconds phase Rebooting waits for a manual power cycle or reboot (automaticNodeReboot false)."""
    host_network_timeout: float = 300.0
    """Seconds phase Host Network Configuration may wait for the host agent's VFs and bridge port."""
    cluster_config_timeout: float = 900.0
    """Seconds phase DPU Cluster Config may wait for the DPU's Node to join the DPU cluster and be Ready."""
    max_attempts: int = 3
    """Attempts per phase (a timeout or a failure ends one); phase Error once all are spent."""
    retry_base: float = 10.0
    """Back-off before the second attempt of a phase, seconds; doubles per attempt ..."""
    retry_max: float = 300.0
    """... up to this bound."""
    default_num_vfs: int = 16
    """VFs per PF when the DPUFlavor's nvconfig has no NUM_OF_VFS= (upstream's default)."""
    oob_bridge: str = "br-dpu"
    """The host bridge the DPU's VF0 joins (upstream's fixed br-dpu)."""
    join_token_ttl: int = 3600
    """Lifetime of the bootstrap token in a DPU's bf.cfg, seconds."""
    progress_interval: float = 2.0
    """A DPU's status is rewritten at most this often when only a condition message changed (flash progress,
    boot log lines), seconds: a thousand flashing DPUs must not write their status on every agent report."""


@dataclass(frozen=True)
class ServicesSettings:
    """DPUServices (reconcilers/dpuservice.py, reconcilers/dpuservice_argocd.py)."""

    backend: str = "helm"
    """How DPUServices are deployed: "helm" runs Helm against each target cluster itself (no ArgoCD needed);
    "argocd" writes upstream's ArgoCD Applications, AppProjects and cluster Secrets in the controller's namespace
    for the site's ArgoCD to sync (see docs/dpuservice.md)."""
    helm_concurrency: int = 4
    """Helm processes at once (the helm backend): each is ~70 MB and mostly CPU-bound YAML work; an `upgrade
    --wait` holds a slot while it waits for the rollout (bench/services: 4 and 16 alike on 2 cores)."""
    chart_mirrors: tuple[tuple[str, str], ...] = ()
    """(repoURL prefix, mirror prefix) pairs: a DPUService whose chart repository starts with a prefix is installed
    from the mirror instead (the longest prefix wins), so manifests naming a public repository apply unchanged at
    sites that reach only a local mirror. See `parse_chart_mirror`."""


def parse_chart_mirror(text: str) -> tuple[str, str]:
    """`FROM=TO` → (FROM, TO): http(s):// or oci:// URL prefixes (TO may also be git:// for charts from git
    repositories); raises ValueError naming the fix."""
    source, sep, mirror = text.partition("=")
    schemes = ("https://", "http://", "oci://")
    if not sep or not source.startswith(schemes) or not mirror.startswith((*schemes, "git://")):
        raise ValueError(f"--chart-mirror {text!r}: want FROM=TO with both an http(s):// or oci:// URL prefix (TO "
                         "may be git:// for git sources), e.g. "
                         "https://helm.ngc.nvidia.com/nvidia=https://charts.example.internal/nvidia")
    if source.startswith("oci://") != mirror.startswith("oci://"):
        raise ValueError(f"--chart-mirror {text!r}: an OCI registry can only be mirrored by an OCI registry, and an "
                         "http(s) chart repository by one (Helm fetches them differently)")
    return source, mirror


@dataclass(frozen=True)
class DPUClusterSettings:
    """DPUCluster health (reconcilers/dpucluster.py)."""

    health_period: float = 30.0
    """Every DPUCluster is checked again this often, seconds: its kubeconfig Secret is read (a changed one
    reconnects) and the cluster's /version asked."""
    health_timeout: float = 10.0
    """A DPU cluster that does not answer /version within this many seconds fails its health check."""


@dataclass(frozen=True)
class ControllerSettings:
    kube: KubeSettings = field(default_factory=KubeSettings)
    queue: QueueSettings = field(default_factory=QueueSettings)
    leader: LeaderSettings = field(default_factory=LeaderSettings)
    tls: TLSSettings = field(default_factory=TLSSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    http: HTTPSettings = field(default_factory=HTTPSettings)
    ipam: IPAMSettings = field(default_factory=IPAMSettings)
    bfb: BFBSettings = field(default_factory=BFBSettings)
    provisioning: ProvisioningSettings = field(default_factory=ProvisioningSettings)
    dpucluster: DPUClusterSettings = field(default_factory=DPUClusterSettings)
    services: ServicesSettings = field(default_factory=ServicesSettings)
    resync_period: float = 600.0
    """Every object is reconciled again at least this often, seconds (level-triggered safety net)."""
    orphan_sweep_period: float = 60.0
    """How often the leader looks for DPU-cluster sets and per-node objects whose owner is gone, seconds
    (`reconcilers/orphans.py`; the safety net behind ordered deletion)."""
