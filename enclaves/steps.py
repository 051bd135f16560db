"""The steps that build and tear down one enclave, named once for every layer.

Owns :class:`ProvisionStep` and :class:`TeardownStep`: the ordered, idempotent steps the
reconciler runs, the hypervisor adapters carry out (:class:`enclaves.enclave.HostedEnclave`
and the control plane's in-memory fleet), the control plane records (``provision:<step>`` in
the ``enclaves.step`` column and the ``details.step`` of ``enclave:provision`` /
``enclave:teardown`` audit events) and the tests name. The values are those stored strings: a
rename is a data migration, not a refactor.

Why here: ``enclaves`` never imports the control plane, and the control plane's domain may
import nothing of ``enclaves`` but this module (a narrow, commented exception in the
import-linter contract "domain is plain Python"). It is pure Python, with no libvirt and no
other import of this package, so the domain stays plain while every layer uses one object.
Adding a step is a member here plus its implementation in :mod:`enclaves.enclave` (and the
in-memory fleet). It must not grow behaviour beyond naming and ordering the steps.
"""

from __future__ import annotations

import enum


class ProvisionStep(enum.StrEnum):
    """Provisioning, in the order the steps run; each is idempotent on the hypervisor."""

    #: Hand the enclave's LUKS and vTPM keys to libvirt as private secrets.
    SECRETS = "secrets"
    #: Create the enclave's LUKS-encrypted volume in the storage pool.
    VOLUME = "volume"
    #: Create the enclave's own isolated network (no forward, no ip), if it gets a NIC.
    NETWORK = "network"
    #: Check the GPUs and define the designed domain.
    DEFINE = "define"
    #: Start the domain.
    START = "start"


class TeardownStep(enum.StrEnum):
    """Teardown, in the order the steps run; each is idempotent and tolerates a missing object."""

    STOP = "stop"
    #: Undefine the domain with its NVRAM and TPM state.
    UNDEFINE = "undefine"
    VOLUME = "volume"
    SECRETS = "secrets"
    NETWORK = "network"
    #: Crypto-erase the enclave's key: done by whoever holds the key (the control plane's
    #: key store), never on the host.
    KEYS = "keys"

    @property
    def on_host(self) -> bool:
        """Whether the hypervisor does this step (every step but :attr:`KEYS`)."""
        return self is not TeardownStep.KEYS


#: Provisioning steps in order.
PROVISION_STEPS: tuple[ProvisionStep, ...] = tuple(ProvisionStep)
#: Teardown steps in order, the key's crypto-erase last.
TEARDOWN_STEPS: tuple[TeardownStep, ...] = tuple(TeardownStep)
#: The teardown steps the hypervisor does (what removes a domain and everything it used).
HOST_TEARDOWN_STEPS: tuple[TeardownStep, ...] = tuple(s for s in TeardownStep if s.on_host)
