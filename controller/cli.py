"""`dpf controller`: run the controller (`run`) or issue an agent's pre-provisioned mTLS files (`issue-node-cert`)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from dpf.controller.settings import (
    BFBSettings,
    ControllerSettings,
    DPUClusterSettings,
    HTTPSettings,
    IPAMSettings,
    KubeSettings,
    LeaderSettings,
    ProvisioningSettings,
    QueueSettings,
    ServerSettings,
    ServicesSettings,
    TLSSettings,
    parse_chart_mirror,
)
from dpf.shared.logs import add_logging_flags, setup_logging


def positive(text: str) -> int:
    """An argparse type: an integer of at least 1 (a worker or Helm bound of 0 would never do anything)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is less than 1")
    return value


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("controller", help="the central controller: CR caches → per-node desired state",
                                 description="The dpf controller. `run` starts it; `issue-node-cert` writes one "
                                             "node agent's mTLS files from the controller CA.")
    sub = parser.add_subparsers(dest="controller_command", metavar="SUBCOMMAND", required=True)

    run = sub.add_parser("run", help="run the controller until SIGTERM",
                         description="Mirror the CRs into per-node desired state and stream it to node agents "
                                     "over gRPC (NodeState, mTLS). Two replicas may run: a Lease elects the "
                                     "leader, followers refuse streams so agents fail over.",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    run.add_argument("--kubeconfig", type=Path, default=None,
                     help="host-cluster kubeconfig (default: in-cluster service account)")
    run.add_argument("--namespace", default=KubeSettings.namespace,
                     help="namespace of the controller's Lease and CA Secret")
    run.add_argument("--watch-namespace", default=None,
                     help="watch the host cluster's DPF objects (every kind, DPUClusters included) only in this "
                          "namespace (default: all namespaces)")
    run.add_argument("--listen", default=ServerSettings.listen, help="NodeState gRPC address host:port")
    run.add_argument("--health-listen", default=HTTPSettings.listen,
                     help="address of /healthz, /readyz and /metrics")
    run.add_argument("--insecure", action="store_true",
                     help="serve NodeState in plain text and trust the node name agents send (LAB ONLY)")
    run.add_argument("--ca-secret", default=TLSSettings.ca_secret,
                     help="Secret holding the CA that signs agent and server certificates (created if absent)")
    run.add_argument("--tls-san", action="append", default=None, metavar="NAME",
                     help="DNS name or IP for the server certificate (repeatable; default: localhost, 127.0.0.1)")
    run.add_argument("--no-leader-elect", action="store_true", help="run as the only replica (no Lease)")
    run.add_argument("--lease-duration", type=float, default=LeaderSettings.lease_duration,
                     help="seconds a leader's lease lasts without renewal")
    run.add_argument("--renew-deadline", type=float, default=LeaderSettings.renew_deadline,
                     help="seconds the leader keeps trying to renew before stepping down")
    run.add_argument("--retry-period", type=float, default=LeaderSettings.retry_period,
                     help="seconds between lease acquire/renew attempts")
    run.add_argument("--identity", default="", help="leader-election identity (default: hostname-random)")
    run.add_argument("--pod-name", default=os.environ.get("POD_NAME", ""),
                     help="this replica's Pod in --namespace (default: $POD_NAME): the leader labels it "
                          "dpu.nvidia.com/controller-leader=true, which the Service selects")
    run.add_argument("--workers", type=positive, default=QueueSettings.workers, help="concurrent reconciles")
    run.add_argument("--orphan-sweep-period", type=float, default=ControllerSettings.orphan_sweep_period,
                     help="seconds between sweeps that delete DPU-cluster sets and per-node objects whose owner is "
                          "gone or was re-created (counted in dpf_controller_orphans_deleted_total)")
    run.add_argument("--resync-period", type=float, default=ControllerSettings.resync_period,
                     help="seconds between full level-triggered resyncs")
    run.add_argument("--ipam-release-grace", type=float, default=IPAMSettings.release_grace,
                     help="seconds a DPU node that left a DPUServiceIPAM keeps its block reserved")
    run.add_argument("--dpu-install-timeout", type=float, default=ProvisioningSettings.install_timeout,
                     help="seconds one DPU install attempt (flash and boot) may take")
    run.add_argument("--dpu-max-attempts", type=int, default=ProvisioningSettings.max_attempts,
                     help="attempts of a DPU provisioning phase before the DPU goes to phase Error")
    run.add_argument("--dpu-retry-base", type=float, default=ProvisioningSettings.retry_base,
                     help="seconds before a phase's second attempt; doubles per attempt up to --dpu-retry-max")
    run.add_argument("--dpu-retry-max", type=float, default=ProvisioningSettings.retry_max,
                     help="upper bound of the back-off between attempts, seconds")
    run.add_argument("--dpucluster-health-period", type=float, default=DPUClusterSettings.health_period,
                     help="seconds between health checks of each DPUCluster (its kubeconfig Secret re-read, "
                          "a changed one reconnects; /version asked)")
    run.add_argument("--dpucluster-health-timeout", type=float, default=DPUClusterSettings.health_timeout,
                     help="seconds a DPU cluster has to answer /version before its health check fails")
    run.add_argument("--chart-mirror", action="append", default=[], metavar="FROM=TO",
                     help="install DPUService charts whose repoURL starts with FROM from TO instead (repeatable; the "
                          "longest FROM wins), e.g. https://helm.ngc.nvidia.com/nvidia=https://charts.lan/nvidia "
                          "for sites that reach only a local mirror; a git source may be mirrored to a git:// URL")
    run.add_argument("--dpuservice-backend", choices=("helm", "argocd"), default=ServicesSettings.backend,
                     help="how DPUServices are deployed: helm (default) runs Helm against each DPU cluster itself; "
                          "argocd writes ArgoCD Applications, AppProjects and cluster Secrets in --namespace for "
                          "the site's ArgoCD to sync (needs ArgoCD installed; see docs/dpuservice.md)")
    run.add_argument("--helm-concurrency", type=positive, default=ServicesSettings.helm_concurrency, metavar="N",
                     help="Helm processes the helm backend runs at once (default %(default)s; each ~70 MB)")
    run.add_argument("--bfb-dir", type=Path, default=BFBSettings.directory,
                     help="directory BFB files are downloaded into (the BFB volume; must exist)")
    add_logging_flags(run)
    run.set_defaults(run=_run)

    issue = sub.add_parser("issue-node-cert", help="write ca.crt, tls.crt and tls.key for one node's agent",
                           description="Issue a client certificate for one node agent from the controller CA "
                                       "(read from its Secret; created if absent). The node identity is the "
                                       "certificate's CN; the controller refuses a stream whose Hello names "
                                       "another node. Copy the three files to the node (pre-provisioned files).",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    issue.add_argument("--kubeconfig", type=Path, default=None, help="host-cluster kubeconfig")
    issue.add_argument("--namespace", default=KubeSettings.namespace, help="namespace of the CA Secret")
    issue.add_argument("--ca-secret", default=TLSSettings.ca_secret, help="name of the CA Secret")
    issue.add_argument("--node", required=True, help="node name (DPU agents: the DPU-cluster Node name)")
    issue.add_argument("--role", required=True, choices=("host", "dpu"), help="agent role")
    issue.add_argument("--days", type=int, default=TLSSettings.cert_validity_days, help="validity in days")
    issue.add_argument("--out", type=Path, required=True, help="directory to write ca.crt, tls.crt, tls.key into")
    issue.set_defaults(run=_issue)


def settings_from(args: argparse.Namespace) -> ControllerSettings:
    return ControllerSettings(
        kube=KubeSettings(kubeconfig=args.kubeconfig, namespace=args.namespace, watch_namespace=args.watch_namespace),
        queue=QueueSettings(workers=args.workers),
        leader=LeaderSettings(enabled=not args.no_leader_elect, lease_duration=args.lease_duration,
                              renew_deadline=args.renew_deadline, retry_period=args.retry_period,
                              identity=args.identity, pod_name=args.pod_name),
        tls=TLSSettings(insecure=args.insecure, ca_secret=args.ca_secret,
                        server_names=tuple(args.tls_san) if args.tls_san else TLSSettings.server_names),
        server=ServerSettings(listen=args.listen),
        http=HTTPSettings(listen=args.health_listen),
        ipam=IPAMSettings(release_grace=args.ipam_release_grace),
        bfb=BFBSettings(directory=args.bfb_dir),
        provisioning=ProvisioningSettings(install_timeout=args.dpu_install_timeout, max_attempts=args.dpu_max_attempts,
                                          retry_base=args.dpu_retry_base, retry_max=args.dpu_retry_max),
        dpucluster=DPUClusterSettings(health_period=args.dpucluster_health_period,
                                      health_timeout=args.dpucluster_health_timeout),
        services=ServicesSettings(chart_mirrors=tuple(parse_chart_mirror(m) for m in args.chart_mirror),
                                  backend=args.dpuservice_backend, helm_concurrency=args.helm_concurrency),
        resync_period=args.resync_period,
        orphan_sweep_period=args.orphan_sweep_period,
    )


def _run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level, args.log_format)
    try:
        settings = settings_from(args)
        if settings.leader.renew_deadline >= settings.leader.lease_duration:
            raise ValueError("--renew-deadline must be shorter than --lease-duration")
    except ValueError as exc:
        print(f"dpf controller run: error: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_serve(settings))


async def _serve(settings: ControllerSettings) -> int:
    from dpf.controller.manager import Controller

    controller = Controller(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await controller.start()
    waiter = asyncio.create_task(stop.wait(), name="controller/signal")
    failed = asyncio.create_task(controller.failed.wait(), name="controller/failed")
    await asyncio.wait({waiter, failed}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    failed.cancel()
    await controller.stop()
    if controller.failed.is_set():
        logging.getLogger("dpf.controller").error("exiting: %s", controller.failure)
        return 1
    return 0


def _issue(args: argparse.Namespace) -> int:
    return asyncio.run(_issue_async(args))


async def _issue_async(args: argparse.Namespace) -> int:
    from dpf.controller import pki
    from dpf.controller.kube import clients

    rest = await clients.from_kubeconfig_file(args.kubeconfig)
    try:
        ca = await pki.ensure_ca(rest, args.namespace, args.ca_secret)
    finally:
        await rest.close()
    try:
        pair = ca.issue_node(args.node, args.role, validity_days=args.days)
    except ValueError as exc:
        print(f"dpf controller issue-node-cert: error: {exc}", file=sys.stderr)
        return 2
    pki.write_agent_files(args.out, ca, pair)
    print(f"wrote {args.out}/ca.crt, tls.crt, tls.key for {args.role} node {args.node}")
    return 0
