"""The enrollment service's pure rules: attendance, closing totals, months, catalogues, duplicates."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from services.enrollment import domain
from services.enrollment.domain import Enrollment, Refusal

D = dt.date


def enrollment(**over: object) -> Enrollment:
    base: dict[str, Any] = dict(
        enrollment_ref="I/1", agency="suqian", person_id="p_" + "0" * 32, institution_id="I",
        course_id="C-1", start_date=D(2026, 3, 1), end_date=D(2026, 3, 20), planned_hours=80,
        accepted={}, event_time=dt.datetime(2026, 3, 1, tzinfo=dt.UTC), attendance={}, months={},
    )
    base.update(over)
    return Enrollment(**base)


@pytest.mark.parametrize("hours", ["0", "-1", "12.01", "24"])
def test_attendance_hours_outside_zero_to_twelve_are_refused(hours: str) -> None:
    with pytest.raises(Refusal) as exc:
        domain.check_attendance(Decimal(hours))
    assert exc.value.code == "invalid_hours"


def test_twelve_hours_on_one_date_are_accepted() -> None:
    domain.check_attendance(Decimal(12))


def test_totals_count_distinct_days_with_hours_and_cap_the_rate_at_one() -> None:
    e = enrollment(planned_hours=10, attendance={D(2026, 3, 2): Decimal(8), D(2026, 3, 3): Decimal("4.5")})
    t = domain.totals(e)
    assert (t.hours, t.days, t.rate) == (Decimal("12.5"), 2, Decimal(1))
    assert domain.number(t.hours) == 12.5 and domain.number(Decimal(8)) == 8


def test_months_are_indexed_by_arrival() -> None:
    e = enrollment(start_date=D(2026, 1, 15), end_date=D(2026, 6, 30))
    assert domain.next_month_index(e) == 1
    e.months = {"2026-03": (1, 1)}
    assert domain.next_month_index(e) == 2


def test_only_a_live_enrollment_in_the_same_course_over_overlapping_dates_is_a_duplicate() -> None:
    first = enrollment()
    assert domain.overlapping([first], "C-1", D(2026, 3, 20), D(2026, 4, 10)) is first
    assert domain.overlapping([first], "C-1", D(2026, 3, 21), D(2026, 4, 10)) is None
    assert domain.overlapping([first], "C-2", D(2026, 3, 1), D(2026, 3, 20)) is None
    first.status = "withdrawn"
    assert domain.overlapping([first], "C-1", D(2026, 3, 1), D(2026, 3, 20)) is None


def test_a_closed_catalogue_refuses_unlisted_institutions_and_courses(tmp_path: Path) -> None:
    (tmp_path / "suqian.json").write_text(json.dumps(
        {"agency": "suqian", "institutions": ["INST-1"], "courses": ["C-1"]}))
    catalogues = domain.Catalogues.load(tmp_path)
    assert catalogues.of("suqian").refusal("INST-1", "C-1") is None
    assert catalogues.of("suqian").refusal("INST-2", "C-1")[0] == "institution_not_accredited"  # type: ignore[index]  # refused: not None
    assert catalogues.of("suqian").refusal("INST-1", "C-9")[0] == "course_not_in_catalogue"  # type: ignore[index]  # refused: not None
    assert catalogues.of("beijing").refusal("ANY", "ANY") is None


def test_the_shipped_catalogues_are_open_for_the_four_default_agencies() -> None:
    catalogues = domain.Catalogues.load(Path("services/enrollment/catalogues"))
    for agency in ("city-a", "suqian", "baoshan", "beijing"):
        assert catalogues.of(agency).refusal("INST-ANY", "C-ANY") is None


@pytest.mark.parametrize(("day", "flagged"), [
    (D(2026, 1, 30), False),  # 30 days before the planned start 2026-03-01: within
    (D(2026, 1, 29), True),   # 31 days before
    (D(2026, 4, 19), False),  # 30 days after the planned end 2026-03-20
    (D(2026, 4, 20), True),   # 31 days after
    (D(2026, 3, 10), False),
])
def test_attendance_is_far_outside_the_plan_only_more_than_30_days_out(day: dt.date, flagged: bool) -> None:
    assert (domain.outside_plan(enrollment(), day, 30) is not None) is flagged


def test_a_day_is_over_the_hours_limit_only_above_12_summed_over_every_enrollment() -> None:
    day = D(2026, 3, 2)
    assert domain.over_daily_hours({"B/1": Decimal(7), "A/1": Decimal(5)}, day, Decimal(12)) is None
    involved, detail = domain.over_daily_hours(
        {"B/1": Decimal(7), "A/1": Decimal("5.5")}, day, Decimal(12)) or ([], "")
    assert involved == ["A/1", "B/1"]
    assert detail == "12.5 hours attended on 2026-03-02 over 2 enrollments (more than 12)"
