"""Attestation: what the audit log proves about the control plane over a period.

:mod:`.claims` evaluates the claims over sequenced events (pure), :mod:`.report` turns the
results into the report document and its signed note, :mod:`.service` runs it for a caller,
:mod:`.offline` reads an exported log, :mod:`.frameworks` reads a report against the controls
of sovereign-cloud frameworks, and :mod:`.html` renders it for people.
"""
