"""The outbox on /metrics: what the app's dispatcher did with each message, the messages waiting
per channel and how late the most overdue is (read at each scrape from the pending rows), and a
scrape that still answers when that read fails."""

from __future__ import annotations

import secrets

import asyncpg
from aiohttp.test_utils import TestClient

from core.outbox import Dispatcher, enqueue
from gateway.keys import DISPATCHER, PG_POOL
from gateway.metrics import OutboxCollector
from tests.helpers import eventually, scrape


async def test_outbox_figures_on_metrics(app_client: TestClient) -> None:
    app = app_client.server.app
    assert app is not None
    pool: asyncpg.Pool = app[PG_POOL]
    # A channel nobody sends: its row waits, 90 s past its due time.
    stuck = "t" + secrets.token_hex(4)
    await pool.execute(
        "INSERT INTO outbox (channel, recipient, kind, body, next_attempt_at) "
        "VALUES ($1, 'ops@bank.example', 'test', 'stuck', now() - interval '90 seconds')",
        stuck,
    )
    sent = await enqueue(pool, channel="log", recipient="ops", body="hello", kind="test")
    app[DISPATCHER].wake()
    await eventually(
        lambda: pool.fetchval("SELECT status FROM outbox WHERE id = $1", sent),
        lambda status: status == "sent",
    )
    samples = await scrape(app_client)
    label = (("channel", stuck),)
    assert samples[("gateway_outbox_pending", label)] == 1.0
    assert 90.0 <= samples[("gateway_outbox_overdue_seconds", label)] < 120.0
    assert samples[("gateway_outbox_backlog_readable", ())] == 1.0
    log_sent = (("channel", "log"), ("outcome", "sent"))
    assert samples[("gateway_outbox_messages_total", log_sent)] >= 1.0


async def test_a_backlog_that_cannot_be_read_leaves_the_scrape_answering(
    database_url: str,
) -> None:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    dispatcher = Dispatcher(pool, {})
    dispatcher.outcomes[("sms", "dead")] = 2
    collector = OutboxCollector(dispatcher, pool)
    await collector.refresh()
    assert {m.name for m in collector.collect()} >= {"gateway_outbox_pending"}
    await pool.close()  # PostgreSQL out of reach, as far as this pool knows
    await collector.refresh()
    families = {m.name: m for m in collector.collect()}
    assert "gateway_outbox_pending" not in families
    assert families["gateway_outbox_backlog_readable"].samples[0].value == 0.0
    dead = families["gateway_outbox_messages"].samples
    assert [(s.labels, s.value) for s in dead] == [({"channel": "sms", "outcome": "dead"}, 2.0)]
