"""Live /metrics of all three services against the catalogue, the alert rules and the dashboard."""

from __future__ import annotations

import collections
import datetime as dt
import io
import json
import logging
import re
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from shared.contract import topics
from shared.contract.events import TOPIC_TYPES
from shared.runtime import logs
from services.subsidy import state_codec
from services.subsidy.config import SubsidySettings
from services.subsidy.engine.state import PendingKind
from tests.harness import ROOT, Producer, ServiceProcess, Stack, wait_for
from tools.simulate import simulate

pytestmark = pytest.mark.integration

SERVICES = ("enrollment", "assessment", "subsidy")
PROMETHEUS = ROOT / "deploy" / "prometheus"
GRAFANA = ROOT / "deploy" / "grafana"
CATALOGUE = ROOT / "docs" / "METRICS.md"

# Series names (as Prometheus stores them: counters with _total, histograms as _bucket/_sum/_count).
RUNTIME = {
    "skills_records_consumed_total", "skills_records_published_total", "skills_dlq_records_total",
    "skills_inbox_duplicates_total", "skills_batch_size_bucket", "skills_batch_size_count",
    "skills_batch_processing_seconds_bucket", "skills_batch_processing_seconds_sum",
    "skills_outbox_backlog", "skills_outbox_oldest_age_seconds", "skills_consumer_lag",
    "skills_ready", "skills_pending_records", "skills_service_info",
}
BUSINESS = {
    "subsidy_grants_total", "subsidy_granted_fen_total", "subsidy_rejections_total",
    "subsidy_reversals_total", "subsidy_reversed_fen_total", "subsidy_budget_committed_fen",
    "subsidy_budget_remaining_fen", "subsidy_budget_fen", "subsidy_budget_used_ratio",
    "subsidy_pending_items",
}
# Series Prometheus makes itself for every target.
SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
METRIC = re.compile(r"\b(?:skills|subsidy)_[a-z0-9_]+\b|\bup\b")


def scrape(service: ServiceProcess) -> dict[str, list[dict[str, str]]]:
    """Every sample name on the service's /metrics with the label sets it has."""
    with urllib.request.urlopen(f"http://127.0.0.1:{service.port}/metrics", timeout=5) as r:
        text = r.read().decode()
    found: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append(dict(sample.labels))
    return found


def metric_names(promql: str) -> set[str]:
    """Metric names a PromQL expression reads (ours all start skills_ or subsidy_)."""
    without_strings = re.sub(r'"[^"]*"', '""', promql)
    return set(METRIC.findall(without_strings))


def budgeted_policies(directory: Path) -> None:
    """The default policies with a budget for every fund they pay from, small enough to burn."""
    for source in (ROOT / "services" / "subsidy" / "policies").glob("*.json"):
        policy = json.loads(source.read_text())
        funds = {r["fund"] for r in policy["rules"] if r.get("fund")}
        policy["budgets"] = {f: {str(y): 5_000_000 for y in (2025, 2026, 2027)} for f in sorted(funds)}
        # Other content, so another version name: the session's subsidy database may have
        # loaded the defaults already, and a version stands for one content.
        policy["version"] += "-budgeted"
        (directory / source.name).write_text(json.dumps(policy, ensure_ascii=False))


@pytest.fixture(scope="module")
async def world(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[dict[str, ServiceProcess]]:
    """All three services fed a small disordered population (so DLQ, duplicate and business
    series exist), then every service's catalogue present on /metrics."""
    policies = tmp_path_factory.mktemp("policies")
    budgeted_policies(policies)
    services = {
        "enrollment": ServiceProcess("enrollment", stack),
        "assessment": ServiceProcess("assessment", stack),
        "subsidy": ServiceProcess("subsidy", stack, env={
            "SUBSIDY_POLICY_DIR": str(policies), "SUBSIDY_SWEEP_INTERVAL_SECONDS": "0.5"}),
    }
    for service in services.values():
        service.start()
    try:
        for service in services.values():
            await service.wait_ready()
        pop = simulate(60, 20260301, disorder=True)
        async with Producer(stack) as producer:
            for topic, records in ((topics.TRAINING_UPSTREAM, pop.training),
                                   (topics.ASSESSMENT_UPSTREAM, pop.assessment)):
                for record in records:
                    await producer.producer.send(stack.topic(topic), value=record.value,
                                                 key=record.key.encode())
                await producer.producer.send_and_wait(  # a redelivery: an inbox duplicate
                    stack.topic(topic), value=records[0].value, key=records[0].key.encode())
            # Garbage on the subsidy service's input, so it dead-letters too.
            await producer.raw(topics.ENROLLMENT_EVENTS, b"{not json", key="ops")
        wanted = {"enrollment": RUNTIME, "assessment": RUNTIME, "subsidy": RUNTIME | BUSINESS}

        def complete() -> bool:
            return all(wanted[n] <= set(scrape(s)) for n, s in services.items())

        try:
            await wait_for(complete, 90, "every service's catalogue on /metrics")
        except AssertionError:
            missing = {n: sorted(wanted[n] - set(scrape(s))) for n, s in services.items()}
            raise AssertionError(f"series never exported: {missing}") from None
        yield services
    finally:
        for service in services.values():
            service.stop()


def exported(world: dict[str, ServiceProcess]) -> set[str]:
    names: set[str] = set(SYNTHETIC)
    for service in world.values():
        names |= set(scrape(service))
    return names


INPUTS = {
    "enrollment": (topics.TRAINING_UPSTREAM,),
    "assessment": (topics.ASSESSMENT_UPSTREAM, topics.ENROLLMENT_EVENTS),
    "subsidy": (topics.ENROLLMENT_EVENTS, topics.ASSESSMENT_EVENTS, topics.SUBSIDY_REVIEWS),
}
OUTPUTS = {
    "enrollment": (topics.ENROLLMENT_EVENTS,),
    "assessment": (topics.ASSESSMENT_EVENTS,),
    "subsidy": (topics.SUBSIDY_EVENTS, topics.SUBSIDY_REVIEWS),
}


async def test_every_service_serves_its_asyncapi_and_openapi_documents(world) -> None:
    for name, service in world.items():
        document = service.get("/asyncapi.json")
        channels = document["channels"]
        received = {channels[o["channel"]["$ref"].rsplit("/", 1)[1]]["address"]
                    for o in document["operations"].values() if o["action"] == "receive"}
        sent = {channels[o["channel"]["$ref"].rsplit("/", 1)[1]]["address"]
                for o in document["operations"].values() if o["action"] == "send"}
        prefix = service.stack.prefix
        assert received == {prefix + t for t in INPUTS[name]}, name
        assert sent == {prefix + t for t in (*OUTPUTS[name], topics.dlq(name))}, name
        schemas = set(document["components"]["schemas"])
        for topic in (*INPUTS[name], *OUTPUTS[name]):
            assert {m.__name__ for m in TOPIC_TYPES[topic].values()} <= schemas, (name, topic)
        with urllib.request.urlopen(f"http://127.0.0.1:{service.port}/asyncapi", timeout=5) as r:
            assert r.headers["content-type"].startswith("text/html")
            assert b"asyncapi" in r.read().lower()
        openapi = service.get("/openapi.json")
        assert openapi["openapi"].startswith("3.")
        assert openapi["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
        assert {"/healthz", "/readyz", "/asyncapi.json"} <= set(openapi["paths"])


async def test_every_service_names_itself_on_its_metrics(world) -> None:
    for name, service in world.items():
        [info] = scrape(service)["skills_service_info"]
        assert info["service"] == name


async def test_consumer_lag_is_exported_per_topic_and_partition(world) -> None:
    for service in world.values():
        lags = scrape(service)["skills_consumer_lag"]
        assert all(set(labels) == {"topic", "partition"} for labels in lags)
        assert all(labels["partition"].isdigit() for labels in lags)


async def test_dead_letters_are_counted_by_code(world) -> None:
    codes = {labels["code"] for labels in scrape(world["subsidy"])["skills_dlq_records_total"]}
    assert "malformed_json" in codes
    for name in ("enrollment", "assessment"):
        assert scrape(world[name])["skills_dlq_records_total"], name


async def test_subsidy_business_series_carry_agency_fund_rule_and_reason(world) -> None:
    found = scrape(world["subsidy"])
    assert all(set(s) == {"agency", "rule", "fund"} for s in found["subsidy_grants_total"])
    assert all(set(s) == {"agency", "rule", "fund"} for s in found["subsidy_granted_fen_total"])
    assert all(set(s) == {"agency", "reason"} for s in found["subsidy_rejections_total"])
    assert all(set(s) == {"agency", "fund", "year"} for s in found["subsidy_budget_used_ratio"])
    kinds = {s["kind"] for s in found["subsidy_pending_items"]}
    assert kinds == {"certificate_awaiting_completion", "certificate_unlinked",
                     "revocation_awaiting_certificate"}


async def test_budget_totals_are_committed_plus_remaining(world) -> None:
    text = urllib.request.urlopen(f"http://127.0.0.1:{world['subsidy'].port}/metrics", timeout=5).read()
    values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            values[(s.name, tuple(sorted(s.labels.items())))] = s.value
    budgets = [(k[1], v) for k, v in values.items() if k[0] == "subsidy_budget_fen"]
    assert budgets
    for labels, budget in budgets:
        committed = values.get(("subsidy_budget_committed_fen", labels), 0)
        remaining = values[("subsidy_budget_remaining_fen", labels)]
        assert budget == committed + remaining == 5_000_000
        assert values[("subsidy_budget_used_ratio", labels)] == pytest.approx(committed / budget)


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


async def test_every_metric_an_alert_rule_reads_is_exported(world) -> None:
    names = exported(world)
    for rule in alert_rules():
        used = metric_names(rule["expr"])
        assert used, f"{rule['alert']}: no metric found in {rule['expr']!r}"
        assert used <= names, f"{rule['alert']} reads {sorted(used - names)}, not exported"


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return [p for p in found if p.get("type") != "row"]


async def test_every_metric_a_dashboard_panel_reads_is_exported(world) -> None:
    names = exported(world)
    dashboards = sorted((GRAFANA / "dashboards").glob("*.json"))
    assert dashboards
    for path in dashboards:
        dashboard = json.loads(path.read_text())
        for panel in panels(dashboard):
            used = set().union(*(metric_names(t["expr"]) for t in panel.get("targets", [])))
            assert used, f"{path.name}: panel {panel['title']!r} reads no metric"
            assert used <= names, f"{path.name}: panel {panel['title']!r} reads {sorted(used - names)}"
        for variable in dashboard.get("templating", {}).get("list", []):
            query = variable.get("query")
            text = query.get("query", "") if isinstance(query, dict) else str(query or "")
            assert metric_names(text) <= names, f"{path.name}: variable {variable['name']}"


async def test_the_pending_items_sweep_counts_what_the_person_states_hold(world) -> None:
    from services.subsidy import metrics as business
    from services.subsidy.engine.state import pending_items

    service = world["subsidy"]
    pool = await asyncpg.create_pool(service.stack.db_url("subsidy"), min_size=1, max_size=1)
    try:
        await business.refresh_pending_items(pool, SubsidySettings(), dt.datetime.now(dt.UTC))
        rows = await pool.fetch("SELECT state FROM person_state")
    finally:
        await pool.close()
    expected: collections.Counter[str] = collections.Counter(
        item.kind.value for r in rows
        for item in pending_items(state_codec.loads(r["state"])))
    assert sum(expected.values()) > 0
    for kind in PendingKind:
        assert business.PENDING_ITEMS.labels(kind.value)._value.get() == expected[kind.value], kind


async def test_every_exported_metric_is_in_the_catalogue(world) -> None:
    catalogue = CATALOGUE.read_text()
    documented = set(re.findall(r"`((?:skills|subsidy)_[a-z0-9_]+)`", catalogue))
    for name in exported(world) - SYNTHETIC:
        if not name.startswith(("skills_", "subsidy_")):
            continue  # the client library's own process_* and python_* series
        base = re.sub(r"_(bucket|sum|count|created)$", "", name)
        assert documented & {name, base, f"{base}_total"}, f"{name} is not in docs/METRICS.md"


def test_a_log_line_carries_the_trace_id_and_ids_of_the_event_in_context() -> None:
    class Event:
        id, source, type = "e-1", "/services/enrollment", "skills.enrollment.EnrollmentAccepted.v1"
        subject, agencyid = "P-1", "suqian"
        traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter("subsidy"))
    log = logging.getLogger("tests.operations")
    log.addHandler(handler)
    log.propagate = False
    try:
        with logs.context(**logs.event_fields(Event())):
            log.warning("handled", extra={"agency": "beijing"})
        log.warning("outside")
    finally:
        log.removeHandler(handler)
    inside, outside = (orjson.loads(line) for line in stream.getvalue().splitlines())
    assert inside["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert inside["event_id"] == "e-1" and inside["event_type"].endswith("EnrollmentAccepted.v1")
    assert inside["service"] == "subsidy" and inside["agency"] == "beijing"  # extras win
    assert "trace_id" not in outside and "event_id" not in outside


def test_an_invalid_traceparent_gives_no_trace_id() -> None:
    assert logs.trace_id(None) is None
    assert logs.trace_id("00-00000000000000000000000000000000-00f067aa0ba902b7-01") is None
    assert logs.trace_id("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01") is None
    assert logs.trace_id("garbage") is None
    assert logs.trace_id("00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01") == (
        "4bf92f3577b34da6a3ce929d0e0e4736")
