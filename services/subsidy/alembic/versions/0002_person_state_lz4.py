"""Person states compressed with LZ4 instead of PostgreSQL's default pglz.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07

Every batch rewrites the state of each person it touches (JSON text, 3.4-3.8 KB on average at
the benchmark's 20,000 persons, over the 2 KB above which PostgreSQL compresses a value). The
upsert of 1,000 such states cost 74 µs a row with pglz and 54 µs with LZ4 (medians of 8
interleaved rounds, ``python -m tools.microbench state-upsert --dsn <a kept bench database>``).
Values already stored stay pglz until their person's next batch rewrites them: both are read
alike. A server built without LZ4 (``--with-lz4``; the PGDG and Debian packages have it) keeps
pglz: the revision notes it and goes on, nothing else depends on the method.
"""

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("""
DO $$
BEGIN
    ALTER TABLE person_state ALTER COLUMN state SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    RAISE NOTICE 'this server has no LZ4: person_state.state stays pglz';
END
$$""")


def downgrade() -> None:
    op.execute("ALTER TABLE person_state ALTER COLUMN state SET COMPRESSION default")
