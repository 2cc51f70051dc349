"""Service chaining: pure pieces and controller behaviour without a data plane (the e2e tests have one)."""
