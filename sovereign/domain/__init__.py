"""The domain: plain Python objects and rules.

Owns labels, principals, tenants, images, enclave requests and approvals, their state machines
and the access policy. Must not import Flask, SQLAlchemy, hvac, libvirt or any adapter: every
rule here is testable without I/O.
"""
