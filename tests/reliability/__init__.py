"""Reliability: one bad or conflicting object affects only itself; status stays writable."""
