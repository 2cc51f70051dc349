"""dpf.controller: the thin central controller (CR watch caches, reconcilers, per-node desired state)."""
