"""dpf.lab: the local lab (control plane, controller, emulated DPUs) and its test bed."""
