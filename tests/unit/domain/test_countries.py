"""The country codes read from pycountry are the 249 codes validation always knew.

The digests are of the lists the source kept by hand before pycountry: each set's codes
sorted and joined by single spaces. A pycountry release that adds, drops or renames a
code fails here, to be taken in on purpose.
"""

from __future__ import annotations

import hashlib

import pytest

from usage_ingest.domain.countries import ALPHA_2, ALPHA_3, is_country_code


def digest(codes: frozenset[str]) -> str:
    return hashlib.sha256(" ".join(sorted(codes)).encode()).hexdigest()


def test_the_alpha_2_codes_are_the_249_known_ones() -> None:
    assert len(ALPHA_2) == 249
    assert digest(ALPHA_2) == "e1c950d24ceb933ac49eaa44de8d1a7ffb6bf40bfe519a5a99d791cb50332197"


def test_the_alpha_3_codes_are_the_249_known_ones() -> None:
    assert len(ALPHA_3) == 249
    assert digest(ALPHA_3) == "9b9a41be481859e4c888e5d9dd5f7ca55bb3b3050529266723ff5cc0d8b98fca"


@pytest.mark.parametrize("code", ["DE", "de", "Gb", "AX", "SS", "ZW", "DEU", "gbr", "ALA", "SSD"])
def test_assigned_codes_are_countries_in_any_case(code: str) -> None:
    assert is_country_code(code)


@pytest.mark.parametrize("code", ["", "UK", "EU", "XK", "YU", "D", "DEUT", "GER", "ANT", " DE"])
def test_unassigned_and_reserved_codes_are_not(code: str) -> None:
    assert not is_country_code(code)
