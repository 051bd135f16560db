"""Attestation: what the audit log proves about the period it covers, as a signed report, and
how that report reads against the controls of sovereign-cloud frameworks."""
