"""The AsyncAPI document of the contract, generated from the services' real FastStream brokers.

``python -m shared.contract.asyncapi docs/asyncapi.json`` (``make asyncapi``). Each service
declares, on its broker (shared.runtime.service.declare_broker), its batch subscriber over its
input topics and a publisher per output topic and for its DLQ, with the payload models of
``events.TOPIC_TYPES`` (the ``data`` of the CloudEvents envelope, described once in the
document's description); each service serves its own document on ``/asyncapi.json`` and
``/asyncapi``. This file joins the three brokers into one document.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterable
from functools import reduce
from operator import or_
from pathlib import Path
from typing import Any

from faststream.specification import AsyncAPI

from shared.contract.events import TOPIC_TYPES

SERVICES = ("enrollment", "assessment", "subsidy")
ENVELOPE = (
    "Every record value is a CloudEvents 1.0 structured-mode JSON object (content-type "
    "application/cloudevents+json) with specversion, id, source, type, time, subject (the Kafka "
    "key), agencyid, optional traceparent, and `data`: the payloads documented here. "
    "(source, id) is the idempotency key. Money is integer fen."
)


def payload_of(names: Iterable[str]) -> Any:
    """The union of the payload models the contract topics ``names`` carry."""
    return reduce(or_, (model for name in names for model in TOPIC_TYPES[name].values()))


def build() -> AsyncAPI:
    """One document over the three services' brokers, declared as the running services declare
    them (topic names without TOPIC_PREFIX). The services are found by name: the contract does
    not import them."""
    from shared.runtime.service import declare_broker, settings_class

    async def documentation_only(records: Any) -> None:
        raise AssertionError("a documentation broker is never started")

    brokers = []
    for name in SERVICES:
        definition = importlib.import_module(f"services.{name}.app").DEFINITION
        cls = settings_class(name)
        # The document is the contract's, not one deployment's: no prefix, the default cluster.
        settings = cls().model_copy(update={
            "topic_prefix": "",
            "kafka_bootstrap_servers": cls.model_fields["kafka_bootstrap_servers"].default,
        })
        broker, _ = declare_broker(definition, settings, documentation_only)
        brokers.append(broker)
    return AsyncAPI(
        *brokers, title="Skills-training subsidies: event contract v1", version="1.0.0",
        description=ENVELOPE,
    )


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/asyncapi.json")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(build().to_specification().to_json())
    print(f"wrote {target}")
