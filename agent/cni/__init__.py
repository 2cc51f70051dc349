"""dpf.agent.cni: the DPU agent's CNI server: veth + OVS port + IPAM behind the shim's unix socket."""
