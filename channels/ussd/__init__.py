"""USSD aggregators, one module each: wire format in, wire format out. `PROVIDERS` maps the
`{provider}` of `POST /ussd/{provider}` to its module."""

from __future__ import annotations

from types import MappingProxyType, ModuleType

from channels.ussd import africastalking, arkesel, beem, emergent, hubtel, infobip, nalo

PROVIDERS: MappingProxyType[str, ModuleType] = MappingProxyType(
    {m.NAME: m for m in (africastalking, hubtel, nalo, arkesel, beem, emergent, infobip)}
)
