"""`tests.helpers.shows_pin`, the check every "PIN never stored or logged" test relies on: it
must find a PIN standing as a number of its own anywhere, and must not fail a test for four
digits that turn up inside a longer number or a digest by chance."""

from __future__ import annotations

import pytest

from tests.helpers import shows_pin


@pytest.mark.parametrize(
    "text",
    [
        "2580",
        "BAL 2580",
        "pin=2580&x=1",
        '{"pin": "2580"}',
        "PIN:2580.",
        "abc2580",  # letters around it: a leak all the same
        "2580abc",
    ],
)
def test_a_pin_of_its_own_is_found(text: str) -> None:
    assert shows_pin("2580", text)


@pytest.mark.parametrize(
    "text",
    [
        "+254725801234",  # inside an MSISDN
        "2026-11-29T12:25:80.125801",  # inside a timestamp's digits
        "KES 12,580.00 ref 125801",
        "done|724fa989a70a675a2580a55f6c840f9f90589602a1d6a27125b37403cd5ba210|",  # a digest
        "****",
    ],
)
def test_a_pin_inside_a_longer_number_or_a_digest_is_not(text: str) -> None:
    assert not shows_pin("2580", text)
