"""`core.pins.pin_matches` reads a PIN written in any script's decimal digits as its ASCII
digits: an agent's device (whose `pin` goes straight to the core) or any channel on a phone
with an Arabic or full-width keyboard sends the right PIN in those digits, and counting it
as a wrong one locks the wallet at the third."""

from __future__ import annotations

import bcrypt
import pytest

from core.pins import pin_matches

HASH = bcrypt.hashpw(b"4821", bcrypt.gensalt(rounds=4)).decode()


@pytest.mark.parametrize("pin", ["4821", "٤٨٢١", "۴۸۲۱", "４８２１", "४८२१"])
async def test_the_right_pin_in_any_digits_matches(pin: str) -> None:
    assert await pin_matches(pin, HASH)


@pytest.mark.parametrize("pin", ["4822", "٤٨٢٢", "⁴⁸²¹", "48 1", "48211", "", "abcd", "4٨2"])
async def test_anything_else_does_not(pin: str) -> None:
    assert not await pin_matches(pin, HASH)
