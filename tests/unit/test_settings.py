"""The settings' own checks: a bad value is refused at start, with a line that says why."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from usage_ingest.settings import Settings


@pytest.mark.parametrize(
    ("value", "taken"),
    [
        ("127.0.0.1,::1", "127.0.0.1,::1"),
        (" 10.0.0.0/8 , 192.168.1.7 ", "10.0.0.0/8,192.168.1.7"),
        ("fd00::/8", "fd00::/8"),
        ("*", "*"),
        ("", ""),  # no proxy is believed
    ],
)
def test_the_trusted_proxies_are_addresses_or_networks(value: str, taken: str) -> None:
    assert Settings(api_forwarded_allow_ips=value).api_forwarded_allow_ips == taken


@pytest.mark.parametrize(
    ("value", "said"),
    [
        # uvicorn would take each of these as a name no connection has: no proxy believed.
        ("proxy.internal", "'proxy.internal' is not an IP address or network"),
        ("10.0.0.1/8", "'10.0.0.1/8' is not an IP address or network"),
        ("10.0.0.0/8,", "'' is not an IP address or network"),
        ("*,10.0.0.1", "* trusts every address: give it alone"),
    ],
)
def test_a_trusted_proxy_that_is_no_address_is_refused(value: str, said: str) -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(api_forwarded_allow_ips=value)
    assert said in str(refused.value)
