"""The session store writes commands in RESP itself: byte for byte what redis-py would send."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from redis.asyncio.connection import Connection

from menus.session import pack

NAMES = st.sampled_from(["GET", "EVALSHA", "EVAL", "SET"])
ARGS = st.lists(st.one_of(st.text(max_size=40), st.integers()), max_size=8)


@settings(max_examples=300)
@given(NAMES, ARGS)
def test_the_same_bytes_as_redis_py(name: str, args: list[str | int]) -> None:
    assert pack((name, *args)) == b"".join(Connection().pack_command(name, *args))


def test_a_cas_call() -> None:
    args = ("EVALSHA", "f" * 40, 1, "gw:ussd:{at:s1}", "", '1|{"é":1}', 180_000)
    assert pack(args) == b"".join(Connection().pack_command(*args))
    assert pack(("GET", "k")) == b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
