"""The condition model every reconciler uses (upstream DPF v24.10), as pure functions.

A reconciler seeds its kind's condition types (`ensure`), marks each step (`mark_true`/`mark_false`), then
calls `summarize` to derive `Ready`: True when every other condition is True, otherwise False with the
message "The following conditions are not ready: X, Y" and the most severe reason (AwaitingDeletion >
Failure > Pending; Error is unranked, so a summary of only Error shows Pending, as upstream).
Provisioning kinds (BFB, DPU, DPUCluster) use phases, plus `provisioning_condition`, whose reason
defaults to the condition type. `phase_counts` is the DPUSet statistics rule.

Messages are bounded here, in one place (`bounded`): a condition echoes user values (selectors, names) and
metav1.Condition caps messages at 32768 characters, so an unbounded value would make the status unwritable.

Every function takes the current list and returns a new one; the clock is a parameter. Nothing here
does I/O or mutates its input, so the callers' patch functions stay pure too.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from dpf.controller.api.meta import Condition

READY = "Ready"
SUCCESS = "Success"
PENDING = "Pending"
ERROR = "Error"  # recoverable; retried
FAILURE = "Failure"  # terminal until the spec changes
AWAITING_DELETION = "AwaitingDeletion"
REASONS = (SUCCESS, PENDING, ERROR, FAILURE, AWAITING_DELETION)
# Higher wins in the Ready summary; reasons not listed (Error, custom ones) do not rank.
SEVERITY = {PENDING: 1, FAILURE: 2, AWAITING_DELETION: 3}
NOT_READY_PREFIX = "The following conditions are not ready: "
MESSAGE_LIMIT = 8192  # far below metav1.Condition's 32768, so a few conditions never approach etcd's limits
TRUNCATED = "…(truncated)…"


def bounded(message: str, limit: int = MESSAGE_LIMIT) -> str:
    """`message` cut to at most `limit` characters, marked where it was cut. The head (what failed, which
    field) and the tail (the fix) are kept; what goes is the middle, usually the long user value."""
    if len(message) <= limit:
        return message
    tail = limit // 4
    head = limit - tail - len(TRUNCATED)
    return message[:head] + TRUNCATED + message[-tail:]


def get(conditions: Sequence[Condition] | None, type_: str) -> Condition | None:
    return next((c for c in conditions or () if c.type == type_), None)


def is_true(conditions: Sequence[Condition] | None, type_: str) -> bool:
    found = get(conditions, type_)
    return found is not None and found.status == "True"


def set_condition(conditions: Sequence[Condition] | None, type_: str, status: str, reason: str, message: str,
                  *, now: datetime, generation: int | None = None) -> list[Condition]:
    """Add or replace one condition; lastTransitionTime moves only when the status changes. The message is
    `bounded`."""
    old = get(conditions, type_)
    since = old.last_transition_time if old is not None and old.status == status else now
    new = Condition(type=type_, status=status, reason=reason, message=bounded(message),  # type: ignore[arg-type]
                    last_transition_time=since, observed_generation=generation)
    if old is None:
        return [*(conditions or ()), new]
    return [new if c.type == type_ else c for c in conditions or ()]


def ensure(conditions: Sequence[Condition] | None, types: Iterable[str], *, now: datetime,
           generation: int | None = None) -> list[Condition]:
    """Seed every declared type that is missing as Unknown/Pending; existing ones are kept."""
    out = list(conditions or ())
    for type_ in types:
        if get(out, type_) is None:
            out = set_condition(out, type_, "Unknown", PENDING, "", now=now, generation=generation)
    return out


def mark_true(conditions: Sequence[Condition] | None, type_: str, *, now: datetime,
              generation: int | None = None) -> list[Condition]:
    return set_condition(conditions, type_, "True", SUCCESS, "", now=now, generation=generation)


def mark_false(conditions: Sequence[Condition] | None, type_: str, reason: str, message: str, *, now: datetime,
               generation: int | None = None) -> list[Condition]:
    return set_condition(conditions, type_, "False", reason, message, now=now, generation=generation)


def summary_reason(reasons: Iterable[str]) -> str:
    """The most severe of the not-ready reasons; Pending when none ranks."""
    best = PENDING
    for reason in reasons:
        if SEVERITY.get(reason, 0) > SEVERITY[best]:
            best = reason
    return best


def summarize(conditions: Sequence[Condition] | None, *, now: datetime,
              generation: int | None = None) -> list[Condition]:
    """Set Ready from every other condition."""
    others = [c for c in conditions or () if c.type != READY]
    not_ready = [c for c in others if c.status != "True"]
    if not not_ready:
        return mark_true(conditions, READY, now=now, generation=generation)
    message = NOT_READY_PREFIX + ", ".join(c.type for c in not_ready)
    return mark_false(conditions, READY, summary_reason(c.reason for c in not_ready), message,
                      now=now, generation=generation)


def provisioning_condition(conditions: Sequence[Condition] | None, type_: str, status: bool | str, *,
                           reason: str | None = None, message: str = "", now: datetime,
                           generation: int | None = None) -> list[Condition]:
    """The provisioning kinds' helper: the reason defaults to the condition type."""
    text = status if isinstance(status, str) else ("True" if status else "False")
    return set_condition(conditions, type_, text, reason or type_, message, now=now, generation=generation)


# DPUSet status.dpuStatistics leaves these phases out.
UNCOUNTED_PHASES = frozenset({"Node Effect", "Rebooting"})


def phase_counts(phases: Iterable[str | None]) -> dict[str, int]:
    """DPUs per phase for DPUSet status; an empty phase counts as Initializing."""
    counts: dict[str, int] = {}
    for phase in phases:
        phase = phase or "Initializing"
        if phase not in UNCOUNTED_PHASES:
            counts[phase] = counts.get(phase, 0) + 1
    return counts
