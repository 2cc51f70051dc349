"""dpf.lab.bed: real components started on loopback and in network namespaces.

Used by the lab and by the pytest fixtures alike: etcd + kube-apiserver (`kube`), Open vSwitch in
a private run directory inside its own netns (`ovs`), and network namespaces with veth pairs
(`netns`). Everything started here is owned by the calling process and stopped by it.
"""
