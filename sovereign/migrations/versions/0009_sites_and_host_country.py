"""sites (name, country, operator) and the country of each host, copied from its site

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 06:00:00.000000

Backfill: one site per distinct ``hosts.site`` (a name that is not a valid site name becomes
its deterministic slug, :func:`sovereign.domain.sites.slugify_site`, and the hosts follow it),
in the country ``SOVEREIGN_DEFAULT_COUNTRY`` names in the environment of the migration (ISO
3166-1 alpha-2; ``ES`` when unset), run by operator ``unknown``. Correct them afterwards with
``sovereign sites`` and two-person relocations.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from sovereign.domain.sites import DEFAULT_COUNTRY, check_country, slugify_site


revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    sites = op.create_table(
        "sites",
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("country", sa.String(length=2), nullable=False),
        sa.Column("operator", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_sites")),
    )
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("country", sa.String(length=2), server_default="", nullable=False)
        )

    country = check_country(os.environ.get("SOVEREIGN_DEFAULT_COUNTRY") or DEFAULT_COUNTRY)
    hosts = sa.table("hosts", sa.column("site", sa.String), sa.column("country", sa.String))
    bind = op.get_bind()
    old_names = sorted(bind.execute(sa.select(hosts.c.site).distinct()).scalars())
    # Stored as UTC, as the application's UtcDateTime does.
    now = datetime.now(UTC)
    made: set[str] = set()
    for old in old_names:
        name = slugify_site(old)
        if name not in made:
            made.add(name)
            bind.execute(
                sites.insert().values(
                    name=name, country=country, operator="unknown", created_at=now
                )
            )
        bind.execute(hosts.update().where(hosts.c.site == old).values(site=name, country=country))


def downgrade() -> None:
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.drop_column("country")
    op.drop_table("sites")
