"""Provisioning logic of the controller that needs no apiserver: BFB file downloads, DPUSet planning and status."""
