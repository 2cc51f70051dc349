"""dpf.controller.server: the NodeState gRPC server (streams, nonces, ACK/NACK, node identity from mTLS)."""
