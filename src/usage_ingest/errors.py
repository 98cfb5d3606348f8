"""The project's one error root, and the stable rejection codes of SPEC.md §5.

Two different things live here and must not be confused:

* **Exceptions** (`UsageIngestError` and below) are failures of *this process*
  or its dependencies. Their `retryable` flag is the only thing the pipeline
  reads to decide "retry the batch" (the database or broker is away) versus
  "stop with a clear line" (a setting is wrong).
* **Rejection codes** (`ErrorCode`) are verdicts about *a record*. They are
  published on the rejected topic and travel with the dead letter.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class ExitCode(IntEnum):
    """How every command ends (README, "Exit codes")."""

    OK = 0
    FAILED = 1  # the command ran and failed, or a `lag` threshold was exceeded
    USAGE = 2  # the command line, a setting or the setup must change: it would fail again
    INTERRUPTED = 130  # Ctrl-C, or a second SIGTERM/SIGINT


class UsageIngestError(Exception):
    """usage-ingest failed."""

    retryable: bool = False
    exit_code: ExitCode = ExitCode.FAILED

    def __init__(self, message: str | None = None) -> None:
        # The docstring of the class is the default message.
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigurationError(UsageIngestError):
    """A setting is missing or invalid, or the setup it names refuses it (a taken port, an
    untrusted certificate, refused credentials, migrations not applied)."""

    exit_code = ExitCode.USAGE


class DependencyUnavailable(UsageIngestError):
    """A dependency is unavailable; the work will be retried."""

    retryable = True


class StoreUnavailable(DependencyUnavailable):
    """The database is unreachable or refused the transaction; it will be retried."""


class StatementTimedOut(StoreUnavailable):
    """Postgres cancelled a statement that ran past its time budget. The worker retries
    it like any outage (a lock may have held it); the API answers it as what it is."""


class BrokerUnavailable(DependencyUnavailable):
    """The Kafka broker is unreachable or did not acknowledge; it will be retried."""


class StoreRefusedData(UsageIngestError):
    """The database refused the values of a record."""


class ReferenceDataError(UsageIngestError):
    """The reference data file is invalid; nothing was written."""


class ReferenceDataConflict(UsageIngestError):
    """A change to reference data conflicts with what is stored; nothing was written.

    `field` names the offending field of the change (a dotted path), when there is one.
    """

    def __init__(self, message: str | None = None, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class UnknownReferencedRecord(ReferenceDataConflict):
    """A record the change refers to does not exist."""


class DuplicateRecord(ReferenceDataConflict):
    """A record with the same identity already exists."""


class OverlappingProductReference(ReferenceDataConflict):
    """A product reference is already on another inventory record whose active period
    overlaps: the same number would be billed twice."""


# --- the worker and its supervisor ----------------------------------------------------


class BatchAbandoned(UsageIngestError):
    """The batch will not commit: its records are fetched again."""


class CommitRefused(UsageIngestError):
    """The group rebalanced before the commit: the new owner re-delivers the records."""


class CrashLoop(UsageIngestError):
    """A worker process kept crashing; every worker process was stopped."""


class ChildRefused(ConfigurationError):
    """A worker process was refused by its settings or setup; every one was stopped."""


# --- the replay -----------------------------------------------------------------------


class ReplayRefused(UsageIngestError):
    """The replay cannot read its source as asked (no such topic, partition or offset)."""


class ReplayFailed(UsageIngestError):
    """The replay stopped before it was done; what was committed stays committed."""


# --- the embedded servers of `usage-ingest dev` and the tests -------------------------


class EmbeddedUnavailable(UsageIngestError):
    """An embedded server cannot be provided: its binary is missing or it did not come up."""


class PsqlError(UsageIngestError):
    """A statement run through the bundled `psql` failed."""


class ErrorCode(StrEnum):
    """Why a record was refused (SPEC.md §5). The values are a public contract."""

    MALFORMED_MESSAGE = "MALFORMED_MESSAGE"
    MESSAGE_TOO_LARGE = "MESSAGE_TOO_LARGE"
    SCHEMA_VIOLATION = "SCHEMA_VIOLATION"
    UNKNOWN_OPERATING_SITE = "UNKNOWN_OPERATING_SITE"
    UNKNOWN_PRODUCT = "UNKNOWN_PRODUCT"
    UNKNOWN_CONTRACT = "UNKNOWN_CONTRACT"
    CONTRACT_NOT_ACTIVE = "CONTRACT_NOT_ACTIVE"
    NO_MATCHING_CONTRACT = "NO_MATCHING_CONTRACT"
    NO_INVENTORY = "NO_INVENTORY"
    EXTERNAL_REFERENCE_CONFLICT = "EXTERNAL_REFERENCE_CONFLICT"

    @property
    def retryable(self) -> bool:
        """May succeed on replay once reference data is fixed."""
        return self in _RETRYABLE_CODES


_RETRYABLE_CODES = frozenset(
    {
        ErrorCode.UNKNOWN_OPERATING_SITE,
        ErrorCode.UNKNOWN_PRODUCT,
        ErrorCode.UNKNOWN_CONTRACT,
        ErrorCode.CONTRACT_NOT_ACTIVE,
        ErrorCode.NO_MATCHING_CONTRACT,
        ErrorCode.NO_INVENTORY,
    }
)


class WarningCode(StrEnum):
    """Outcome warnings: the record was processed, but the producer should act."""

    DEPRECATED_FIELD = "DEPRECATED_FIELD"


# --- one replay per replay group at a time --------------------------------------------


class ReplayRunning(UsageIngestError):
    """Another replay of the same replay group is running (`usage-ingest replay` or the
    console, in this process or another): nothing was read, published or committed."""

    def __init__(self, group_id: str) -> None:
        super().__init__(
            f"a replay of group {group_id!r} is already running (usage-ingest replay or the "
            "console): nothing was replayed; run again once it has finished"
        )
        self.group_id = group_id


class ReplayOutdated(UsageIngestError):
    """The replay group's committed positions differ from those the dry run saw (another
    replay ran since): nothing was published or committed, the dry run must be redone."""
