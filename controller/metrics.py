"""Prometheus metrics of one controller instance, in its own registry (two replicas may share a process in tests).

Served on /metrics by `http.py`. Names follow Prometheus conventions (counters end in _total).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Phases take from milliseconds (a skipped reboot) to most of an hour (a slow flash).
_PHASE_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.queue_depth = Gauge("dpf_controller_workqueue_depth", "Keys waiting in the work queue", registry=r)
        self.queue_waiting = Gauge("dpf_controller_workqueue_delayed", "Keys scheduled for a later retry", registry=r)
        self.reconcile_seconds = Histogram("dpf_controller_reconcile_duration_seconds", "Duration of one reconcile",
                                           ["reconciler"], buckets=_LATENCY_BUCKETS, registry=r)
        self.reconcile_errors = Counter("dpf_controller_reconcile_errors_total", "Failed reconciles",
                                        ["reconciler", "kind"], registry=r)
        self.connected_agents = Gauge("dpf_controller_connected_agents", "Agents with an open NodeState stream",
                                      ["role"], registry=r)
        self.responses = Counter("dpf_controller_responses_total", "DiscoveryResponses sent",
                                 ["type_url", "full_state"], registry=r)
        self.acks = Counter("dpf_controller_acks_total", "ACKs received", ["type_url"], registry=r)
        self.nacks = Counter("dpf_controller_nacks_total", "NACKs received", ["type_url"], registry=r)
        self.stream_lag = Histogram("dpf_controller_stream_lag_seconds",
                                    "Time from publishing a node's snapshot to the agent's ACK of it",
                                    ["type_url"], buckets=_LATENCY_BUCKETS, registry=r)
        self.rejected_streams = Counter("dpf_controller_rejected_streams_total", "Streams refused", ["reason"],
                                        registry=r)
        self.is_leader = Gauge("dpf_controller_is_leader", "1 while this replica holds the leader lease",
                               registry=r)
        self.bfb_download_bytes = Counter("dpf_controller_bfb_download_bytes_total",
                                          "Bytes of BFB files received over HTTP", registry=r)
        self.bfb_downloads = Counter("dpf_controller_bfb_downloads_total", "Finished BFB downloads",
                                     ["result"], registry=r)  # result: success | failure
        self.bfb_downloads_active = Gauge("dpf_controller_bfb_downloads_active",
                                          "BFB downloads running or waiting for a slot", registry=r)
        self.orphans_deleted = Counter("dpf_controller_orphans_deleted_total",
                                       "DPU-cluster objects the orphan sweep deleted because their owner is gone",
                                       ["kind"], registry=r)
        self.dpu_phase_seconds = Histogram("dpf_controller_dpu_phase_seconds",
                                           "Time a DPU spent in a provisioning phase, observed when it leaves it",
                                           ["phase"], buckets=_PHASE_BUCKETS, registry=r)
        self.dpu_provisioning_retries = Counter("dpf_controller_dpu_provisioning_retries_total",
                                                "Failed attempts of a DPU provisioning phase (timeouts included)",
                                                ["phase", "reason"], registry=r)
        # target: host | dpucluster; why: new | renewal | changed (type, duration, account or cluster)
        self.credential_tokens = Counter("dpf_controller_credential_tokens_issued_total",
                                         "Service account tokens issued for DPUServiceCredentialRequests",
                                         ["target", "why"], registry=r)
        self.helm_runs = Histogram("dpf_controller_helm_run_seconds", "Helm processes run for DPUServices",
                                   ["command", "result"], buckets=_PHASE_BUCKETS, registry=r)
        self.dpuservice_releases = Counter("dpf_controller_dpuservice_deploys_total",
                                           "helm upgrade --install of a DPUService into one cluster",
                                           ["result"], registry=r)  # result: success | failure
        self.credential_failures = Counter("dpf_controller_credential_failures_total",
                                           "DPUServiceCredentialRequest passes that failed, by the condition they set",
                                           ["condition"], registry=r)
        self.credential_expiry = Gauge("dpf_controller_credential_token_expiry_timestamp_seconds",
                                       "Unix time of the soonest expiry among the tokens this controller keeps "
                                       "(alert when it nears: renewal starts in the last fifth of a lifetime)",
                                       registry=r)
