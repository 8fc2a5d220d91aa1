"""The SMS channel's place in the app: built in a cleanup_ctx entry when SMPP_URL names binds.

The channel gets the message store over the app's asyncpg pool and cipher, a de-duplication
key derived from the gateway secret, and its MO handler. Until the command executor exists
(wave 2) the handler is `GrammarReplyHandler`; the executor replaces it by setting
`app[SMS_CHANNEL].handler`. `app[SMS_SENDER]` is the sender the core outbox dispatcher
registers for channel "sms".
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from channels.sms.channel import ChannelTuning, SmppSender, SmsChannel, assemble_mo
from channels.sms.handler import GrammarReplyHandler
from core.crypto import derive_key
from core.sms_messages import SmsMessageStore
from gateway import db as dbmod
from gateway.keys import CIPHER, ENDPOINTS, SETTINGS, SMS_CHANNEL, SMS_SENDER
from gateway.secrets import resolve_secret

SMS_POOL_MAX = 10


async def sms_channel(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    # Its own small pool: the store leaves no session state, so releases skip asyncpg's reset
    # query (half of the round trips on the MO -> MT path otherwise).
    pool = await dbmod.make_pool(
        app[ENDPOINTS].database_url, min_size=2, max_size=SMS_POOL_MAX, reset=dbmod.keep_session
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
    channel.handler = GrammarReplyHandler(channel)
    app[SMS_CHANNEL] = channel
    app[SMS_SENDER] = SmppSender(channel)
    await channel.start()
    try:
        yield
    finally:
        await channel.stop()
        await pool.close()
