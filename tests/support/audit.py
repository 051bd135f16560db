"""Helpers to sequence queued audit events in tests, as the worker would."""

from __future__ import annotations

from audit.sequencer import Sequencer
from audit.signer import Ed25519Signer
from sovereign.adapters.database import SqlUnitOfWorkFactory
from sovereign.services.ports import UnitOfWorkFactory

ORIGIN = "test.sovereign/audit"
SIGNER = Ed25519Signer.generate(ORIGIN)


def sequence(uow: UnitOfWorkFactory) -> None:
    """Sequence everything queued in ``uow``'s database (the memory backend needs nothing)."""
    if isinstance(uow, SqlUnitOfWorkFactory):
        Sequencer(uow.engine, SIGNER, ORIGIN).run_once()
