"""`python -m usage_ingest.cli`: the `usage-ingest` command (the supervisor starts its
children this way)."""

from usage_ingest.cli import main

main()
