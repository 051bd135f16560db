"""Sovereign's audit log as a small, standalone library.

Owns the audit event type, its canonical bytes, and the stores that append and query events.
Imports neither ``sovereign`` nor Flask: the control plane depends on it, never the reverse.
The public API is :class:`AuditEvent`, :class:`Outcome`, the :class:`AuditStore` port with its
in-memory and SQL backends, and :class:`AuditQuery`.
"""

from audit.event import AuditEvent, Outcome
from audit.store import AuditQuery, AuditStore, MemoryAuditStore, StoredEvent

__all__ = ["AuditEvent", "AuditQuery", "AuditStore", "MemoryAuditStore", "Outcome", "StoredEvent"]
