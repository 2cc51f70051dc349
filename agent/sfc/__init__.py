"""dpf.agent.sfc: the DPU agent's OVS programmer: ServiceInterfaces → OVS ports, ServiceChains → OpenFlow flows."""
