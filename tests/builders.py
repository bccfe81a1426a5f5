"""Builders of contract-valid upstream payloads for tests (valid national ids included)."""

from __future__ import annotations

import random
import uuid
from typing import Any

from shared.contract.identity import check_digit, person_id
from tests.harness import SECRET


def national_id(rng: random.Random | None = None) -> str:
    rng = rng or random.Random()
    first17 = (
        "321302"
        + f"{rng.randint(1960, 2005):04d}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
        + f"{rng.randint(0, 999):03d}"
    )
    return first17 + check_digit(first17)


def pid(nid: str) -> str:
    return person_id(nid, SECRET)


def ref(prefix: str = "INST-T") -> str:
    return f"{prefix}/2026/{uuid.uuid4().hex[:10]}"


def enrolled(enrollment_ref: str, nid: str, **over: Any) -> dict[str, Any]:
    course = {
        "course_id": "C-ELEC-3", "occupation_code": "6-31-01-03", "occupation_name": "电工",
        "level": "intermediate", "training_type": "skill_upgrade", "planned_hours": 80,
        "start_date": "2026-03-01", "end_date": "2026-03-20", "project_based": False,
        "program_years": None,
    }
    course.update(over.pop("course", {}))
    trainee = {
        "national_id": nid, "name": "张三", "categories": ["rural_migrant", "non_continuing_graduate"],
        "rural": True, "hukou_agency": "suqian", "insured_months": 14, "hired_on": "2026-01-10",
    }
    trainee.update(over.pop("trainee", {}))
    data = {
        "enrollment_ref": enrollment_ref, "institution_id": "INST-T", "trainee": trainee,
        "employer": {"id": "91321300MA1XXXXX0X", "insured": True, "hardship_certified": False,
                     "sector": None, "employee_model_domestic": False},
        "course": course, "fee": {"amount_fen": 150000, "payer": "employer"},
    }
    data.update(over)
    return data


def attendance(enrollment_ref: str, date: str, hours: float = 8) -> dict[str, Any]:
    return {"enrollment_ref": enrollment_ref, "institution_id": "INST-T", "date": date, "hours": hours}


def finished(enrollment_ref: str, on: str = "2026-03-20") -> dict[str, Any]:
    return {"enrollment_ref": enrollment_ref, "institution_id": "INST-T", "finished_on": on}


def withdrawn(enrollment_ref: str, on: str = "2026-03-05") -> dict[str, Any]:
    return {"enrollment_ref": enrollment_ref, "institution_id": "INST-T", "withdrawn_on": on,
            "reason": "moved away"}


def month(enrollment_ref: str, m: str, wages_fen: int = 400000) -> dict[str, Any]:
    return {"enrollment_ref": enrollment_ref, "institution_id": "INST-T", "month": m,
            "wages_fen": wages_fen}
