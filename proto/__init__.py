"""dpf.proto: the gRPC contract between controller, agents and CNI (protos, checked-in stubs, versions)."""
