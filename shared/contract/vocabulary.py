"""The contract's closed vocabularies (EVENTS.md §3, §5.3), standard library only.

Shared by the payload models (shared.contract.events) and the pure domain modules, which may not
import pydantic: one definition, so a code cannot drift between the contract and the engine.
"""

from __future__ import annotations

from enum import StrEnum


class Level(StrEnum):
    JUNIOR = "junior"
    INTERMEDIATE = "intermediate"
    SENIOR = "senior"
    TECHNICIAN = "technician"
    SENIOR_TECHNICIAN = "senior_technician"


class CertificateKind(StrEnum):
    QUALIFICATION = "qualification"
    SKILL_LEVEL = "skill_level"
    SPECIAL_ABILITY = "special_ability"
    SPECIAL_OPERATION = "special_operation"
    SPECIAL_EQUIPMENT = "special_equipment"
    TRAINING_COMPLETION = "training_completion"

LEVELLED_KINDS = frozenset({CertificateKind.QUALIFICATION, CertificateKind.SKILL_LEVEL})


class TrainingType(StrEnum):
    SKILL_UPGRADE = "skill_upgrade"
    PRE_JOB = "pre_job"
    JOB_TRANSFER = "job_transfer"
    SAFETY = "safety"
    SPECIAL_OPERATION = "special_operation"
    APPRENTICESHIP = "apprenticeship"
    WORK_FOR_TRAINING = "work_for_training"
    DOMESTIC_PREJOB = "domestic_prejob"
    DOMESTIC_REFRESH = "domestic_refresh"
    NON_LEVEL = "non_level"
    ENTREPRENEURSHIP = "entrepreneurship"
    KEY_INDUSTRY = "key_industry"


class Category(StrEnum):
    POOR_LABOR = "poor_labor"
    POOR_FAMILY_CHILD = "poor_family_child"
    LOW_INCOME = "low_income"
    EMPLOYMENT_DIFFICULTY = "employment_difficulty"
    ZERO_EMPLOYMENT_FAMILY = "zero_employment_family"
    NON_CONTINUING_GRADUATE = "non_continuing_graduate"
    URBAN_DIBAO_FAMILY = "urban_dibao_family"
    RURAL_MIGRANT = "rural_migrant"
    RURAL_LABOR = "rural_labor"
    COLLEGE_GRADUATE = "college_graduate"
    REGISTERED_UNEMPLOYED = "registered_unemployed"
    OVERCAPACITY_DISPLACED = "overcapacity_displaced"
    JOB_TRANSFEREE = "job_transferee"
    VETERAN = "veteran"
    DISABLED = "disabled"
    ENTERPRISE_EMPLOYEE = "enterprise_employee"
    DOMESTIC_WORKER = "domestic_worker"
    PENSION_ELIGIBLE = "pension_eligible"


class PayeeKind(StrEnum):
    PERSON = "person"
    EMPLOYER = "employer"
    INSTITUTION = "institution"


class Sector(StrEnum):
    HITECH = "hitech"
    FINTECH = "fintech"
    CULTURE = "culture"
    LIFE_SERVICES = "life_services"
    CITY_OPS = "city_ops"


class SubsidyStage(StrEnum):
    FULL = "full"
    ADVANCE = "advance"
    SETTLEMENT = "settlement"


class RejectionReason(StrEnum):
    """In the order POLICY.md §5 checks them; the first failing check is the one reported."""

    PENSION_ELIGIBLE = "pension_eligible"
    CERTIFICATE_KIND_NOT_COVERED = "certificate_kind_not_covered"
    INELIGIBLE_CATEGORY = "ineligible_category"
    INSUFFICIENT_INSURANCE = "insufficient_insurance"
    OUTSIDE_HIRE_WINDOW = "outside_hire_window"
    INSUFFICIENT_HOURS = "insufficient_hours"
    AMOUNT_NOT_CONFIGURED = "amount_not_configured"
    DUPLICATE_PROJECT = "duplicate_project"
    DUPLICATE_OCCUPATION_LEVEL = "duplicate_occupation_level"
    NOT_STACKABLE = "not_stackable"
    ANNUAL_LIMIT = "annual_limit"
    BUDGET_EXHAUSTED = "budget_exhausted"
    # POLICY.md §6: the end of a hold (SubsidyHeld), not checks of a decision
    INTEGRITY_DENIED = "integrity_denied"  # a reviewer denied the held grant
    HOLD_VOIDED = "hold_voided"  # what would have reversed the grant ended its hold


class IntegrityCheck(StrEnum):
    """The enrollment service's integrity checks (POLICY.md §6, EVENTS.md §5.1)."""

    DAILY_HOURS_EXCEEDED = "daily_hours_exceeded"
    FAR_OUTSIDE_PLAN = "far_outside_plan"


class ReviewDecision(StrEnum):
    """What a reviewer decides about a held grant (EVENTS.md §5.4)."""

    RELEASE = "release"
    DENY = "deny"


class ReversalReason(StrEnum):
    CERTIFICATE_REVOKED = "certificate_revoked"
    ADVANCE_NOT_EARNED = "advance_not_earned"
    ENROLLMENT_WITHDRAWN = "enrollment_withdrawn"
    POLICY_CORRECTION = "policy_correction"  # EVENTS.md §5.3: a correction lowered the entitlement
