"""Who is acting: roles and the principal built from a verified token.

Owns the role names and :class:`Principal`. It never sees a token: the identity adapter verifies
the token and hands over only the claims that matter here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from sovereign.domain.labels import Label


class Role(StrEnum):
    """Realm roles the control plane understands (Keycloak ``realm_access.roles``)."""

    ANALYST = "analyst"
    OFFICER = "security-officer"
    AUDITOR = "auditor"
    OPERATOR = "operator"


@dataclass(frozen=True)
class Principal:
    """An authenticated user: subject, roles, clearance (None = cleared for nothing), tenants."""

    subject: str
    username: str
    roles: frozenset[Role] = field(default_factory=frozenset)
    clearance: Label | None = None
    tenants: frozenset[str] = field(default_factory=frozenset)
    #: When the user last typed their password (OIDC ``auth_time``), seconds since the epoch.
    auth_time: int | None = None

    def has_role(self, role: Role) -> bool:
        """Whether the principal holds ``role``."""
        return role in self.roles

    def cleared_for(self, label: Label) -> bool:
        """Whether the principal's clearance dominates ``label`` (never, without clearance)."""
        return self.clearance is not None and self.clearance.dominates(label)
