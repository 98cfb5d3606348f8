"""What a replay sends back: the operator's selection of dead letters (`Selection`),
why a scanned one is held back (`SkipReason`), and each batch's verdict (`decide`).

Pure functions over records; the loop that publishes and commits is `replay.run`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from usage_ingest.domain.dead_letters import DeadLetter
from usage_ingest.domain.records import InputRecord
from usage_ingest.errors import ErrorCode

DEFAULT_MAX_REPLAYS = 5


class TimeField(StrEnum):
    """What `--since` / `--until` compare."""

    FAILED_AT = "failed-at"  # the usage-ingest.failed-at header (the record time without it)
    RECORD = "record"  # the dead-letter record's timestamp


class SkipReason(StrEnum):
    """Why a scanned dead letter was not replayed. The values are in the summary."""

    CODE = "code"  # not among --code
    NOT_RETRYABLE = "not-retryable"  # --retryable-only (the default)
    REFERENCE = "external-reference"  # not among --external-reference
    TIME_WINDOW = "time-window"  # outside --since / --until
    MAX_REPLAYS = "max-replays"  # replayed --max-replays times already


@dataclass(frozen=True, slots=True)
class Selection:
    """Which dead letters are replayed. Empty `codes` / `references` select all."""

    codes: frozenset[str] = frozenset()
    retryable_only: bool = True
    references: frozenset[str] = frozenset()
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive
    time_field: TimeField = TimeField.FAILED_AT
    max_replays: int = DEFAULT_MAX_REPLAYS

    def problems(self) -> list[str]:
        """What makes this selection contradictory (empty when it is fine)."""
        found = []
        unknown = sorted(c for c in self.codes if c not in ErrorCode.__members__)
        if unknown:
            found.append(
                f"unknown error code(s) {', '.join(unknown)}: "
                f"the codes are {', '.join(ErrorCode.__members__)}"
            )
        final = sorted(
            c for c in self.codes if c in ErrorCode.__members__ and not ErrorCode(c).retryable
        )
        if final and self.retryable_only:
            found.append(
                f"{', '.join(final)} {'is' if len(final) == 1 else 'are'} not retryable: "
                "add --all to replay such records anyway"
            )
        if self.since and self.until and self.since >= self.until:
            found.append("--since must be before --until")
        if self.max_replays < 1:
            found.append("--max-replays must be at least 1")
        return found

    def skip_reason(self, letter: DeadLetter) -> SkipReason | None:
        """None when `letter` is replayed; otherwise the first rule that keeps it back.

        The filters come first; a record they select is *matched*, and is then
        still held back once it has been replayed `max_replays` times.
        """
        if self.codes and letter.code not in self.codes:
            return SkipReason.CODE
        if self.retryable_only and not letter.retryable:
            return SkipReason.NOT_RETRYABLE
        if self.references and letter.reference not in self.references:
            return SkipReason.REFERENCE
        if not self._in_window(letter):
            return SkipReason.TIME_WINDOW
        if letter.replay_count >= self.max_replays:
            return SkipReason.MAX_REPLAYS
        return None

    def _in_window(self, letter: DeadLetter) -> bool:
        if self.since is None and self.until is None:
            return True
        moment = letter.timestamp
        if self.time_field is TimeField.FAILED_AT and letter.failed_at is not None:
            moment = letter.failed_at
        if moment is None:
            return False
        if self.since is not None and moment < self.since:
            return False
        return self.until is None or moment < self.until


def decide(
    records: Sequence[InputRecord], selection: Selection, room: int | None = None
) -> tuple[list[InputRecord], list[DeadLetter], list[tuple[DeadLetter, SkipReason]]]:
    """Each record's verdict, in order: the scanned records, the chosen dead letters
    and the held-back ones with their reasons. With `room` (what is left of
    `--limit`), scanning stops before the record after the last one that fits;
    the rest is neither scanned nor committed, so the next run starts there."""
    scanned: list[InputRecord] = []
    chosen: list[DeadLetter] = []
    held: list[tuple[DeadLetter, SkipReason]] = []
    for record in records:
        if room is not None and len(chosen) >= room:
            break
        scanned.append(record)
        letter = DeadLetter.read(record)
        reason = selection.skip_reason(letter)
        if reason is None:
            chosen.append(letter)
        else:
            held.append((letter, reason))
    return scanned, chosen, held
