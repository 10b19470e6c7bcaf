"""Job states and the transitions between them.

The table below is the single source of truth; backends implement exactly these moves.

========== ============================================= =============================
state      meaning                                       seed 000 / 001 / taskora
========== ============================================= =============================
scheduled  waiting for its run-at (delayed, or backing   pending / PENDING / delayed,
           off before a retry)                           retrying
queued     ready to be claimed                           queued / PENDING / waiting
running    claimed by a worker under a lease             processing / RUNNING / active
completed  the handler returned                          completed / COMPLETED / completed
failed     permanently failed: the dead-letter set       dead, timeout / FAILED / failed
cancelled  cancelled before or while running             cancelled / CANCELLED / cancelled
expired    its TTL passed before it started              (none) / (none) / expired
========== ============================================= =============================

``blocked`` is reserved for workflow steps waiting on their parents; nothing produces it yet
(the stores and the contract suite already treat it as a waiting state). ``unknown`` is never
stored: reads show it for a record whose stored state is unreadable (see ``JobRecord.damage``).
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    """The state of one job. ``str`` values are stored verbatim by every backend."""

    SCHEDULED = "scheduled"
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    BLOCKED = "blocked"
    #: Never produced by a transition: what a read shows for a record whose stored state is
    #: not one of the above (a corrupt or hand-edited record; its ``damage`` says what it held).
    UNKNOWN = "unknown"

    @property
    def is_terminal(self) -> bool:
        """True for states a job never leaves on its own."""
        return self in TERMINAL_STATES

    @property
    def is_waiting(self) -> bool:
        """True for states in which the job has not started yet and can be cancelled at once."""
        return self in WAITING_STATES


TERMINAL_STATES = frozenset(
    {JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.EXPIRED}
)
WAITING_STATES = frozenset({JobState.SCHEDULED, JobState.QUEUED, JobState.BLOCKED})
# An idempotency key stays taken while its job is in one of these states.
KEY_HOLDING_STATES = frozenset(
    {JobState.SCHEDULED, JobState.QUEUED, JobState.RUNNING, JobState.BLOCKED, JobState.COMPLETED}
)

TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.BLOCKED: frozenset({JobState.QUEUED, JobState.SCHEDULED, JobState.CANCELLED}),
    JobState.SCHEDULED: frozenset({JobState.QUEUED, JobState.CANCELLED, JobState.EXPIRED}),
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED, JobState.EXPIRED}),
    JobState.RUNNING: frozenset(
        {
            JobState.COMPLETED,
            JobState.FAILED,
            JobState.SCHEDULED,  # retry with backoff
            JobState.QUEUED,  # retry now, stall recovery, handed back at shutdown
            JobState.CANCELLED,
        }
    ),
    JobState.COMPLETED: frozenset(),
    JobState.FAILED: frozenset({JobState.QUEUED}),  # retried from the dead-letter set
    JobState.CANCELLED: frozenset({JobState.QUEUED}),  # retried by an operator
    JobState.EXPIRED: frozenset({JobState.QUEUED}),
    JobState.UNKNOWN: frozenset(),
}

#: The states a transition can produce (every state but ``unknown``).
STORED_STATES = tuple(s for s in JobState if s is not JobState.UNKNOWN)


def can_transition(src: JobState, dst: JobState) -> bool:
    """Whether the state machine allows ``src -> dst``."""
    return dst in TRANSITIONS[src]


# Seed 000 ``TaskStatus`` vocabulary, for the protocol renderers.
SEED000_STATUS: dict[JobState, str] = {
    JobState.SCHEDULED: "pending",
    JobState.BLOCKED: "pending",
    JobState.QUEUED: "queued",
    JobState.RUNNING: "processing",
    JobState.COMPLETED: "completed",
    JobState.FAILED: "dead",
    JobState.CANCELLED: "cancelled",
    JobState.EXPIRED: "cancelled",
    JobState.UNKNOWN: "failed",
}
