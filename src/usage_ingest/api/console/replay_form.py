"""The replay form: its fields read into a `ReplayRequest` (the filters of
`usage-ingest replay`), every problem reported at once, and the form's values shown
again (after a problem, or to change a dry run's filters)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import urlencode

from usage_ingest.api.console.inputs import whole_number
from usage_ingest.api.console.replays import ReplayRequest
from usage_ingest.errors import ErrorCode
from usage_ingest.replay.selection import DEFAULT_MAX_REPLAYS
from usage_ingest.times import parse_operator_instant

_SEPARATORS = re.compile(r"[\s,]+")
MAX_REFERENCES = 1000
# The form comes back as a link ("Change the filters", "look again"): a request line and
# its headers must stay within the server's 16 KiB, cookies included.
MAX_LINK_CHARS = 8000


@dataclass(frozen=True, slots=True)
class ReplayForm:
    """The form's fields as text, as the operator typed them."""

    codes: tuple[str, ...] = ()
    references: str = ""
    since: str = ""
    until: str = ""
    limit: str = ""
    max_replays: str = str(DEFAULT_MAX_REPLAYS)
    retryable_only: bool = True

    @classmethod
    def of(cls, fields: Mapping[str, Sequence[str]], *, submitted: bool) -> ReplayForm:
        """The form from a POST (`submitted`: an unticked box sends nothing) or from a
        link's query string (no fields at all: the defaults)."""

        def one(name: str, default: str = "") -> str:
            values = fields.get(name) or [default]
            return values[0].strip()

        return cls(
            codes=tuple(sorted({c for c in fields.get("code", ()) if c})),
            references=one("references"),
            since=one("since"),
            until=one("until"),
            limit=one("limit"),
            max_replays=one("max_replays", str(DEFAULT_MAX_REPLAYS)),
            retryable_only=bool(fields.get("retryable_only")) if submitted else True,
        )

    @classmethod
    def of_request(cls, request: ReplayRequest) -> ReplayForm:
        return cls(
            codes=tuple(sorted(request.codes)),
            references="\n".join(sorted(request.references)),
            since=_text(request.since),
            until=_text(request.until),
            limit="" if request.limit is None else str(request.limit),
            max_replays=str(request.max_replays),
            retryable_only=request.retryable_only,
        )

    def reference_list(self) -> frozenset[str]:
        return frozenset(r for r in _SEPARATORS.split(self.references) if r)

    def link(self) -> str:
        """This form, filled in again, as a query string of the replay page."""
        pairs = [("code", c) for c in self.codes]
        pairs += [("references", " ".join(sorted(self.reference_list())))]
        pairs += [("since", self.since), ("until", self.until), ("limit", self.limit)]
        pairs += [("max_replays", self.max_replays)]
        if self.retryable_only:
            pairs.append(("retryable_only", "on"))
        return "?" + urlencode([(k, v) for k, v in pairs if v] + [("filled", "1")])


def _text(instant: datetime | None) -> str:
    return "" if instant is None else instant.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _instant(name: str, text: str, problems: list[str]) -> datetime | None:
    if not text:
        return None
    try:
        return parse_operator_instant(text)
    except ValueError:
        problems.append(f"{name}: {text!r} is not a date-time; e.g. 2026-05-01T10:00:00Z")
        return None


def _count(name: str, text: str, minimum: int, problems: list[str]) -> int | None:
    if not text:
        return None
    number = whole_number(text)
    if number is None or number < minimum:
        problems.append(f"{name}: {text!r} is not a whole number of at least {minimum}")
        return None
    return number


def _size_problems(form: ReplayForm) -> list[str]:
    """More codes than there are, or more references than the form's links can carry."""
    if len(form.codes) > len(ErrorCode):
        return [f"code: {len(form.codes)} codes given; there are {len(ErrorCode)} error codes"]
    references = len(form.reference_list())
    if references > MAX_REFERENCES:
        return [
            f"references: {references} given; at most {MAX_REFERENCES} at once: "
            "replay them in parts"
        ]
    if len(form.link()) > MAX_LINK_CHARS:
        return [
            f"references: these {references} are too long to carry at once "
            f"(at most {MAX_LINK_CHARS} characters in all): replay them in parts"
        ]
    return []


@dataclass(frozen=True, slots=True)
class ReadForm:
    request: ReplayRequest | None  # None when there are problems
    problems: list[str] = field(default_factory=list)


def read_replay_form(form: ReplayForm) -> ReadForm:
    """The request, or every problem of the form (including `ReplayRequest.problems`)."""
    problems = _size_problems(form)
    since = _instant("since", form.since, problems)
    until = _instant("until", form.until, problems)
    limit = _count("limit", form.limit, 1, problems)
    max_replays = _count("max replays", form.max_replays or "0", 0, problems)
    if problems:
        return ReadForm(None, problems)
    request = ReplayRequest(
        codes=frozenset(form.codes),
        references=form.reference_list(),
        since=since,
        until=until,
        limit=limit,
        max_replays=DEFAULT_MAX_REPLAYS if max_replays is None else max_replays,
        retryable_only=form.retryable_only,
    )
    problems = request.problems()
    return ReadForm(None if problems else request, problems)
