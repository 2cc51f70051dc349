"""dpf.controller.kube: Kubernetes access: REST verbs, cluster clients, watch caches, work queue, leases, events."""
