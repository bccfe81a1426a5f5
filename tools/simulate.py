"""The seeded population simulator: API for tests and a CLI that writes the records as JSON lines.

    python -m tools.simulate --persons 1000 --seed 7 --agencies city-a,suqian --out pop.jsonl

Each line is {"topic", "key", "lane", "value"}: ``value`` is the record's JSON text, or
{"base64": ...} for the intended malformed records that are not UTF-8 JSON.
"""

from __future__ import annotations

import argparse
import base64
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import orjson

from shared.contract import topics
from tools.expected import (
    DEFAULT_SECRET,
    Expected,
    Out,
    Outcome,
    expected_assessment_events,
    expected_enrollment_events,
    expected_outcome,
    expected_subsidy_outputs,
)
from tools.population import DEFAULT_AGENCIES, Population, Record, simulate

__all__ = [
    "DEFAULT_AGENCIES", "DEFAULT_SECRET", "Expected", "Out", "Outcome", "Population", "Record",
    "expected_assessment_events", "expected_enrollment_events", "expected_outcome",
    "expected_subsidy_outputs", "simulate", "write_jsonl", "main",
]


def _line(topic: str, record: Record, lane: int) -> bytes:
    try:
        orjson.loads(record.value)
        value: object = orjson.Fragment(record.value)
    except orjson.JSONDecodeError:
        value = {"base64": base64.b64encode(record.value).decode()}
    return orjson.dumps({"topic": topic, "key": record.key, "lane": lane, "value": value}) + b"\n"


def write_jsonl(pop: Population, path: Path) -> None:
    with path.open("wb") as f:
        for topic, records in ((topics.TRAINING_UPSTREAM, pop.training),
                               (topics.ASSESSMENT_UPSTREAM, pop.assessment)):
            for record in records:
                f.write(_line(topic, record, pop.lane(record.key)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.simulate", description=__doc__.splitlines()[0])
    parser.add_argument("--persons", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--agencies", default=",".join(DEFAULT_AGENCIES))
    parser.add_argument("--disorder", action="store_true", help="add duplicates, early and malformed records")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--expected", action="store_true",
                        help="also compute the offline outcome with the default policies and print its counts")
    args = parser.parse_args(argv)
    pop = simulate(args.persons, args.seed, [a for a in args.agencies.split(",") if a], args.disorder)
    write_jsonl(pop, args.out)
    counts = Counter(orjson.loads(r.value)["type"].rsplit(".", 2)[-2] for r in pop.training + pop.assessment
                     if r.value.startswith(b'{"specversion":"1.0"'))
    print(f"{len(pop.training)} training and {len(pop.assessment)} assessment records -> {args.out}")
    for name, n in sorted(counts.items()):
        print(f"  {name:32} {n}")
    for code, n in sorted(pop.malformed.items()):
        print(f"  intended dead letter {code:40} {n}")
    if args.expected:
        from services.subsidy.policy_files import load_policy_dir
        outcome = expected_outcome(pop, load_policy_dir(Path("services/subsidy/policies")))
        for name, expected in (("enrollment", outcome.enrollment), ("assessment", outcome.assessment)):
            print(f"{name}: {len(expected.events)} events, dead letters {dict(expected.dead_letters)}")
        print(f"subsidy: {dict(Counter(o.type.rsplit('.', 2)[-2] for o in outcome.subsidy))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
