"""dpf.agent.dpu: the DPU agent process: NodeState runtime + SFC programmer handlers (+ the CNI server)."""
