-- Integrity flags (POLICY.md §6): at most one EnrollmentFlagged per enrollment and check, so a
-- flag is published once however often its attendance is redelivered or replayed.

CREATE TABLE enrollment_flag (
    enrollment_ref  text NOT NULL,
    integrity_check text NOT NULL,      -- daily_hours_exceeded | far_outside_plan
    person_id       text NOT NULL,
    flagged_on      date NOT NULL,      -- the attendance date that tripped the check
    detail          text NOT NULL,
    PRIMARY KEY (enrollment_ref, integrity_check)
);
CREATE INDEX enrollment_flag_person ON enrollment_flag (person_id);
