"""dpf: an open DPU platform framework (provisioning and service-function chaining on DPUs)."""

__version__ = "0.1.0"
