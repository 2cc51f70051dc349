"""dpf.agent.runtime: the runtime shared by host and DPU agents (stream client, handlers, on-disk state)."""
