"""The banking domain. Channel-facing calls take an asyncpg Pool or Connection (`db`); every
expected failure is a typed error from core.errors. The public API:

core.msisdn      normalise_msisdn(raw, country_code="254") -> "+2547..."
core.money       parse_amount(text, currency) -> int; format_amount(minor, currency) -> str;
                 check_amount(value) -> int; MAX_AMOUNT_MINOR
core.customers   register_customer(db, cipher, *, msisdn, first_name, last_name, national_id,
                     pin, language="en", channel, pin_rounds, currency="KES",
                     country_code="254", actor=None, idempotency_key=None) -> Customer
                 registered_under(db, msisdn, key) -> Customer | None;
                 abandon_request(db, msisdn, key, "register" | "pin.change") -> bool (done
                     under the key, or the key abandoned: ActionAbandoned ever after)
                 find_customer(db, msisdn) -> Customer | None; get_customer(...) -> Customer
                 wallets(db, customer_id) -> [Wallet]; open_wallet(db, msisdn, currency)
                 set_language(db, msisdn, language); set_tier(db, msisdn, tier, *, actor)
                 find_by_national_id(db, cipher, national_id); national_id_of(db, cipher, msisdn)
core.pins        verify_pin(db, msisdn, pin, *, request_key=None) (a wrong PIN counted once
                     per request key); change_pin(db, msisdn, old, new, rounds, *,
                     idempotency_key=None) (the same key again: the same success, nothing
                     counted); unlock(db, msisdn, actor); check_pin_format(pin);
                     MAX_PIN_FAILURES = 3
core.agents      register_agent(db, *, code, msisdn, name, pin, pin_rounds, actor, currency)
                 find_agent / get_agent(db, code) -> Agent; agent_balances(db, code)
                 verify_agent_pin(db, code, pin, *, request_key=None) -> Agent;
                 unlock_agent(db, code, actor)
core.fees        quote(db, kind, amount_minor, currency="KES") -> Quote; set_tariff; tariff;
                 DEMO_TARIFFS
core.limits      get_limits / set_limits; TierLimits; TIERS; DEFAULT_LIMITS_KES
core.transfers   send_money, deposit, float_topup, cash_in, cash_out, reverse, disburse_loan,
                     repay_loan (interest/fee/penalty parts to income), fund_loans (keyword
                     arguments, each with idempotency_key and channel) -> TransferResult;
                     send_money(..., sender_receipt=False) queues the recipient's receipt only
                 balance(db, msisdn, currency="KES") -> int
                 statement(db, msisdn, *, limit=10, before=None, currency="KES") -> [StatementLine]
core.loans       products, schedules, rules; choice.choose_product(offered, *, currency,
                     amount_minor, tier, account_age_days, today) -> Choice
core.ledger      check_ledger(db) -> LedgerReport; ensure_system_accounts(db, currency)
core.outbox      enqueue(db, *, channel, recipient, body, kind); Sender protocol; LogSender;
                 Dispatcher(db, senders, policy); OutboundMessage; (errors.SendFailed)
core.audit       record(db, *, actor_type, actor, action, target, details)
core.demo        seed_demo(db, cipher, *, currency, pin_rounds)
"""
