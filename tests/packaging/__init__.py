"""Packaging tests: the controller's manifests and RBAC against the real apiserver, the agent's systemd unit."""
