"""AsyncAPI document of the contract, generated from the code with FastStream's schema builder.

No `from __future__ import annotations` here: FastStream reads the handler annotations as objects.

``python -m shared.contract.asyncapi docs/asyncapi.json`` (``make asyncapi``). Every channel is
a contract topic; its messages are the payload models of ``events.TOPIC_TYPES`` (the ``data``
of the CloudEvents envelope, described once in the document's description).
"""


import sys
from functools import reduce
from operator import or_
from pathlib import Path
from typing import Any

from faststream.kafka import KafkaBroker
from faststream.specification import AsyncAPI

from shared.contract import topics
from shared.contract.events import TOPIC_TYPES

CONSUMED_BY = {
    topics.TRAINING_UPSTREAM: "enrollment service",
    topics.ASSESSMENT_UPSTREAM: "assessment service",
    topics.ENROLLMENT_EVENTS: "assessment and subsidy services",
    topics.ASSESSMENT_EVENTS: "subsidy service",
    topics.SUBSIDY_REVIEWS: "subsidy service (its own command topic)",
}
PUBLISHED_BY = {
    topics.ENROLLMENT_EVENTS: "enrollment service",
    topics.ASSESSMENT_EVENTS: "assessment service",
    topics.SUBSIDY_EVENTS: "subsidy service",
    topics.SUBSIDY_REVIEWS: "subsidy service's review API",
}
ENVELOPE = (
    "Every record value is a CloudEvents 1.0 structured-mode JSON object (content-type "
    "application/cloudevents+json) with specversion, id, source, type, time, subject (the Kafka "
    "key), agencyid, optional traceparent, and `data`: the payloads documented here. "
    "(source, id) is the idempotency key. Money is integer fen."
)


def build() -> AsyncAPI:
    broker = KafkaBroker()
    for topic, types in TOPIC_TYPES.items():
        payload: Any = reduce(or_, types.values())
        names = ", ".join(t.split(".")[-2] for t in types)
        if topic in CONSUMED_BY:
            async def consume(message: payload) -> None:
                """Documentation only: the services consume with shared.runtime.consumer."""

            broker.subscriber(
                topic, title=f"{topic}:consume",
                description=f"{names}; consumed by the {CONSUMED_BY[topic]}",
            )(consume)
        if topic in PUBLISHED_BY:
            broker.publisher(
                topic, title=f"{topic}:publish", schema=payload,
                description=f"{names}; published by the {PUBLISHED_BY[topic]}",
            )
    return AsyncAPI(
        broker, title="Skills-training subsidies: event contract v1", version="1.0.0",
        description=ENVELOPE,
    )


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/asyncapi.json")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(build().to_specification().to_json())
    print(f"wrote {target}")
