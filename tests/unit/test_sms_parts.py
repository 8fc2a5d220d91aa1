"""Small SMS building blocks: the pacer, natural batching, addresses, settings for binds."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import pytest

from channels.sms import address
from channels.sms.handler import InboundSms
from channels.sms.smpp.pacer import MIN_RATE_FRACTION, Pacer
from config.settings import SettingsError, load_settings, parse_smpp_url
from core.batching import Batcher
from core.sms_messages import InboundPart, InboundRecord, StoredMo
from tests.helpers import eventually


async def test_pacer_spaces_submits() -> None:
    pacer = Pacer(50)
    start = time.monotonic()
    for _ in range(11):
        await pacer.wait()
    assert time.monotonic() - start >= 10 / 50 * 0.95


def test_pacer_slows_down_and_recovers() -> None:
    pacer = Pacer(100)
    pacer.slow_down(0.0)
    assert pacer.rate == 50
    for _ in range(10):
        pacer.slow_down(0.0)
    assert pacer.rate == 100 * MIN_RATE_FRACTION
    for _ in range(1000):
        pacer.accepted()
    assert pacer.rate == 100


async def test_pacer_pause_holds_waiters_booked_before_it() -> None:
    pacer = Pacer(1000)
    pacer.slow_down(0.2)
    assert 0.15 < pacer.delay() <= 0.2
    start = time.monotonic()
    await pacer.wait()
    assert time.monotonic() - start >= 0.19


def test_pacer_refuses_zero() -> None:
    with pytest.raises(ValueError):
        Pacer(0)


async def test_batcher_groups_concurrent_items() -> None:
    sizes: list[int] = []
    gate = asyncio.Event()

    async def flush(items: list[int]) -> list[int]:
        sizes.append(len(items))
        await gate.wait()
        return [i * 2 for i in items]

    batcher: Batcher[int, int] = Batcher(flush, concurrency=1)  # type: ignore[arg-type]
    tasks = [asyncio.create_task(batcher.submit(i)) for i in range(10)]
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(*tasks) == [i * 2 for i in range(10)]
    # All submitted in one loop turn: one flush, started at once, takes them all.
    assert sizes == [10]
    # A second wave while a flush runs (concurrency 1) waits and goes together next.
    gate.clear()
    first = [asyncio.create_task(batcher.submit(i)) for i in range(3)]
    await eventually(lambda: len(sizes) == 2)
    later = [asyncio.create_task(batcher.submit(i)) for i in range(3, 7)]
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(*first, *later) == [i * 2 for i in range(7)]
    assert sizes == [10, 3, 4]


async def test_batcher_failure_reaches_every_caller_and_it_recovers() -> None:
    calls = 0

    async def flush(items: list[str]) -> list[str]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("db down")
        return items

    batcher: Batcher[str, str] = Batcher(flush)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError):
        await batcher.submit("a")
    assert await batcher.submit("b") == "b"


async def test_batcher_cancelled_caller_does_not_break_others() -> None:
    async def flush(items: list[int]) -> list[int]:
        await asyncio.sleep(0.01)
        return items

    batcher: Batcher[int, int] = Batcher(flush, concurrency=1)  # type: ignore[arg-type]
    first = asyncio.create_task(batcher.submit(1))
    second = asyncio.create_task(batcher.submit(2))
    await asyncio.sleep(0)
    second.cancel()
    assert await first == 1
    with pytest.raises(asyncio.CancelledError):
        await second


async def test_batcher_linger_gathers_company_and_drain_waits_for_it() -> None:
    """With a linger, a flush waits for company before taking its batch: items submitted
    during the wait share it, a whole batch goes at once, and drain() returns once what was
    submitted is flushed."""
    sizes: list[int] = []

    async def flush(items: list[int]) -> list[int]:
        sizes.append(len(items))
        return items

    full = Batcher(flush, concurrency=1, linger_s=60.0, max_batch=3)  # type: ignore[arg-type]
    async with asyncio.timeout(5):  # a whole batch does not wait out the linger
        assert await asyncio.gather(*(full.submit(i) for i in range(3))) == [0, 1, 2]
    assert sizes == [3]

    batcher: Batcher[int, int] = Batcher(flush, concurrency=1, linger_s=0.3)  # type: ignore[arg-type]
    first = asyncio.create_task(batcher.submit(1))
    await asyncio.sleep(0)  # its flush is lingering now
    later = [asyncio.create_task(batcher.submit(i)) for i in range(2, 5)]
    first.cancel()  # a caller that gives up: the others' flush still goes
    async with asyncio.timeout(5):
        await batcher.drain()
    assert sizes == [3, 4]  # one flush for the four
    assert [t.result() for t in later] == [2, 3, 4]


@pytest.mark.parametrize(
    ("raw", "ton", "expected"),
    [
        ("254712345678", 1, "+254712345678"),
        ("+254712345678", 0, "+254712345678"),
        ("0712345678", 0, "+254712345678"),
        ("254712345678", 0, "+254712345678"),
        ("12345", 0, "12345"),
        ("MPESA", 5, "MPESA"),
        # As the core reads them (core.msisdn.normalise_msisdn), so the customer the core acts
        # for and the number the reply goes to are one.
        ("712345678", 2, "+254712345678"),  # national, without the trunk 0
        ("0712345678", 2, "+254712345678"),
        ("712345678", 0, "+254712345678"),
        ("00254712345678", 0, "+254712345678"),
        ("12345", 2, "12345"),  # a short code stays one
    ],
)
def test_to_e164(raw: str, ton: int, expected: str) -> None:
    assert address.to_e164(raw, ton, "254") == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("+254712345678", "254712345678"),
        ("0712345678", "254712345678"),
        ("254 712 345678", "254712345678"),
    ],
)
def test_destination(raw: str, expected: str) -> None:
    assert address.destination(raw, "254") == (expected, 1, 1)


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "abc",
        "+12345",
        "1" * 16,
        "07123-45678",
        "\u0660\u0667\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668",
    ],
)
def test_destination_refuses(raw: str) -> None:
    with pytest.raises(ValueError):
        address.destination(raw, "254")


@pytest.mark.parametrize(
    ("source", "ton", "npi"), [("MyBank", 5, 0), ("12345", 3, 0), ("254700000000", 1, 1)]
)
def test_source_ton_npi(source: str, ton: int, npi: int) -> None:
    assert address.source(source) == (source, ton, npi)


def test_smpp_url_sms_options() -> None:
    bind = parse_smpp_url(
        "SMPP_URL",
        "smpp://id:pw@smsc:2775?bind=tx&dlr_id_base=10&enquire_link_s=15&response_timeout_s=3&dlr=0",
    )
    assert (bind.dlr_id_base, bind.enquire_link_s, bind.response_timeout_s) == (10, 15.0, 3.0)
    assert bind.registered_delivery is False and bind.bind == "tx"
    default = parse_smpp_url("SMPP_URL", "smpp://id:pw@smsc?message_id_base=10")
    assert default.dlr_id_base == 10 and default.registered_delivery is True


@pytest.mark.parametrize(
    "query",
    [
        "dlr_id_base=8",
        "enquire_link_s=0",
        "response_timeout_s=1000",
        "dlr=maybe",
        "enquire_link_s=x",
    ],
)
def test_smpp_url_bad_sms_options(query: str) -> None:
    with pytest.raises(SettingsError, match="SMPP_URL"):
        parse_smpp_url("SMPP_URL", f"smpp://id:pw@smsc?{query}")


def test_sms_settings_from_env() -> None:
    settings = load_settings({"SMS_DEDUPE_WINDOW_S": "120", "SMS_CONCAT_TIMEOUT_S": "60"})
    assert (settings.sms_dedupe_window_s, settings.sms_concat_timeout_s) == (120, 60)
    with pytest.raises(SettingsError, match="SMS_CONCAT_TIMEOUT_S"):
        load_settings({"SMS_CONCAT_TIMEOUT_S": "1"})


def test_bind_repr_hides_the_password() -> None:
    bind = parse_smpp_url("SMPP_URL", "smpp://acct:secret88@smsc:2775")
    assert "secret88" not in repr(bind) and bind.password == "secret88"
    assert "secret88" not in repr(load_settings({"SMPP_URL": "smpp://acct:secret88@smsc"}))


def test_mo_id_tlv_and_the_short_dedupe_window() -> None:
    bind = parse_smpp_url("SMPP_URL", "smpp://id:pw@smsc?mo_id_tlv=0x1501")
    assert bind.mo_id_tlv == 0x1501
    assert parse_smpp_url("SMPP_URL", "smpp://id:pw@smsc").mo_id_tlv is None
    for bad in ("0x0204", "abc", "0x4000", "-1"):
        with pytest.raises(SettingsError, match="mo_id_tlv"):
            parse_smpp_url("SMPP_URL", f"smpp://id:pw@smsc?mo_id_tlv={bad}")
    assert load_settings({}).sms_dedupe_short_window_s == 45
    settings = load_settings({"SMS_DEDUPE_SHORT_WINDOW_S": "30"})
    assert settings.sms_dedupe_short_window_s == 30
    with pytest.raises(SettingsError, match="SMS_DEDUPE_SHORT_WINDOW_S"):
        load_settings({"SMS_DEDUPE_SHORT_WINDOW_S": "soon"})


def test_no_repr_of_an_mo_shows_its_raw_text() -> None:
    """The raw text holds the PIN: a careless log line or error message with an MO in it
    (`%r`, an f-string) must not show it, as ActionContext's repr hides its secrets."""
    when = datetime.now(UTC)
    objects = [
        InboundSms(1, "+254712345678", "12345", "BAL 4821", "smsc", when, 1, True, 1),
        StoredMo(1, "smsc", "+254712345678", "12345", "BAL 4821", 1, True, 1, when),
        InboundRecord("smsc", "+254712345678", "12345", "BAL 4821", "BAL ****", "gsm7", "k"),
        InboundPart("smsc", "+254712345678", "12345", "g", 1, 2, 0, b"BAL 4821", "k"),
    ]
    for obj in objects:
        assert "4821" not in repr(obj) and "4821" not in str(obj), obj
