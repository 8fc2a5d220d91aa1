"""Commands on `agents/{code}/cmd` and replies on `agents/{code}/reply`: the wire side.

    {"id": "c-17", "op": "cash_in", "msisdn": "+254712345678", "amount_minor": 50000,
     "pin": "1234"}
    -> {"id": "c-17", "ok": true, "result": {...}}
    -> {"id": "c-17", "ok": false, "error": {"code": "OUTSIDE_GEOFENCE", "message": "..."}}

This module only turns payload bytes into a JSON object (bounded size, NaN refused) and a reply
into bytes; the ops, their fields and their validation are `menus.agent_commands`. A payload that
is not JSON is answered with `"id": null`.
"""

from __future__ import annotations

import json
from typing import Any

from channels.agents.fixes import json_object_problem
from menus.agent_commands import CommandInvalid


def decode_command(payload: bytes) -> dict[str, Any]:
    data, problem = json_object_problem(payload, "command")
    if data is None:
        raise CommandInvalid(None, "MALFORMED_COMMAND", problem)
    return data


def encode_reply(reply: dict[str, Any]) -> bytes:
    return json.dumps(reply, separators=(",", ":"), default=str).encode()
