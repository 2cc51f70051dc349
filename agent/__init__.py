"""dpf.agent: node-resident agents (host agent and DPU agent); they know only the proto contract."""
