"""dpf.proto.v1: version 1 of the node-state contract; generated stubs checked in (see dpf.proto.build)."""
