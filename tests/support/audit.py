"""Helpers to sequence queued audit events in tests, as the worker would."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from flask import Flask

from audit.sequencer import Sequencer
from audit.signer import Ed25519Signer
from audit.sql import audit_log, audit_pending
from sovereign.adapters.database import SqlUnitOfWorkFactory
from sovereign.services.ports import UnitOfWorkFactory

ORIGIN = "test.sovereign/audit"
SIGNER = Ed25519Signer.generate(ORIGIN)


def sequence(uow: UnitOfWorkFactory) -> None:
    """Sequence everything queued in ``uow``'s database (the memory backend needs nothing)."""
    if isinstance(uow, SqlUnitOfWorkFactory):
        Sequencer(uow.engine, SIGNER, ORIGIN).run_once()


def stored(app: Flask) -> list[dict[str, Any]]:
    """Every event in ``app``'s database, sequenced or still pending, oldest first."""
    engine = sa.create_engine(app.config["DATABASE_URL"])
    try:
        with engine.connect() as conn:
            entries = [
                *conn.execute(sa.select(audit_log.c.entry)).scalars(),
                *conn.execute(sa.select(audit_pending.c.entry)).scalars(),
            ]
    finally:
        engine.dispose()
    events = {e["id"]: e for e in (json.loads(entry) for entry in entries)}
    return sorted(events.values(), key=lambda e: e["time"])
