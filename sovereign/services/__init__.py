"""Use cases: the only code that coordinates the database, the audit log and other backends.

Services depend on ports (:mod:`sovereign.services.ports`), never on adapters, Flask or libvirt.
"""
