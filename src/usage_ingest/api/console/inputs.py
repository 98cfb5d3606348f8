"""What an operator types into the console's URLs and forms, read strictly: a whole
number is ASCII digits only, and small enough for the database's bigint; a text for a
query holds no control character. Anything else is the operator's mistake, answered
with a page, never a failure of the server."""

from __future__ import annotations

import re
import unicodedata

# `str.isdigit` also takes "²" or "٣", which `int` then refuses; 18 digits stay below 2**63.
_WHOLE_NUMBER = re.compile(r"[0-9]{1,18}")


def whole_number(text: str) -> int | None:
    """`text` as a number of at most 18 ASCII digits; None when it is not one."""
    return int(text) if _WHOLE_NUMBER.fullmatch(text) else None


def has_control_character(text: str) -> bool:
    """Whether `text` holds a control character (NUL, which Postgres refuses in a text,
    or any other C0/C1 one, which no external reference holds)."""
    return any(unicodedata.category(char) == "Cc" for char in text)
