"""The operations console, served by `usage-ingest api` at /console."""
