"""dpf.cni: the SFC CNI plugin shim, invoked by kubelet through Multus."""
