"""The reconciler: turns approved requests into running enclaves and terminated ones into nothing.

Owns the lifecycle after approval. Each pass runs five phases, one module each, in this order
(composed by :mod:`.driver`, sharing :class:`~.context.PassContext`; no phase imports another):

1. :mod:`.leases`: running enclaves past their lease go ``expired -> terminating``;
2. :mod:`.placement`: approved requests placed, GPUs claimed, enclaves recorded;
3. :mod:`.steps`: claimed enclaves advanced one idempotent, recorded step at a time
   (provisioning, teardown, crypto-erase), so any crash converges;
4. :mod:`.sanitization`: dirty GPUs handed over through the
   :class:`~sovereign.services.ports.Sanitizer` port (``dirty -> sanitizing -> free |
   quarantined``, the certificate in the ``gpu:handover`` audit event);
5. :mod:`.drift`: database and hosts compared; identity changes and unknown domains
   quarantine a host, a stopped enclave fails, an ended enclave's domain is removed.

Nothing here talks to libvirt directly or picks a backend; the loop that runs passes is
:mod:`sovereign.worker`.
"""

from sovereign.services.reconciler.context import PassReport
from sovereign.services.reconciler.driver import Reconciler

__all__ = ["PassReport", "Reconciler"]
