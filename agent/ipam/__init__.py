"""dpf.agent.ipam: the node's pod IP allocator (pure allocation logic plus a crash-safe lease store)."""
