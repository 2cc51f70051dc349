"""Typed reconcile errors: the work queue retries a TemporaryError after its delay, drops a PermanentError."""

from __future__ import annotations


class TemporaryError(Exception):
    """Retry later: after `delay` seconds if given, else with the key's exponential back-off."""

    def __init__(self, message: str, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


class PermanentError(Exception):
    """Retrying cannot help until the input changes; the key is dropped (a later event re-queues it)."""
