-- Trainees (identity protected), enrollments, attendance and work-for-training months.

CREATE TABLE trainee (
    person_id       text PRIMARY KEY,
    national_id_enc bytea NOT NULL,   -- Fernet ciphertext; the plain id never leaves ingress
    name_enc        bytea NOT NULL,
    first_seen      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE enrollment (
    enrollment_ref text PRIMARY KEY,
    agency         text NOT NULL,
    person_id      text NOT NULL,
    institution_id text NOT NULL,
    course_id      text NOT NULL,
    start_date     date NOT NULL,
    end_date       date NOT NULL,
    planned_hours  int  NOT NULL,
    accepted       jsonb NOT NULL,     -- the EnrollmentAccepted payload as published
    status         text NOT NULL DEFAULT 'open',  -- open | completed | withdrawn
    closed_on      date,
    hours_attended numeric,
    days_attended  int,
    event_time     timestamptz NOT NULL
);
CREATE INDEX enrollment_person ON enrollment (person_id);

CREATE TABLE attendance (
    enrollment_ref text NOT NULL,
    date           date NOT NULL,
    hours          numeric NOT NULL,
    PRIMARY KEY (enrollment_ref, date)
);

CREATE TABLE work_month (
    enrollment_ref text NOT NULL,
    month          text NOT NULL,
    wages_fen      bigint NOT NULL,
    month_index    int NOT NULL,
    PRIMARY KEY (enrollment_ref, month)
);

CREATE TABLE enrollment_rejection (
    source         text NOT NULL,
    id             text NOT NULL,
    enrollment_ref text NOT NULL,
    person_id      text,
    reason         text NOT NULL,
    detail         text NOT NULL,
    PRIMARY KEY (source, id)
);
CREATE INDEX enrollment_rejection_person ON enrollment_rejection (person_id);
