"""Fixtures for the reliability tests: the end-to-end bed (two apiservers, the controller process, two emulated
DPUs with OVS and their agents) is shared with tests/e2e."""

from tests.e2e.conftest import bed  # noqa: F401 - re-exported fixture
