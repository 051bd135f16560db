"""Adapters: the real backends behind the service ports.

Owns the database (tables, repositories, unit of work), Vault, the identity provider and the
hypervisor connection. Each adapter translates its library's exceptions into
:mod:`sovereign.errors` at its boundary, once.
"""
