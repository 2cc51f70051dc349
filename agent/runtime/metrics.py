"""Prometheus metrics of one agent runtime (own registry, so tests can run several agents in a process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.connected = Gauge("dpf_agent_connected", "1 while a NodeState stream is established", registry=r)
        self.connects = Counter("dpf_agent_connects_total", "Streams established", registry=r)
        self.stream_failures = Counter("dpf_agent_stream_failures_total", "Streams that ended or failed to open",
                                       ["code"], registry=r)
        self.responses = Counter("dpf_agent_responses_total", "DiscoveryResponses received", ["type_url"],
                                 registry=r)
        self.applies = Counter("dpf_agent_applies_total", "Handler applies", ["type_url", "result"], registry=r)
        self.apply_seconds = Histogram("dpf_agent_apply_duration_seconds", "Duration of one handler apply",
                                       ["type_url"], registry=r)
        self.nacks = Counter("dpf_agent_nacks_total", "NACKs sent", ["type_url"], registry=r)
