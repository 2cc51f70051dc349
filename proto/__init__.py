"""dpf.proto: the gRPC contract between controller, agents and CNI."""
