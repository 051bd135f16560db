"""The default GPU sanitizer backend of the :class:`~sovereign.services.ports.Sanitizer` port.

Owns :class:`RecordedSanitizer`, which records that a host-side reset was requested and
verifies nothing. Must not claim more than it did: its evidence says ``verified: False``.
"""

from __future__ import annotations

from typing import Any


class RecordedSanitizer:
    """The default sanitizer: records that a host-side reset of the GPU was requested.

    The real sanitization job (a function-level reset plus a memory scrub inside a scratch
    enclave, with hashes as evidence) is a later issue; this keeps the ``dirty -> sanitizing
    -> free`` machine and its audit trail honest about what was done.
    """

    def sanitize(self, uri: str, address: str) -> dict[str, Any]:
        """Return the evidence: a reset was requested, nothing was verified."""
        return {"method": "host-reset-requested", "host": uri, "gpu": address, "verified": False}
