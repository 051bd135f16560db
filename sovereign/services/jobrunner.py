"""The job runner (placeholder; implementation follows on fix/jobs)."""
