"""Agent runtime settings: typed dataclasses, loaded once by the CLI and passed down."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TLSFiles:
    """Pre-provisioned mTLS files (see `dpf controller issue-node-cert`)."""

    ca: Path
    cert: Path
    key: Path
    server_name: str = ""
    """Override of the name checked against the controller certificate (default: the endpoint's host)."""


@dataclass(frozen=True)
class AgentSettings:
    node: str
    """The node this agent runs on; must match the certificate's CN."""
    role: str
    """host | dpu"""
    endpoints: tuple[str, ...]
    """Controller replicas as host:port; tried in order, rotating on failure."""
    state_dir: Path
    """Where the last applied state is persisted (one file per resource type, atomic writes)."""
    tls: TLSFiles | None = None
    """None only with insecure."""
    insecure: bool = False
    """Plain-text gRPC and a self-declared node name. Lab only."""
    backoff_base: float = 0.2
    """First reconnect delay, seconds; doubles per failed round over all endpoints, with full jitter."""
    backoff_max: float = 10.0
    failover_window: float = 30.0
    """For this long after a stable stream broke (a leader change takes about one lease), seconds ..."""
    failover_backoff_max: float = 1.0
    """... reconnect delays stay under this (jittered), so agents are back within a second of the new leader."""
    connect_timeout: float = 5.0
    """Time allowed to open a stream and receive Welcome, seconds."""
    apply_retry_base: float = 0.5
    """First delay before retrying a transiently failed apply, seconds (doubles up to apply_retry_max)."""
    apply_retry_max: float = 30.0
    resync_period: float = 300.0
    """Re-assert the stored state through every handler this often, seconds (0: never)."""
    http_listen: str = ""
    """host:port for /healthz, /readyz and /metrics; empty disables it."""
    agent_version: str = "dpf-agent/0.1"
