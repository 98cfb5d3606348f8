"""The Postgres store: every concern's queries on one shared pool, as one `Store`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from usage_ingest.settings import Settings
from usage_ingest.store.api_keys import ApiKeyStore
from usage_ingest.store.batches import BatchStore
from usage_ingest.store.console_sessions import ConsoleSessionStore
from usage_ingest.store.contracts import ContractStore
from usage_ingest.store.inventories import InventoryStore
from usage_ingest.store.migrations import MigrationStore
from usage_ingest.store.product_items import ProductItemStore
from usage_ingest.store.reference import ReferenceStore
from usage_ingest.store.rejection_list import RejectionListStore
from usage_ingest.store.rejections import RejectionStore
from usage_ingest.store.replay_lock import ReplayLockStore
from usage_ingest.store.usage_list import UsageListStore
from usage_ingest.store.usage_summaries import UsageSummaryStore
from usage_ingest.store.usages import UsageStore
from usage_ingest.store.worker_reports import WorkerReportStore


class Store(
    MigrationStore,
    UsageStore,
    UsageListStore,
    UsageSummaryStore,
    BatchStore,
    RejectionStore,
    ReferenceStore,
    InventoryStore,
    ProductItemStore,
    ContractStore,
    ApiKeyStore,
    RejectionListStore,
    ReplayLockStore,
    WorkerReportStore,
    ConsoleSessionStore,
):
    """Usages, refusals and reference data in Postgres.

    Each base class is one concern's queries on the pool `PooledStore` opens; the store
    is their sum and adds nothing of its own."""


async def open_store(
    settings: Settings, *, statement_budget_s: float | None = None, custom_plans: bool = False
) -> Store:
    """The store of `settings`: its database, pool size and statement timeout."""
    return await Store.open(
        settings.require_database_url(),
        max_size=settings.db_pool_max_size,
        statement_timeout_s=settings.db_statement_timeout_s,
        statement_budget_s=statement_budget_s,
        custom_plans=custom_plans,
    )


@asynccontextmanager
async def store_session(
    settings: Settings, *, statement_budget_s: float | None = None
) -> AsyncIterator[Store]:
    """The store for the length of one command: closed however the block ends."""
    store = await open_store(settings, statement_budget_s=statement_budget_s)
    try:
        yield store
    finally:
        await store.close()
