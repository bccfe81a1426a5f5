"""`make demo`: stream a seeded multi-agency population through the running services, watch, and report.

    python -m tools.demo --persons 3000 --agencies suqian,beijing --report reports/demo.html

Two phases, as tests/e2e/test_seeded_population.py: every training record, then, once the
services have settled, every assessment record. A phase has settled when each service's consumer
group has committed up to the end of its input topics, its /metrics show no lag and an empty
outbox, and no new output has appeared for a quiet period; a deadline bounds the wait.

The services are meant to run with the budgeted policy set (tools/policies/budgeted: the shipped
policies with 2026 budgets that run out in a run of this size; `make demo` starts them with
SUBSIDY_POLICY_DIR pointing there), so the report shows thresholds reached and budget_exhausted
rejections per agency and fund. --policy-dir names the set the subsidy service runs with: the
report reads which fund each rule draws on from it, and notes when the service's budgets differ.

Each run gets its own seed (from the clock unless --seed is given); the simulator puts the seed
into every enrollment, assessment and event id, so a new run's records are new to the services,
and the report counts only the subsidy events whose basis is one of this run's references.

Besides the simulated population, each agency gets two trainees who trip the integrity checks
(POLICY.md §6): one attends two courses for 14 hours a day (daily_hours_exceeded), one attends
40 days after the planned end (far_outside_plan); their money is held for review, and the run
ends by printing the review console's address with a reviewer token per agency (the local
tokens `make up` made, tools/local_tokens.py).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import random
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from cryptography.fernet import InvalidToken
from prometheus_client.parser import text_string_to_metric_families
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from shared.contract import topics
from shared.contract.envelope import encode_raw, headers
from shared.runtime import crypto
from shared.runtime.settings import DEV_DATA_KEY
from tools import local_tokens
from tools.moneycheck import Policies
from tools.population import (
    ATTENDANCE,
    DEFAULT_AGENCIES,
    ENROLLED,
    FINISHED,
    INSTITUTION_BLOCK,
    RESULT,
    YEAR,
    Population,
    Record,
    national_id,
    simulate,
)
from tools.report import (
    AgencyTally,
    ApiTotals,
    Report,
    Sample,
    Tally,
    cny,
    render_html,
    terminal_summary,
)

SERVICES = ("enrollment", "assessment", "subsidy")
DEFAULT_PERSONS = 3000  # about a minute on a 2-core box
INPUTS = {
    "enrollment": (topics.TRAINING_UPSTREAM,),
    "assessment": (topics.ASSESSMENT_UPSTREAM, topics.ENROLLMENT_EVENTS),
    "subsidy": (topics.ENROLLMENT_EVENTS, topics.ASSESSMENT_EVENTS, topics.SUBSIDY_REVIEWS),
}
OUTPUTS = {topics.ENROLLMENT_EVENTS: "enrollment", topics.ASSESSMENT_EVENTS: "assessment",
           topics.SUBSIDY_EVENTS: "subsidy"}
DLQS = {topics.dlq(s): s for s in SERVICES}
# The services' at-rest keys (their environment is the demo's): dead letters are read in clear
# to count them per agency.
DLQ_KEYRING = crypto.Keyring.of([os.environ.get("DATA_ENCRYPTION_KEY") or DEV_DATA_KEY,
                                 *os.environ.get("DATA_ENCRYPTION_PREVIOUS_KEYS", "").split(",")])
QUIET_SECONDS = 2.0
BUDGETED = Path(__file__).with_name("policies") / "budgeted"
POLL_SECONDS = 0.25


class DemoError(Exception):
    """The demo cannot run as asked; the message says what to do."""


def _default_url(service: str) -> str:
    """Where `make up` serves it: the port deploy/local/services.sh gives the service."""
    port = os.environ.get(f"{service.upper()}_HTTP_PORT", str(8001 + SERVICES.index(service)))
    return f"http://127.0.0.1:{port}"


@dataclass
class Options:
    persons: int = DEFAULT_PERSONS
    seed: int | None = None
    agencies: tuple[str, ...] = DEFAULT_AGENCIES
    disorder: bool = True
    topic_prefix: str = field(default_factory=lambda: os.environ.get("TOPIC_PREFIX", ""))
    urls: dict[str, str] = field(default_factory=lambda: {s: _default_url(s) for s in SERVICES})
    kafka: str = field(default_factory=lambda: os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"))
    report: Path | None = None
    timeout: float | None = None  # seconds per phase; default grows with the population
    allow_replay: bool = False
    policy_dir: Path = field(default_factory=lambda: Path(os.environ.get("SUBSIDY_POLICY_DIR") or BUDGETED))


def parse_args(argv: Sequence[str] | None = None) -> Options:
    defaults = Options()
    p = argparse.ArgumentParser(prog="python -m tools.demo", description=__doc__.splitlines()[0])
    p.add_argument("--persons", type=int, default=DEFAULT_PERSONS, help=f"population size ({DEFAULT_PERSONS})")
    p.add_argument("--seed", type=int, help="simulator seed; default: a fresh one per run (the clock)")
    p.add_argument("--agencies", default=",".join(DEFAULT_AGENCIES), help="comma list")
    p.add_argument("--disorder", action=argparse.BooleanOptionalAction, default=True,
                   help="duplicates, early and malformed records (default on)")
    p.add_argument("--topic-prefix", default=defaults.topic_prefix, help="as the services' TOPIC_PREFIX")
    for s in SERVICES:
        p.add_argument(f"--{s}-url", default=defaults.urls[s])
    p.add_argument("--kafka", default=defaults.kafka, help="bootstrap servers (KAFKA_BOOTSTRAP_SERVERS)")
    p.add_argument("--report", type=Path, help="HTML report path (default reports/demo-<seed>.html)")
    p.add_argument("--timeout", type=float, help="seconds each phase may take to settle")
    p.add_argument("--allow-replay", action="store_true",
                   help="stream a seed this stack has seen before (expect no new decisions)")
    p.add_argument("--policy-dir", type=Path, default=defaults.policy_dir,
                   help="the subsidy service's policy set (SUBSIDY_POLICY_DIR; default tools/policies/budgeted)")
    a = p.parse_args(argv)
    return Options(a.persons, a.seed, tuple(x for x in a.agencies.split(",") if x), a.disorder,
                   a.topic_prefix, {s: getattr(a, f"{s}_url").rstrip("/") for s in SERVICES},
                   a.kafka, a.report, a.timeout, a.allow_replay, a.policy_dir)


@dataclass
class ServiceStats:
    """What one service's /metrics say right now (None when it did not answer)."""

    lag: int | None = None
    backlog: int | None = None
    parked: int = 0


class Services:
    """The services' HTTP side: readiness, metrics and the subsidy query API (with the local
    auditor token when `make up` made one: tools/local_tokens.py)."""

    def __init__(self, urls: dict[str, str]) -> None:
        self.urls = urls
        tokens = local_tokens.load()
        token = os.environ.get("DEMO_API_TOKEN") or (tokens or {}).get("auditor")
        self.auth = {"authorization": f"Bearer {token}"} if token else {}

    def _get(self, service: str, path: str) -> bytes:
        request = urllib.request.Request(self.urls[service] + path, headers=self.auth)
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.read()  # type: ignore[no-any-return]  # bytes from urlopen, JSON object from the API

    def tokens_required(self) -> bool:
        """Whether the subsidy API refuses a request without a token (API_TOKENS configured)."""
        try:
            with urllib.request.urlopen(self.urls["subsidy"] + "/policies/loads", timeout=5):
                return False
        except urllib.error.HTTPError as exc:
            return exc.code == 401
        except OSError:
            return False

    def not_ready(self) -> list[str]:
        down = []
        for s in SERVICES:
            try:
                self._get(s, "/readyz")
            except OSError:
                down.append(f"{s} ({self.urls[s]})")
        return down

    def has_enrollment(self, ref: str) -> bool:
        try:
            self._get("enrollment", f"/enrollments/{ref}")
            return True
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return False
            raise

    def _stats(self, service: str) -> ServiceStats:
        try:
            text = self._get(service, "/metrics").decode()
        except OSError:
            return ServiceStats()
        values: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                values[sample.name] = values.get(sample.name, 0.0) + sample.value
        return ServiceStats(int(values.get("skills_consumer_lag", 0)),
                            int(values.get("skills_outbox_backlog", 0)),
                            int(values.get("skills_pending_records", 0)))

    async def stats(self) -> dict[str, ServiceStats]:
        found = await asyncio.gather(*(asyncio.to_thread(self._stats, s) for s in SERVICES))
        return dict(zip(SERVICES, found, strict=True))

    def _summary(self, agency: str, year: int) -> dict[str, Any]:
        return orjson.loads(self._get("subsidy", f"/agencies/{agency}/summary?year={year}"))  # type: ignore[no-any-return]  # bytes from urlopen, JSON object from the API

    async def totals(self, agencies: Sequence[str], years: Sequence[int]) -> dict[str, ApiTotals]:
        found: dict[str, ApiTotals] = {}
        for agency in agencies:
            totals = found[agency] = ApiTotals()
            for year in years:
                totals.add_summary(await asyncio.to_thread(self._summary, agency, year))
        return found


class Watcher:
    """Reads the outputs and dead letters published since the run started into the run's tally."""

    def __init__(self, options: Options, tally: Tally) -> None:
        self.prefix, self.tally = options.topic_prefix, tally
        self.consumer = AIOKafkaConsumer(bootstrap_servers=options.kafka, group_id=None, enable_auto_commit=False)
        # End offsets asked of a consumer that fetches wait for its fetch long-poll (~0.5 s): a
        # second, idle consumer answers them at once.
        self.offsets = AIOKafkaConsumer(bootstrap_servers=options.kafka, group_id=None, enable_auto_commit=False)
        self.admin = AIOKafkaAdminClient(bootstrap_servers=options.kafka)
        self.task: asyncio.Task[None] | None = None
        self.layout: dict[str, list[int]] = {}  # topic (unprefixed) -> partition numbers

    def partitions(self, topic: str) -> list[TopicPartition]:
        return [TopicPartition(self.prefix + topic, p) for p in self.layout[topic]]

    async def start(self) -> None:
        await self.consumer.start()
        await self.offsets.start()
        await self.admin.start()
        names = [self.prefix + t for t in topics.ALL_TOPICS]
        for found in await self.admin.describe_topics(names):
            if found["error_code"] or not found["partitions"]:
                raise DemoError(f"topic {found['topic']} does not exist: are the services running "
                                f"with TOPIC_PREFIX={self.prefix!r}?")
            self.layout[found["topic"].removeprefix(self.prefix)] = sorted(
                p["partition"] for p in found["partitions"])
        watched = [tp for t in (*OUTPUTS, *DLQS) for tp in self.partitions(t)]
        self.consumer.assign(watched)
        for tp, offset in (await self.consumer.end_offsets(watched)).items():
            self.consumer.seek(tp, offset)  # the run's own records only: from where the topic ends now
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        await self.consumer.stop()
        await self.offsets.stop()
        await self.admin.close()

    async def _run(self) -> None:
        while True:
            batch = await self.consumer.getmany(timeout_ms=200, max_records=5000)
            for records in batch.values():
                for r in records:
                    self._add(r.topic.removeprefix(self.prefix), r.value, dict(r.headers))

    def _add(self, topic: str, value: bytes, record_headers: dict[str, bytes]) -> None:
        if topic in DLQS:
            try:
                if crypto.KEY_ID_HEADER in record_headers:  # dead letters are sealed at rest
                    value = DLQ_KEYRING.open(value)
                agency = orjson.loads(value).get("agencyid")
            except (orjson.JSONDecodeError, AttributeError, InvalidToken):
                agency = None
            code = record_headers.get("error-code", b"?").decode()
            self.tally.add_dead_letter(DLQS[topic], code, agency if isinstance(agency, str) else None)
            return
        self.tally.outputs[OUTPUTS[topic]] += 1
        if topic == topics.SUBSIDY_EVENTS:
            self.tally.add_subsidy(orjson.loads(value))

    async def caught_up(self) -> bool:
        assigned = list(self.consumer.assignment())
        ends = await self.offsets.end_offsets(assigned)
        for tp in assigned:
            if await self.consumer.position(tp) < ends[tp]:
                return False
        return True

    async def behind(self, service: str) -> int:
        """Records in the service's input topics past its consumer group's committed offsets."""
        wanted = [tp for t in INPUTS[service] for tp in self.partitions(t)]
        ends = await self.offsets.end_offsets(wanted)
        committed = await self.admin.list_consumer_group_offsets(self.prefix + service, partitions=wanted)
        return sum(max(0, ends[tp] - (committed[tp].offset if tp in committed and committed[tp].offset >= 0
                                      else 0)) for tp in wanted)


@dataclass
class View:
    """The state the live display shows."""

    phase: str = "starting"
    waiting: str = ""
    produced: int = 0
    total: int = 0
    stats: dict[str, ServiceStats] = field(default_factory=dict)


class Demo:
    """One run: generate, stream in two phases, wait for the services to settle, tally the outcome."""

    def __init__(self, options: Options, console: Console) -> None:
        self.options, self.console = options, console
        seed = options.seed if options.seed is not None else int(time.time())
        self.services = Services(options.urls)
        self.policies = Policies.from_dir(options.policy_dir)
        rule_funds = {(f.agency, rule): r["fund"] for f in self.policies.files for rule, r in f.rules.items()}
        self.report = Report(seed, options.persons, options.agencies, options.disorder,
                             options.topic_prefix, dt.datetime.now().astimezone(),
                             Tally(f"/{seed}-", {a: AgencyTally() for a in options.agencies},
                                   rule_funds=rule_funds))
        self.view = View()
        self.watcher: Watcher  # made in run(): its Kafka clients belong to the running event loop
        self.settling = False  # while a phase settles, its loop polls the services for the display too
        self.t0 = time.monotonic()

    async def run(self) -> Report:
        opts, report = self.options, self.report
        down = await asyncio.to_thread(self.services.not_ready)
        if down:
            raise DemoError(f"not ready: {', '.join(down)}; start the stack and services with `make up`")
        unknown = sorted(set(opts.agencies) - set(DEFAULT_AGENCIES))
        if unknown or not opts.agencies:
            raise DemoError(f"--agencies: choose among {', '.join(DEFAULT_AGENCIES)} (not {unknown})")
        with self.console.status(f"generating {opts.persons:,} persons (seed {report.seed})"):
            pop = await asyncio.to_thread(simulate, opts.persons, report.seed, opts.agencies, opts.disorder)
        report.intended_dead_letters.update(pop.malformed)
        add_integrity_cases(pop, opts.agencies)
        await self._refuse_replay(pop)
        years: tuple[int, ...] = (YEAR - 1, YEAR, YEAR + 1)
        self.watcher = Watcher(self.options, report.tally)
        try:
            await self.watcher.start()
            report.api_before = await self.services.totals(opts.agencies, years)
            report.notes += self._budget_notes(years)
            self.t0 = time.monotonic()
            with Live(self.render(), console=self.console, auto_refresh=False, transient=True) as live:
                refresher = asyncio.create_task(self._refresh(live))
                try:
                    for phase, topic, records in (("training", topics.TRAINING_UPSTREAM, pop.training),
                                                  ("assessment", topics.ASSESSMENT_UPSTREAM, pop.assessment)):
                        await self._phase(phase, topic, pop, records)
                        if report.problem:
                            break
                finally:
                    refresher.cancel()
                    await asyncio.gather(refresher, return_exceptions=True)
                    self._sample()
            years = tuple(sorted(set(years) | report.tally.years))
            report.api_after = await self.services.totals(opts.agencies, years)
            report.parked = sum(s.parked for s in self.view.stats.values())
        finally:
            await self.watcher.stop()
        return report

    def _budget_notes(self, years: Sequence[int]) -> list[str]:
        """What the reader must know to read the budgets: a service running another policy set,
        and budgets an earlier run on this stack already spent (budgets are per year and the
        stack keeps them, so thresholds are reported once per stack, not once per run)."""
        notes = []
        for agency in self.options.agencies:
            before = self.report.api_before.get(agency, ApiTotals()).budgets
            for year in years:
                for fund in sorted({f for p in self.policies.files if p.agency == agency for f in p.budgets}):
                    want = self.policies.budget_fen(agency, fund, year)
                    cap, committed = before.get((fund, year), (None, 0))
                    if cap != want:
                        notes.append(f"{agency} {fund} {year}: the subsidy service's budget is "
                                     f"{'unlimited' if cap is None else cny(cap)}, {self.options.policy_dir} "
                                     f"sets {'none' if want is None else cny(want)}: it runs another policy "
                                     "set (SUBSIDY_POLICY_DIR); `make down && make demo` restarts it with the "
                                     "budgeted one")
                    elif cap and committed * 10 >= cap * 8:
                        notes.append(f"{agency} {fund} {year}: {committed / cap:.0%} of the budget was committed "
                                     "before this run (an earlier run on this stack): its thresholds were "
                                     "reported then, and this run's grants from it may be budget_exhausted")
        return notes

    async def _refuse_replay(self, pop: Population) -> None:
        first = next((r.key for r in pop.training if f"/{pop.seed}-" in r.key
                      and f'"type":"{ENROLLED}"'.encode() in r.value), None)
        if first and not self.options.allow_replay and await asyncio.to_thread(self.services.has_enrollment, first):
            raise DemoError(f"seed {self.report.seed} was already streamed to this stack (enrollment {first} "
                            "exists): every record would be a duplicate with no new decision. Omit --seed for "
                            "a fresh run, or pass --allow-replay to watch the services absorb it.")

    async def _phase(self, phase: str, topic: str, pop: Population, records: list[Record]) -> None:
        report, started = self.report, time.monotonic()
        number = 1 if topic == topics.TRAINING_UPSTREAM else 2
        self.view.phase, self.view.waiting = f"{number}/2 {phase} records", "producing"
        self.view.total += len(records)
        await self._produce(topic, pop, records)
        report.produced[topic] = len(records)
        self.console.print(f"[green]✓[/] {number}/2 produced {len(records):,} {phase} records "
                           f"in {time.monotonic() - started:.1f} s")
        deadline = started + (self.options.timeout or 120 + self.options.persons / 20)
        if await self._settle(deadline):
            report.phases[phase] = time.monotonic() - started
            self.console.print(f"[green]✓[/] {number}/2 the services settled {report.phases[phase]:.1f} s "
                               f"after the {phase} phase started")
        else:
            report.problem = f"the {phase} phase did not settle in time ({self.view.waiting})"
            self.console.print(f"[bold red]✗[/] {number}/2 {report.problem}")

    async def _produce(self, topic: str, pop: Population, records: list[Record]) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.options.kafka, enable_idempotence=True,
                                    linger_ms=10, max_batch_size=256 * 1024)
        await producer.start()
        try:
            name = self.options.topic_prefix + topic
            partitions = len(await producer.partitions_for(name))

            def acked(_future: object) -> None:
                self.view.produced += 1

            futures = []
            for n, record in enumerate(records):
                # Each person's records to one partition (their lane): the services see them in order.
                future = await producer.send(name, value=record.value, key=record.key.encode(),
                                             partition=pop.lane(record.key) % partitions, headers=headers())
                future.add_done_callback(acked)
                futures.append(future)
                if n % 1000 == 0:
                    await asyncio.sleep(0)  # let the display and the watcher run while we send
            await asyncio.gather(*futures)
        finally:
            await producer.stop()

    async def _waiting_for(self) -> str:
        """What the run still waits for before it may call a phase settled ('' when nothing)."""
        for service in SERVICES:
            stats = self.view.stats.get(service, ServiceStats())
            if stats.lag is None:
                return f"{service} /metrics"
            if stats.lag or stats.backlog:
                return f"{service}: lag {stats.lag:,}, outbox {stats.backlog:,}"
            behind = await self.watcher.behind(service)
            if behind:
                return f"{service}: {behind:,} records not yet committed"
        return "" if await self.watcher.caught_up() else "reading the outputs"

    async def _settle(self, deadline: float) -> bool:
        self.settling = True
        try:
            return await self._settle_until(deadline)
        finally:
            self.settling = False

    async def _settle_until(self, deadline: float) -> bool:
        quiet_since, last = time.monotonic(), -1
        while True:
            self.view.stats = await self.services.stats()
            waiting = await self._waiting_for()
            t = self.report.tally
            seen = sum(t.outputs.values()) + sum(t.dead_letters.values())
            now = time.monotonic()
            if waiting or seen != last:
                quiet_since, last = now, seen
            self.view.waiting = f"waiting for {waiting}" if waiting else f"quiet for {now - quiet_since:.1f} s"
            if not waiting and now - quiet_since >= QUIET_SECONDS:
                return True
            if now > deadline:
                return False
            await asyncio.sleep(POLL_SECONDS)

    async def _refresh(self, live: Live) -> None:
        while True:
            if not self.settling:
                self.view.stats = await self.services.stats()
            self._sample()
            live.update(self.render(), refresh=True)
            await asyncio.sleep(0.5)

    def _sample(self) -> None:
        t = self.report.tally
        self.report.samples.append(Sample(time.monotonic() - self.t0, self.view.produced,
                                          t.outputs["enrollment"], t.outputs["assessment"], t.decisions))

    def render(self) -> RenderableType:
        v, t = self.view, self.report.tally
        elapsed = time.monotonic() - self.t0
        recent = [s for s in self.report.samples if s.at >= elapsed - 3]
        span = recent[-1].at - recent[0].at if len(recent) > 1 else 0.0
        rate = (recent[-1].decisions - recent[0].decisions) / span if span else 0.0
        head = Table.grid(padding=(0, 1))
        head.add_column(style="bold", justify="right")
        head.add_column()
        head.add_row("demo", f"seed {self.report.seed} · {self.options.persons:,} persons · "
                     f"{len(self.options.agencies)} agencies · {elapsed:.0f} s")
        head.add_row("phase", Text.assemble((v.phase, "cyan"), "  ", (v.waiting, "dim")))
        bar = Table.grid(padding=(0, 1))
        bar.add_row(ProgressBar(total=max(v.total, 1), completed=v.produced, width=32),
                    f"{v.produced:,} / {v.total:,} upstream records")
        head.add_row("produced", bar)
        granted = sum(a.grants.count for a in t.agencies.values())
        rejected = sum(sum(a.rejections.values()) for a in t.agencies.values())
        reversed_ = sum(a.reversed.count for a in t.agencies.values())
        head.add_row("decisions", f"{t.decisions:,} · {rate:,.0f}/s  (granted {granted:,} · "
                     f"rejected {rejected:,} · reversed {reversed_:,})")
        table = Table(box=box.SIMPLE_HEAD, show_edge=False)
        for col in ("service", "consumer lag", "outbox", "parked", "events out", "dead letters"):
            table.add_column(col, justify="left" if col == "service" else "right")
        for s in SERVICES:
            st = v.stats.get(s, ServiceStats())
            dead = sum(n for (svc, _c), n in t.dead_letters.items() if svc == s)
            table.add_row(s, "?" if st.lag is None else f"{st.lag:,}", f"{st.backlog or 0:,}",
                          f"{st.parked:,}", f"{t.outputs[s]:,}", f"{dead:,}")
        return Group(head, table)


def add_integrity_cases(pop: Population, agencies: Sequence[str]) -> None:
    """Two trainees per agency who trip each integrity check (POLICY.md §6), each in a lane of
    their own after the population's: 8 + 6 hours on the same days at two institutions
    (daily_hours_exceeded, both enrollments flagged), and a day attended 40 days after the
    planned end (far_outside_plan). Both complete and pass, so each agency's money on them
    (completion and certificate rules) is held for review."""
    rng = random.Random(f"integrity:{pop.seed}")
    start = dt.date(YEAR, 6, 1)
    end = start + dt.timedelta(days=19)
    lane = max(pop.lanes.values(), default=-1) + 1
    counter = 0

    def record(bucket: list[Record], type: str, data: dict[str, Any], key: str, source: str,
               agency: str, day: dt.date) -> None:
        nonlocal counter
        counter += 1
        value = encode_raw(type, data, id=f"integrity-{pop.seed}-{counter}", source=source,
                           subject=key, agencyid=agency, time=f"{day.isoformat()}T18:00:00+08:00")
        bucket.append(Record(key, value))
        pop.lanes.setdefault(key, lane)

    for agency in agencies:
        for check in ("daily_hours_exceeded", "far_outside_plan"):
            nid = national_id(rng, agency, dt.date(1990, 1, 1) + dt.timedelta(days=rng.randint(0, 5000)))
            trainee = {"national_id": nid, "name": "演示学员", "categories": ["low_income", "poor_labor"],
                       "rural": True, "hukou_agency": agency, "insured_months": 24,
                       "hired_on": f"{YEAR - 1}-06-01"}
            employer = {"id": f"EMP-{agency.upper()}-INTEGRITY", "insured": True,
                        "hardship_certified": False, "sector": None, "employee_model_domestic": False}
            institutions = [f"INST-{INSTITUTION_BLOCK[agency] + 90 + n:04d}" for n in (1, 2)]
            refs = [f"{inst}/{YEAR}/{pop.seed}-{check}-{n}" for n, inst in enumerate(institutions)]
            if check == "far_outside_plan":
                refs, institutions = refs[:1], institutions[:1]
            training: list[tuple[dt.date, int, int, str, dict[str, Any], str, str]] = []
            for n, (ref, inst) in enumerate(zip(refs, institutions, strict=True)):
                course = {"course_id": f"C-INTEGRITY-{n}", "occupation_code": f"6-18-01-0{n + 1}",
                          "occupation_name": "演示", "level": "intermediate",
                          "training_type": "skill_upgrade", "planned_hours": 80,
                          "start_date": start.isoformat(), "end_date": end.isoformat(),
                          "project_based": False, "program_years": None}
                source, base = f"/institutions/{inst}", {"enrollment_ref": ref, "institution_id": inst}
                training.append((start - dt.timedelta(days=5), 0, n, ENROLLED, {
                    **base, "trainee": trainee, "employer": employer, "course": course,
                    "fee": {"amount_fen": 150000, "payer": "employer"}}, ref, source))
                days = [start + dt.timedelta(days=d) for d in range(10)]
                if check == "far_outside_plan":
                    days.append(end + dt.timedelta(days=40))
                for day in days:
                    training.append((day, 1, n, ATTENDANCE,
                                     {**base, "date": day.isoformat(), "hours": 8 - 2 * n}, ref, source))
                finished = days[-1]
                training.append((finished, 2, n, FINISHED, {**base, "finished_on": finished.isoformat()},
                                 ref, source))
                assessment_ref = f"EV-99/{YEAR}/{pop.seed}-{agency}-{check}-{n}"
                record(pop.assessment, RESULT, {
                    "assessment_ref": assessment_ref, "evaluator_id": "EV-99", "national_id": nid,
                    "enrollment_ref": ref, "occupation_code": course["occupation_code"],
                    "level": "intermediate", "certificate_kind": "skill_level", "passed": True,
                    "assessed_on": (finished + dt.timedelta(days=5)).isoformat()},
                    assessment_ref, "/evaluators/EV-99", agency, finished + dt.timedelta(days=5))
            # In time order, both enrollments' days side by side: the flags come before completion.
            for day, _order, _n, type, data, ref, source in sorted(training, key=lambda t: t[:3]):
                record(pop.training, type, data, ref, source, agency, day)
            lane += 1


def console_lines(options: Options, services: Services) -> list[str]:
    """Where a reviewer decides the run's holds, with the local reviewer tokens."""
    url = f"{options.urls['subsidy']}/console/"
    tokens = local_tokens.load()
    if tokens is None or not services.tokens_required():
        return [f"Review console: {url} (this stack runs without API tokens: sign in with any "
                "text as an auditor, who reads but cannot review; `make up` configures tokens)"]
    reviewers: dict[str, str] = tokens["reviewers"]  # type: ignore[assignment]  # the token file's shape (tools.local_tokens)
    return [f"Review console: {url} — sign in with a reviewer token of an agency to release or "
            f"deny its held grants:"] + [
        f"  {agency:8} {reviewers[agency]}" for agency in options.agencies if agency in reviewers]


def write_report(report: Report, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(report), encoding="utf-8")
    return path.resolve()


async def run_demo(options: Options, console: Console | None = None) -> tuple[Report, Path]:
    """Run the demo end to end; return the report and the path of the HTML file written."""
    console = console or Console()
    demo = Demo(options, console)
    report = await demo.run()
    path = write_report(report, options.report or Path("reports") / f"demo-{report.seed}.html")
    console.print(terminal_summary(report, path))
    console.print("Metrics (Prometheus text): " + "  ".join(
        f"{options.urls[s]}/metrics" for s in SERVICES))
    console.print("Scrape config and alert rules: deploy/prometheus/; dashboard: "
                  "deploy/grafana/ (docs/OPERATIONS.md, docs/METRICS.md)")
    for line in console_lines(options, demo.services):
        console.print(line, highlight=False, soft_wrap=True)
    return report, path


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    try:
        report, _path = asyncio.run(run_demo(options))
    except DemoError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2
    return 1 if report.problem else 0


if __name__ == "__main__":
    sys.exit(main())
