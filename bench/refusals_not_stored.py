"""`usage-ingest` with the refusals not kept in Postgres: the bench's "without" run.

Started as `python -m bench.refusals_not_stored run` by the pipeline measurement, to
compare the worker's CPU per event with refusals stored (the real worker) and without
(this one), in the same run over the same backlog. No rejection row is built and
none is written; everything else, transaction and outcomes included, is the worker's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from usage_ingest.cli import main
from usage_ingest.domain.records import RejectionRow
from usage_ingest.store import batches
from usage_ingest.worker import storing


def _no_row(_verdict: Any) -> Any:
    return None


async def _not_stored(_self: Any, _rows: Sequence[RejectionRow], _failed_at: str) -> None:
    return None


storing.rejection_row = _no_row  # type: ignore[attr-defined,assignment]
batches.BatchWrite.store_rejections = _not_stored  # type: ignore[assignment]
main()
