"""Splitting a JSON array body into its events' own bytes (`usage_batch.split_array`)."""

import pytest

from usage_ingest.api.errors import ApiError
from usage_ingest.api.usage_batch import is_array, split_array


def test_each_element_keeps_its_bytes_exactly() -> None:
    body = ' \n[ {"a": 1.50} ,\t{"b": "é,]"},\n[1, 2] , "x"]\r\n'.encode()
    assert is_array(body)
    assert split_array(body) == [b'{"a": 1.50}', '{"b": "é,]"}'.encode(), b"[1, 2]", b'"x"']
    assert split_array(b"[]") == []


@pytest.mark.parametrize(
    "body",
    [b"[", b"[1,", b"[1,]", b"[1 2]", b"[1] x", b"[1]]", b"[,1]", b"[\xff]", b"[" * 5000],
)
def test_anything_but_one_array_is_malformed(body: bytes) -> None:
    with pytest.raises(ApiError) as raised:
        split_array(body)
    assert raised.value.status_code == 400
    assert [e.code for e in raised.value.errors] == ["MALFORMED_MESSAGE"]


def test_an_object_is_not_an_array() -> None:
    assert not is_array(b' {"externalReference": "a"}')
    assert not is_array(b"")
