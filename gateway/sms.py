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

While the channel runs, `/metrics` carries its figures (`SmsCollector`, read when scraped, so
nothing is counted twice on the hot path): MOs, duplicates, parts, receipts (matched or not)
and MTs sent; the MOs waiting for a worker; per bind its state, window in use and size, TPS now,
connects, submits, throttled, rejected, timeouts, PDUs received, nacks sent, and the time its
deliver_sm waited for the acknowledgement (the MO stored meanwhile: the SMSC's window waits on
it, so a slow store shows here first).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

from aiohttp import web
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from channels.sms.channel import ChannelTuning, SmppSender, SmsChannel, assemble_mo
from channels.sms.dialogs import SendConfirmations
from channels.sms.executor import RateLimiter, SmsBanking
from channels.sms.registration import Registrations
from channels.sms.smpp import BindState
from core.crypto import derive_key
from core.sms_messages import SmsMessageStore
from gateway import db as dbmod
from gateway.keys import (
    CIPHER,
    ENDPOINTS,
    LOANS,
    METRICS,
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
    collector = SmsCollector(channel)
    app[METRICS].registry.register(collector)
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
        app[METRICS].registry.unregister(collector)
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
        registrations=Registrations(
            dialogs,
            app[CIPHER],
            settings.sms_dialog_ttl_s,
            registering_keep_s=channel.tuning.retry_horizon_s,
        ),
        confirm_send=settings.sms_send_confirm,
    )


# channel.counters key -> (metric name, help)
_CHANNEL_COUNTERS = {
    "mo": ("gateway_sms_mo", "MOs stored for processing (single or assembled)"),
    "mo_duplicates": ("gateway_sms_mo_duplicates", "MOs and parts dropped as redeliveries"),
    "mo_parts": ("gateway_sms_mo_parts", "parts of concatenated MOs received"),
    "mt": ("gateway_sms_mt", "MT messages submitted completely"),
}
# session.counters key -> (metric name, help)
_BIND_COUNTERS = {
    "connects": ("gateway_smpp_connects", "successful binds"),
    "submitted": ("gateway_smpp_submitted", "submit_sm accepted by the SMSC"),
    "throttled": ("gateway_smpp_throttled", "submit_sm answered ESME_RTHROTTLED or RMSGQFUL"),
    "rejected": ("gateway_smpp_rejected", "submit_sm refused for another reason"),
    "timeouts": ("gateway_smpp_timeouts", "requests the SMSC did not answer in time"),
    "received": ("gateway_smpp_received", "deliver_sm received (MOs and receipts)"),
    "nacks": ("gateway_smpp_nacks_sent", "generic_nack sent for unreadable PDUs"),
}


class SmsCollector(Collector):
    """The SMS channel's counters and binds for Prometheus, read at scrape time."""

    def __init__(self, channel: SmsChannel) -> None:
        self.channel = channel

    def collect(self) -> Iterator[Metric]:
        channel = self.channel
        for key, (name, doc) in _CHANNEL_COUNTERS.items():
            yield CounterMetricFamily(name, doc, value=channel.counters[key])
        receipts = CounterMetricFamily(
            "gateway_sms_receipts", "delivery receipts received", labels=("matched",)
        )
        unmatched = channel.counters["receipts_unmatched"]
        receipts.add_metric(["true"], channel.counters["receipts"] - unmatched)
        receipts.add_metric(["false"], unmatched)
        yield receipts
        yield GaugeMetricFamily(
            "gateway_sms_mo_waiting", "MOs stored and waiting for a worker", value=channel.waiting
        )
        yield from self._binds()

    def _binds(self) -> Iterator[Metric]:
        sessions = self.channel.sessions
        state = GaugeMetricFamily(
            "gateway_smpp_bind_state", "1 for the state each bind is in", labels=("bind", "state")
        )
        gauges = {
            "window_in_use": GaugeMetricFamily(
                "gateway_smpp_window_in_use", "requests awaiting a response", labels=("bind",)
            ),
            "window_size": GaugeMetricFamily(
                "gateway_smpp_window_size", "the window configured", labels=("bind",)
            ),
            "tps_current": GaugeMetricFamily(
                "gateway_smpp_tps", "the submit rate allowed now (lowered on throttling)",
                labels=("bind",),
            ),
        }  # fmt: skip
        counters = {
            key: CounterMetricFamily(name, doc, labels=("bind",))
            for key, (name, doc) in _BIND_COUNTERS.items()
        }
        acks = SummaryMetricFamily(
            "gateway_smpp_deliver_ack_seconds",
            "deliver_sm read -> deliver_sm_resp written (the MO stored meanwhile)",
            labels=("bind",),
        )
        for session in sessions:
            status = session.status()
            for value in BindState:  # every state, so a series does not vanish on a change
                state.add_metric([session.name, value.value], float(value.value == status.state))
            for key, gauge in gauges.items():
                gauge.add_metric([session.name], float(getattr(status, key)))
            for key, counter in counters.items():
                counter.add_metric([session.name], session.counters[key])
            acks.add_metric([session.name], session.acks, session.ack_seconds)
        yield state
        yield from gauges.values()
        yield from counters.values()
        yield acks
