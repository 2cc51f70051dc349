"""The end-to-end bed (`tests/e2e/conftest.py`) for the data-plane churn."""

from tests.e2e.conftest import bed  # noqa: F401 - a fixture, found by pytest under this name
