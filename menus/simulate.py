"""Dry-run simulation for admins: post a list of inputs, get the screens, move no money.

Actions do not run: each answers with the sample outputs its catalogue entry declares (a lookup
returns a registered customer), or with the error an admin asks for (`outcomes:
{"send_money": "INSUFFICIENT_FUNDS"}`) to preview error branches; `customer` overrides the
looked-up customer (`{"registered": false}` previews registration). The walk goes through the
real step logic (validators, pagination, back and home) with sessions in memory.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core.crypto import FieldCipher
from core.errors import CoreError, MenuInvalid
from menus.actions import ActionContext, ActionResult, ActionSpec, MenuBindings
from menus.engine import Engine, UssdRequest
from menus.registry import MenuSet
from menus.service import UssdService
from menus.session import MemorySessionStore
from menus.validate import check

MAX_INPUTS = 50
SIMULATED_MSISDN = "+254700000000"


@dataclass(frozen=True, slots=True)
class Screen:
    input: str | None
    screen: str
    text: str
    end: bool


class _DryRun:
    def __init__(
        self,
        spec: ActionSpec,
        outcomes: Mapping[str, str],
        customer: Mapping[str, Any] | None,
    ) -> None:
        self.spec, self.outcomes, self.customer = spec, outcomes, customer

    async def __call__(self, ctx: ActionContext) -> ActionResult:
        wanted = self.outcomes.get(self.spec.name, "ok")
        if wanted != "ok":
            raise CoreError("simulated failure", code=wanted, attempts_left=2)
        customer = None
        if self.spec.customer is not None:
            customer = {**self.spec.customer, **(self.customer or {})}
        language = ctx.params.get("language")
        return ActionResult(
            vars=dict(self.spec.outputs),
            customer=customer,
            language=language if isinstance(language, str) else None,
        )


class Simulator:
    """Compiles the document with dry-run actions for each run (an admin preview, not the USSD
    path: live sessions share their version's one machine)."""

    def __init__(
        self, specs: Mapping[str, ActionSpec], cipher: FieldCipher, currency: str, country: str
    ) -> None:
        self.specs, self.cipher, self.currency, self.country = specs, cipher, currency, country

    async def run(
        self,
        document: Mapping[str, Any],
        inputs: list[str],
        *,
        msisdn: str = SIMULATED_MSISDN,
        language: str | None = None,
        outcomes: Mapping[str, str] | None = None,
        customer: Mapping[str, Any] | None = None,
    ) -> list[Screen]:
        if language is not None:
            # The simulated customer speaks the language asked for (a lookup would say so).
            customer = {**(customer or {}), "language": language}
        bindings = MenuBindings(self.specs)
        for name, spec in self.specs.items():
            bindings.bind(name, _DryRun(spec, outcomes or {}, customer))
        engine = Engine(bindings, self.cipher, currency=self.currency, country_code=self.country)
        menu, problems = check(dict(document), self.specs, version=0)
        if menu is None:
            raise MenuInvalid("The menu is not valid", problems=problems)
        engine.attach(menu)
        menus = MenuSet(menu.doc.service_code or "*0#")
        menus.add(menu)
        store = MemorySessionStore()
        service = UssdService(menus, engine, store, cipher=self.cipher, deadline_s=10.0)
        code = menu.doc.service_code or "*0#"
        screens = []
        typed: list[str] = []
        for value in [None, *inputs[:MAX_INPUTS]]:
            if value is not None:
                typed.append(value)
            request = UssdRequest(
                namespace="simulate",
                session_id="sim",
                msisdn=msisdn,
                service_code=code,
                kind="start" if value is None else "continue",
                input=value,
                hop=str(len(typed)),
                language=language,
            )
            reply = await service.handle(request, 600)
            current = store.data.get(store.key("simulate", "sim"))
            state = current.session().state if current is not None else ""
            screens.append(Screen(value, state, reply.text, reply.end))
            if reply.end:
                break
        return screens
