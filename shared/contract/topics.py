"""Topic names of the public contract (EVENTS.md §2), in one place."""

from __future__ import annotations

TRAINING_UPSTREAM = "skills.training.upstream"
ASSESSMENT_UPSTREAM = "skills.assessment.upstream"
ENROLLMENT_EVENTS = "skills.enrollment.events"
ASSESSMENT_EVENTS = "skills.assessment.events"
SUBSIDY_EVENTS = "skills.subsidy.events"


def dlq(service: str) -> str:
    """The dead-letter topic of one service, e.g. ``skills.enrollment.dlq``."""
    return f"skills.{service}.dlq"


ALL_TOPICS = (
    TRAINING_UPSTREAM,
    ASSESSMENT_UPSTREAM,
    ENROLLMENT_EVENTS,
    ASSESSMENT_EVENTS,
    SUBSIDY_EVENTS,
    dlq("enrollment"),
    dlq("assessment"),
    dlq("subsidy"),
)
