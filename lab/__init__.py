"""dpf.lab: the local lab (control plane, controller, emulated hosts and DPUs) and its test bed."""
