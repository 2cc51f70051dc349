"""dpfctl: the command-line view of DPF objects in the host cluster (`dpfctl describe`)."""
