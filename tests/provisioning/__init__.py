"""Provisioning tests: BFB downloads, DPUSet plans and the provisioning reconcilers."""
