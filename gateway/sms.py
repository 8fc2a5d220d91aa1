"""The SMS channel's place in the app: built in a cleanup_ctx entry when SMPP_URL names binds.

The channel gets the message store over the app's asyncpg pool and cipher, a de-duplication
key derived from the gateway secret, and its MO handler: `channels.sms.executor.SmsBanking`,
commands on the banking core through the same core-backed actions as the USSD menus (channel
"sms"), the loan service in `app[LOANS]`, the rate limit and SEND confirmations in Redis.

`app[SMS_SENDER]` is registered in the core outbox dispatcher's senders (`app[SENDERS]`) under
"sms", the channel the core's receipts and notices use, so those rows reach phones over SMPP.
It sends with `ref=outbox:{id}`, so a retried outbox row is never sent twice. On shutdown the
previous "sms" sender (the log sender) comes back before the channel stops, so the dispatcher
never hands a row to a stopped channel.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from channels.sms.channel import ChannelTuning, SmppSender, SmsChannel, assemble_mo
from channels.sms.dialogs import SendConfirmations
from channels.sms.executor import RateLimiter, SmsBanking
from channels.sms.registration import Registrations
from core.crypto import derive_key
from core.sms_messages import SmsMessageStore
from gateway import db as dbmod
from gateway.keys import (
    CIPHER,
    ENDPOINTS,
    LOANS,
    PG_POOL,
    REDIS,
    SENDERS,
    SETTINGS,
    SMS_CHANNEL,
    SMS_SENDER,
)
from gateway.secrets import resolve_secret
from menus.bindings import CoreActions, LoanActions
from menus.session import RedisSessionStore

SMS_POOL_MAX = 10


async def sms_channel(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    # Its own small pool: the store leaves no session state, so releases skip asyncpg's reset
    # query (half of the round trips on the MO -> MT path otherwise). Its statements are few
    # and hot and take arrays, for which PostgreSQL would plan every execution anew: on
    # generic plans the outcome write costs PostgreSQL ~40 % less CPU (bench/sms.py, Benchmarks).
    pool = await dbmod.make_pool(
        app[ENDPOINTS].database_url,
        min_size=2,
        max_size=SMS_POOL_MAX,
        reset=dbmod.keep_session,
        limits_tz=settings.limits_timezone,
        generic_plans=True,
    )
    store = SmsMessageStore(
        pool,
        app[CIPHER],
        assemble=assemble_mo,
        dedupe_window_s=settings.sms_dedupe_window_s,
        short_dedupe_window_s=settings.sms_dedupe_short_window_s,
    )
    channel = SmsChannel(
        settings.smpp_binds,
        store,
        dedupe_secret=derive_key(resolve_secret(settings), "sms-mo-dedupe"),
        country_code=settings.default_country_code,
        tuning=ChannelTuning(concat_timeout_s=float(settings.sms_concat_timeout_s)),
    )
    # The SMS dialogs' own Redis connections (the session store's), closed with the channel.
    dialogs = RedisSessionStore(app[REDIS], settings.redis_prefix)
    channel.handler = banking(app, channel, dialogs)
    app[SMS_CHANNEL] = channel
    app[SMS_SENDER] = sender = SmppSender(channel)
    await channel.start()
    senders = app[SENDERS]
    previous = senders.get(SmppSender.channel)
    senders[SmppSender.channel] = sender
    try:
        yield
    finally:
        if previous is not None:
            senders[SmppSender.channel] = previous
        else:
            senders.pop(SmppSender.channel, None)
        await channel.stop()
        await dialogs.aclose()
        await pool.close()


def banking(app: web.Application, channel: SmsChannel, dialogs: RedisSessionStore) -> SmsBanking:
    """The SMS banking handler on the app's core pool, Redis and loan service; its dialogs (the
    SEND confirmation, registration) in `dialogs`."""
    settings = app[SETTINGS]
    core = CoreActions(
        app[PG_POOL],
        app[CIPHER],
        settings.currency,
        settings.default_country_code,
        settings.pin_bcrypt_rounds,
        channel="sms",
        sender_receipt=False,  # the reply to SEND is the sender's receipt
    )
    loans = LoanActions(app[PG_POOL], app[LOANS], core) if LOANS in app else None
    return SmsBanking(
        channel,
        core=core,
        loans=loans,
        limiter=RateLimiter(app[REDIS], settings.redis_prefix, settings.sms_rate_per_minute),
        confirmations=SendConfirmations(dialogs, settings.sms_dialog_ttl_s),
        registrations=Registrations(dialogs, app[CIPHER], settings.sms_dialog_ttl_s),
        confirm_send=settings.sms_send_confirm,
    )
