"""Fixtures for the IPAM tests: the CNI shim bin dir is shared with tests/cni."""

from tests.cni.conftest import cni_binary, script_bin_dir  # noqa: F401 - re-exported fixtures
