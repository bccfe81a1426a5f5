"""POLICY.md §5 read rule by rule: slots, selection, rejection order and project-based payees.

Every expected row below is worked out by hand from POLICY.md §4/§5 (amounts in fen: 300 CNY =
30000), never from the engine. Each case is a short script of facts for one person and the
outputs it must give, in decision order. The comment on each case is the policy text it checks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from .world import World, employer, summary

Script = Callable[[World], list[Any]]
VETERAN = ("veteran",)  # an SQ-SPECOP group, no living-allowance group


def per_person(agency: str, training_type: str, *, kind: str = "training_completion",
               occupation: str = "6-31-01-03", **enroll: Any) -> Script:
    """Enroll, complete (80 h over 10 days) and pass one level-less course."""
    def run(w: World) -> list[Any]:
        ref = w.enroll(agency, training_type=training_type, level=None, occupation=occupation,
                       **enroll)
        return w.last_outputs + w.complete(ref) + w.certify(ref, kind=kind, level=None)
    return run


def then(*scripts: Script) -> Script:
    def run(w: World) -> list[Any]:
        return [o for script in scripts for o in script(w)]
    return run


def certificate_level(agency: str, level: str, *, occupation: str = "6-31-01-03",
                      start: str = "2026-03-01", **enroll: Any) -> Script:
    def run(w: World) -> list[Any]:
        ref = w.enroll(agency, level=level, occupation=occupation, start=start, **enroll)
        return w.complete(ref) + w.certify(ref)
    return run


CASES: dict[str, tuple[Script, list[tuple[Any, ...]]]] = {
    # §5 Slots: SQ-SPECOP keys on (occupation, training type) like every per_person rule: after
    # SQ-PREJOB (300 CNY, employer) on a special_operation course it is duplicate_occupation_level.
    "sq-specop after sq-prejob on a special_operation course": (
        per_person("suqian", "special_operation", kind="special_operation",
                   employer=employer(), categories=VETERAN),
        [("granted", "SQ-PREJOB", "full", 30000, "employer"),
         ("rejected", "SQ-SPECOP", "duplicate_occupation_level")]),
    # §5 Which rules fire: SQ-SPECOP is selected by the certificate from any training type; on a
    # safety course SQ-SAFETY (300 CNY, first in the table) holds (occupation, safety) first.
    "sq-specop after sq-safety on a safety course": (
        per_person("suqian", "safety", kind="special_operation", employer=employer(),
                   categories=VETERAN),
        [("granted", "SQ-SAFETY", "full", 30000, "employer"),
         ("rejected", "SQ-SPECOP", "duplicate_occupation_level")]),
    # A rejected rule holds no slot: SQ-SAFETY without an employer is ineligible_category, so
    # SQ-SPECOP (500 CNY, person) pays.
    "sq-specop when sq-safety is ineligible": (
        per_person("suqian", "safety", kind="special_operation", categories=VETERAN),
        [("rejected", "SQ-SAFETY", "ineligible_category"),
         ("granted", "SQ-SPECOP", "full", 50000, "person")]),
    # The same occupation under two training types is two slots for SQ-SPECOP.
    "sq-specop twice, same occupation, two training types": (
        then(per_person("suqian", "entrepreneurship", kind="special_operation",
                        categories=VETERAN),
             per_person("suqian", "non_level", kind="special_operation", categories=VETERAN)),
        [("granted", "SQ-SPECOP", "full", 50000, "person"),
         ("granted", "SQ-SPECOP", "full", 50000, "person")]),
    # ... and the same occupation and training type twice is one slot.
    "sq-specop twice, same occupation and training type": (
        then(per_person("suqian", "entrepreneurship", kind="special_operation",
                        categories=VETERAN),
             per_person("suqian", "entrepreneurship", kind="special_operation",
                        categories=VETERAN)),
        [("granted", "SQ-SPECOP", "full", 50000, "person"),
         ("rejected", "SQ-SPECOP", "duplicate_occupation_level")]),
    # §5 Slots: BJ-SPECOP, a second grant for the same certificate kind is
    # duplicate_occupation_level, whatever the occupation; another kind is a slot of its own.
    "bj-specop: one grant per certificate kind": (
        then(per_person("beijing", "entrepreneurship", kind="special_operation",
                        insured_months=12),
             per_person("beijing", "entrepreneurship", kind="special_operation",
                        occupation="6-29-03-01", insured_months=12),
             per_person("beijing", "entrepreneurship", kind="special_equipment",
                        occupation="6-29-03-02", insured_months=12)),
        [("granted", "BJ-SPECOP", "full", 100000, "person"),
         ("rejected", "BJ-SPECOP", "duplicate_occupation_level"),
         ("granted", "BJ-SPECOP", "full", 100000, "person")]),
    # certificate_level rules key on (occupation, level): A-CERT-ENT intermediate 1500 CNY,
    # again at intermediate is a duplicate, senior 3000 CNY is a slot of its own.
    "a-cert-ent: (occupation, level)": (
        then(certificate_level("city-a", "intermediate", employer=employer(), payer="employer"),
             certificate_level("city-a", "intermediate", employer=employer(), payer="employer",
                               start="2026-05-01"),
             certificate_level("city-a", "senior", employer=employer(), payer="employer",
                               start="2026-07-01")),
        [("granted", "A-CERT-ENT", "full", 150000, "employer"),
         ("rejected", "A-CERT-ENT", "duplicate_occupation_level"),
         ("granted", "A-CERT-ENT", "full", 300000, "employer")]),
    # Only counted rules hold slots: SQ-LIVING (30 CNY/day, nc) pays twice on one occupation.
    "sq-living holds no slot": (
        then(per_person("suqian", "entrepreneurship", categories=("low_income",)),
             per_person("suqian", "entrepreneurship", categories=("low_income",))),
        [("granted", "SQ-LIVING", "full", 30000, "person"),
         ("granted", "SQ-LIVING", "full", 30000, "person")]),
    # §5 Slots, same project: a second pass on the same enrollment is duplicate_project (checked
    # before the occupation slot).
    "bs-prejob: a second pass on the same enrollment": (
        lambda w: (lambda ref: w.complete(ref) + w.certify(ref, kind="training_completion",
                                                           level=None)
                   + w.certify(ref, kind="training_completion", level=None, on="2026-04-10"))(
            w.enroll("baoshan", training_type="pre_job", level=None, payer="person")),
        [("granted", "BS-PREJOB", "full", 80000, "person"),
         ("rejected", "BS-PREJOB", "duplicate_project")]),
    # §5 Reversals release slots: a revoked A-CERT-ENT frees (occupation, level) for a new claim.
    "a revocation frees the slot": (
        lambda w: (certificate_level("city-a", "junior", employer=employer(), payer="employer")(w)
                   + w.revoke(w.last_certificate)
                   + certificate_level("city-a", "junior", employer=employer(),
                                       payer="employer", start="2026-06-01")(w)),
        [("granted", "A-CERT-ENT", "full", 100000, "employer"),
         ("reversed", "A-CERT-ENT", "certificate_revoked", 100000),
         ("granted", "A-CERT-ENT", "full", 100000, "employer")]),
    # §3.1: at most 3 counted grants per person and year; the 4th is annual_limit; SQ-LIVING does
    # not count (here: none, no living-allowance group).
    "the fourth counted grant in a year": (
        then(*(per_person("suqian", "pre_job", occupation=f"6-31-01-0{n}", employer=employer())
               for n in range(1, 5))),
        [("granted", "SQ-PREJOB", "full", 30000, "employer")] * 3
        + [("rejected", "SQ-PREJOB", "annual_limit")]),
    # §5 rejection order: pension_eligible first, even for an ineligible employer-paid rule.
    "pension_eligible before ineligible_category": (
        per_person("suqian", "pre_job", categories=("pension_eligible",)),
        [("rejected", "SQ-PREJOB", "pension_eligible")]),
    # ineligible_category (no employer for an employer-paid rule) before insufficient_hours.
    "ineligible_category before insufficient_hours": (
        lambda w: w.complete(w.enroll("beijing", training_type="pre_job", level=None,
                                      hired_on="2026-01-10"), hours=10),
        [("rejected", "BJ-PREJOB", "ineligible_category")]),
    # insufficient_insurance (BJ-SPECOP needs 12 insured months) with 11.
    "bj-specop with 11 insured months": (
        per_person("beijing", "entrepreneurship", kind="special_operation", insured_months=11),
        [("rejected", "BJ-SPECOP", "insufficient_insurance")]),
    # amount_not_configured (SQ-CERT has no amounts) before duplicate_occupation_level.
    "sq-cert: amount_not_configured every time": (
        then(certificate_level("suqian", "junior"),
             certificate_level("suqian", "junior", start="2026-05-01")),
        [("rejected", "SQ-CERT", "amount_not_configured"),
         ("rejected", "SQ-CERT", "amount_not_configured")]),
    # §5 Advances: project-based training pays the institution, but an employer-paid rule still
    # needs an employer: SQ-PREJOB without one gets no advance and is ineligible_category.
    "project-based sq-prejob without an employer": (
        per_person("suqian", "pre_job", project_based=True, payer="institution"),
        [("rejected", "SQ-PREJOB", "ineligible_category")]),
    "project-based sq-safety without an employer": (
        per_person("suqian", "safety", project_based=True, payer="institution"),
        [("rejected", "SQ-SAFETY", "ineligible_category")]),
    "project-based sq-transfer without an employer": (
        per_person("suqian", "job_transfer", project_based=True, payer="institution"),
        [("rejected", "SQ-TRANSFER", "ineligible_category")]),
    # With an employer: 50% advance of 300 CNY = 150 CNY at acceptance, the 150 CNY remainder at
    # settlement, both to the institution.
    "project-based sq-prejob with an employer": (
        per_person("suqian", "pre_job", project_based=True, payer="institution",
                   employer=employer(), institution="INST-9"),
        [("granted", "SQ-PREJOB", "advance", 15000, "institution"),
         ("granted", "SQ-PREJOB", "settlement", 15000, "institution")]),
    # SQ-TRANSFER is fee-capped: min(1000 CNY, fee 555.55 CNY) = 55555 fen; 50% half up = 27778,
    # the settlement is the exact remainder 27777.
    "project-based sq-transfer, fee-capped, odd fen": (
        per_person("suqian", "job_transfer", project_based=True, payer="institution",
                   employer=employer(), fee=55555),
        [("granted", "SQ-TRANSFER", "advance", 27778, "institution"),
         ("granted", "SQ-TRANSFER", "settlement", 27777, "institution")]),
    # Baoshan's fee_payer rule on project-based training paid by the institution: the 800 CNY
    # rule advances 400 CNY and settles 400 CNY (EXAMPLES.md 5), no employer needed.
    "project-based bs-prejob, fee paid by the institution": (
        per_person("baoshan", "pre_job", project_based=True, payer="institution"),
        [("granted", "BS-PREJOB", "advance", 40000, "institution"),
         ("granted", "BS-PREJOB", "settlement", 40000, "institution")]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_policy_text(case: str) -> None:
    script, expected = CASES[case]
    w = World()
    assert summary(script(w)) == expected
