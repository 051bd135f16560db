"""The hypervisor side of Sovereign.

Owns everything that talks to a GPU hypervisor: the enclave spec and the libvirt domain XML
built from it, the host and GPU inventory (PCI node devices, IOMMU groups, NUMA), the
lifecycle of domains through libvirt-python, GPU sanitization and the in-enclave workload
runner. The control plane enters it through :mod:`enclaves.enclave` (one enclave on one
host: its steps, named once in :mod:`enclaves.steps`, and its console) and, for a GPU's
hand-over between tenants, :mod:`enclaves.sanitizer` (the reset of :mod:`enclaves.nodedev`
and a scrub in a short-lived sanitizer domain). It must import neither
``sovereign`` nor Flask: the control plane depends on this package, never the reverse (an
import-linter contract in ``pyproject.toml`` enforces it).
libvirt-python is optional at import time; code that needs it imports it lazily.
"""
