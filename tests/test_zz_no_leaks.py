"""Runs last (see conftest): every function-scoped fixture has been torn down by now."""

import os

import pytest

from dpf.lab.bed.netns import bed_namespaces
from tests.conftest import SESSION_START_POD_NETNS, SESSION_START_SYSCTLS, host_sysctls, leaked_processes, pod_netns


@pytest.mark.leak_check
def test_no_processes_or_namespaces_leaked() -> None:
    assert leaked_processes() == {}, "bed daemons outlived the fixtures that started them"
    if os.geteuid() == 0:
        assert bed_namespaces("t", os.getpid()) == [], "network namespaces outlived their tests"
        assert pod_netns() - SESSION_START_POD_NETNS == set(), "pods' network namespaces outlived their kubelets"
    assert host_sysctls() == SESSION_START_SYSCTLS, "host sysctls a kubelet changed were not restored"
