"""dpf.controller.ipam: DPUServiceIPAM → per-node IP blocks (pure functions; the reconciler writes status)."""
