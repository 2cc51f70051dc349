"""Tests of the DPF API: models, generated CRDs and their validation by a real kube-apiserver."""
