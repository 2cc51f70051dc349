"""dpf.controller.cache: per-node desired-state snapshots (pure builders + the versioned snapshot cache)."""
