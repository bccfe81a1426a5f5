"""Topic names of the public contract (EVENTS.md §2), in one place."""

from __future__ import annotations

TRAINING_UPSTREAM = "skills.training.upstream"
ASSESSMENT_UPSTREAM = "skills.assessment.upstream"
ENROLLMENT_EVENTS = "skills.enrollment.events"
ASSESSMENT_EVENTS = "skills.assessment.events"
SUBSIDY_EVENTS = "skills.subsidy.events"
# The subsidy service's own command topic (EVENTS.md §5.4): reviews of held grants, keyed by
# person_id, written by its API through the outbox and consumed by its handler.
SUBSIDY_REVIEWS = "skills.subsidy.reviews"


def dlq(service: str) -> str:
    """The dead-letter topic of one service, e.g. ``skills.enrollment.dlq``."""
    return f"skills.{service}.dlq"


ALL_TOPICS = (
    TRAINING_UPSTREAM,
    ASSESSMENT_UPSTREAM,
    ENROLLMENT_EVENTS,
    ASSESSMENT_EVENTS,
    SUBSIDY_EVENTS,
    SUBSIDY_REVIEWS,
    dlq("enrollment"),
    dlq("assessment"),
    dlq("subsidy"),
)
