"""The workload agent and the host side that talks to it.

Owns the agent protocol (:mod:`.protocol`), the agent that runs inside an enclave
(:mod:`.server`, started by ``python -m enclaves.agent``) and the host's client
(:mod:`.client` over a :mod:`.transport`). The protocol, the server and ``__main__`` use only
the standard library and relative imports: they are copied into the guest image as the package
``sovereign_agent``. This file must stay free of imports for the same reason. The scrub
program (:mod:`.scrub`: torch, optionally pynvml) is copied with them; the agent runs it as a
subprocess and never imports it.
"""
