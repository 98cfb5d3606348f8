"""ISO 3166-1 country codes, the set `country` and `serviceCountry` are checked against.

The officially assigned alpha-2 and alpha-3 codes (249 countries) as pycountry ships
them, inside its wheel: validation needs no data files of its own and no network.
Read once at import into frozensets, since the check runs for every event.
"""

import pycountry

ALPHA_2: frozenset[str] = frozenset(country.alpha_2 for country in pycountry.countries)
ALPHA_3: frozenset[str] = frozenset(country.alpha_3 for country in pycountry.countries)


def is_country_code(value: str) -> bool:
    """True for an ISO 3166-1 alpha-2 or alpha-3 code, in any letter case."""
    upper = value.upper()
    return upper in ALPHA_2 or upper in ALPHA_3
