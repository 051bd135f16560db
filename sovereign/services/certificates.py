"""Reading GPU hand-over certificates: the ``gpu:handover`` events of the audit log.

Owns who reads which certificate and how one is read back from the log. A certificate is the
``certificate`` of a ``gpu:handover`` event (target ``gpu/{host}/{address}``, labelled with the
previous tenant's label; details ``{"from", "to", "certificate"}``), so it has the event's
sequence number and an inclusion proof like any other event. Officers and auditors read them, up
to their clearance of that label (the audit log's own filter); anyone else is refused (403,
audited); a GPU that does not exist answers 404 (audited). Must not write certificates (the
reconciler's sanitization phase records them) nor change a GPU.
"""

from __future__ import annotations

import builtins
import re
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from audit import AuditQuery, Outcome, StoredEvent
from sovereign.domain.identity import Role
from sovereign.domain.labels import Label
from sovereign.domain.policy import AccessPolicy, Visibility
from sovereign.errors import InvalidInputError, LabelError, NotFoundError, PolicyDeniedError
from sovereign.services.ports import Page, UnitOfWork, UnitOfWorkFactory
from sovereign.services.recording import (
    CallContext,
    Clock,
    Recorder,
    gpu_target,
    host_target,
    utcnow,
)

#: The audit action that carries a certificate.
HANDOVER = "gpu:handover"
#: Roles that read certificates.
CERTIFICATE_READERS = frozenset({Role.OFFICER, Role.AUDITOR})
#: A host name and a GPU's PCI address as the log names them (anything else names no GPU).
_HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_ADDRESS = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[01][0-9a-f]\.[0-7]$")
#: The largest page and sequence number a caller may ask for.
MAX_PAGE = 200
MAX_SEQ = 2**63 - 1


def certificate_query(host: str, address: str, *, limit: int = 1) -> AuditQuery:
    """The audit query for the newest ``limit`` certificates of one GPU, every label (the
    command line's view: whoever holds the database reads the whole log anyway).

    :raises InvalidInputError: ``host`` is no host name or ``address`` no PCI address.
    """
    return AuditQuery(action=HANDOVER, target=gpu_target(*checked(host, address)), limit=limit)


def checked(host: str, address: str) -> tuple[str, str]:
    """``(host, address)`` with the address in lower case, as the log names it.

    :raises InvalidInputError: ``host`` is no host name or ``address`` no PCI address.
    """
    if not _HOST.fullmatch(host):
        raise InvalidInputError(reason="the host is not a host name (letters, digits, . _ -)")
    lowered = address.lower()
    if not _ADDRESS.fullmatch(lowered):
        raise InvalidInputError(reason="the GPU address is not a PCI address like 0000:18:00.0")
    return host, lowered


@dataclass(frozen=True)
class GpuCertificate:
    """One hand-over certificate as the log holds it: the document and where it is in the log.

    The document is what the sanitization phase wrote; it is read back defensively (a field of
    the wrong type reads as missing), never trusted to have every field.
    """

    seq: int
    leaf_hash: str
    time: datetime
    host: str
    address: str
    #: The state the GPU went to with it: ``free`` (clean) or ``quarantined`` (failed).
    to: str
    #: The event's label: the previous tenant's (None where the GPU had none).
    label: dict[str, Any] | None
    document: dict[str, Any]

    @classmethod
    def of(cls, stored: StoredEvent) -> GpuCertificate | None:
        """From a ``gpu:handover`` event; None if it carries no certificate."""
        event = stored.event
        details = event.details
        document = details.get("certificate")
        _, _, rest = event.target.partition("/")
        host, _, address = rest.partition("/")
        if event.action != HANDOVER or not isinstance(document, dict) or not address:
            return None
        to = details.get("to")
        return cls(
            seq=stored.seq,
            leaf_hash=stored.leaf_hash.hex(),
            time=event.time,
            host=host,
            address=address,
            to=to if isinstance(to, str) else "",
            label=event.label,
            document=document,
        )

    def _scrub(self, key: str) -> float | None:
        scrub = self.document.get("scrub")
        value = scrub.get(key) if isinstance(scrub, dict) else None
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return float(value)

    @property
    def verdict(self) -> str:
        """``clean`` or ``failed`` (anything else reads as ``failed``)."""
        return "clean" if self.document.get("verdict") == "clean" else "failed"

    @property
    def reason(self) -> str:
        """Why a failed certificate failed (empty for a clean one)."""
        reason = self.document.get("reason")
        return reason if isinstance(reason, str) else ""

    @property
    def simulated(self) -> bool:
        """True unless the document says a real GPU was scrubbed."""
        return self.document.get("simulated") is not False

    @property
    def coverage(self) -> float | None:
        """The share of the device memory scrubbed and verified (0..1)."""
        return self._scrub("coverage")

    @property
    def gb_per_s(self) -> float | None:
        """The scrub's bandwidth over all its passes."""
        return self._scrub("gb_per_s")

    @property
    def issued_at(self) -> str:
        """When the certificate was issued, as written in it."""
        issued = self.document.get("issued_at")
        return issued if isinstance(issued, str) else ""


class CertificateService:
    """GPU hand-over certificates for officers and auditors, up to their clearance."""

    def __init__(
        self, uow_factory: UnitOfWorkFactory, policy: AccessPolicy, clock: Clock = utcnow
    ) -> None:
        self._uow = uow_factory
        self._policy = policy
        self._recorder = Recorder(uow_factory, clock)

    def _visibility(self, ctx: CallContext, host: str, address: str) -> Visibility:
        """What the caller may read of the GPU's certificates.

        :raises InvalidInputError: not a host name or PCI address (nothing is recorded).
        :raises PolicyDeniedError: neither officer nor auditor (recorded).
        :raises NotFoundError: no such GPU (recorded).
        """
        host, address = checked(host, address)
        with self._recorder.decision(ctx, "gpu:certificates", gpu_target(host, address)):
            if not ctx.principal.roles & CERTIFICATE_READERS:
                raise PolicyDeniedError(
                    reason="reading GPU hand-over certificates needs the officer or auditor role"
                )
            with self._uow(readonly=True) as uow:
                if not _exists(uow, host, address):
                    raise NotFoundError(kind="gpu", ident=f"{host}/{address}")
            return self._policy.audit_visibility(ctx.principal)

    def _covered(self, visibility: Visibility, cert: GpuCertificate) -> bool:
        """Whether the certificate's label, and the previous label it names, are within reach
        (they are the same where the log was written as specified; the stricter one wins)."""
        labels = [cert.label, cert.document.get("previous_label")]
        for raw in labels:
            if raw is None:
                continue
            try:
                label: Label = self._policy.scheme.parse(raw)
            except (LabelError, AttributeError, TypeError, ValueError):
                return False
            if not visibility.covers(label):
                return False
        return True

    def list(
        self,
        ctx: CallContext,
        host: str,
        address: str,
        *,
        limit: int = 50,
        before: int | None = None,
    ) -> Page[GpuCertificate]:
        """The GPU's certificates the caller may read, newest first; ``before`` is the cursor
        (a sequence number) of the next page.

        :raises InvalidInputError: bad host, address, limit or cursor.
        :raises PolicyDeniedError: neither officer nor auditor.
        :raises NotFoundError: no such GPU.
        """
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidInputError(reason=f"limit must be within 1..{MAX_PAGE}")
        if before is not None and not 0 <= before <= MAX_SEQ:
            raise InvalidInputError(reason="the cursor is not a sequence number of this log")
        visibility = self._visibility(ctx, host, address)
        host, address = checked(host, address)
        found = self._read(visibility, host, address, limit + 1, before)
        more = len(found) > limit
        found = found[:limit]
        return Page(found, str(found[-1].seq) if more and found else None)

    def latest(self, ctx: CallContext, host: str, address: str) -> GpuCertificate | None:
        """The newest certificate of the GPU the caller may read, if any (same errors as
        :meth:`list`)."""
        page = self.list(ctx, host, address, limit=1)
        return page.items[0] if page.items else None

    def latest_of_host(self, ctx: CallContext, host: str) -> dict[str, GpuCertificate]:
        """The newest certificate the caller may read of each GPU of ``host``, by address.

        :raises PolicyDeniedError: neither officer nor auditor (recorded).
        :raises NotFoundError: no such host (recorded).
        """
        with self._recorder.decision(ctx, "gpu:certificates", host_target(host)):
            if not ctx.principal.roles & CERTIFICATE_READERS:
                raise PolicyDeniedError(
                    reason="reading GPU hand-over certificates needs the officer or auditor role"
                )
            with self._uow(readonly=True) as uow:
                if uow.hosts.get(host) is None:
                    raise NotFoundError(kind="host", ident=host)
                addresses = [gpu.address for gpu in uow.gpus.list(host)]
            visibility = self._policy.audit_visibility(ctx.principal)
        latest: dict[str, GpuCertificate] = {}
        for address in addresses:
            found = self._read(visibility, host, address, 1, None)
            if found:
                latest[address] = found[0]
        return latest

    def _read(
        self, visibility: Visibility, host: str, address: str, limit: int, before: int | None
    ) -> builtins.list[GpuCertificate]:
        query = AuditQuery(
            action=HANDOVER,
            target=gpu_target(host, address),
            levels=visibility.levels,
            compartments=visibility.compartments,
            before_seq=before,
            limit=limit,
        )
        found: builtins.list[GpuCertificate] = []
        # Pages of the log until ``limit`` readable certificates (an event without one, or one
        # whose certificate names a label beyond reach, is skipped, never shown).
        while len(found) < limit:
            with self._uow(readonly=True) as uow:
                page = uow.audit.query(query)
            for stored in page:
                cert = GpuCertificate.of(stored)
                if (
                    cert is not None
                    and stored.event.outcome is Outcome.ALLOW
                    and self._covered(visibility, cert)
                ):
                    found.append(cert)
            if len(page) < query.limit:
                break
            query = replace(query, before_seq=page[-1].seq)
        return found[:limit]


def _exists(uow: UnitOfWork, host: str, address: str) -> bool:
    return uow.hosts.get(host) is not None and any(
        gpu.address == address for gpu in uow.gpus.list(host)
    )


__all__ = [
    "CERTIFICATE_READERS",
    "HANDOVER",
    "CertificateService",
    "GpuCertificate",
    "certificate_query",
    "checked",
]
