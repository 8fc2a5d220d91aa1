"""Mosquitto's password file and ACL for agent devices, as text.

Each agent's MQTT username is its code (so OwnTracks' default topic `owntracks/%u/%d` is already
the right one). The ACL gives it exactly the topics of `channels.agents.topics`: publish under
its own code, read its own replies, events and status. The gateway's own user may do anything.
Hashes are Mosquitto's `$7$` (PBKDF2-SHA512), the form they are stored in.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from channels.agents import topics
from core.devices import AGENT_CODE_RE

HEADER = "# Written by `gateway agents broker-config`; changes here are overwritten.\n"


class BrokerConfigError(ValueError):
    pass


def password_file(entries: Iterable[tuple[str, str]]) -> str:
    """`username:hash` lines."""
    lines = []
    for username, hashed in entries:
        if ":" in username or "\n" in username or not hashed.startswith("$7$"):
            raise BrokerConfigError(f"cannot write user {username!r}")
        lines.append(f"{username}:{hashed}")
    return "\n".join(lines) + "\n"


def acl_file(gateway_user: str, agent_codes: Sequence[str]) -> str:
    parts = [HEADER, f"user {gateway_user}\ntopic readwrite #\n"]
    for code in agent_codes:
        if not AGENT_CODE_RE.fullmatch(code):
            raise BrokerConfigError(f"not an agent code: {code!r}")
        if code == gateway_user:
            raise BrokerConfigError(f"agent {code!r} has the gateway's MQTT username")
        rules = [f"topic write {t}" for t in topics.agent_publish_filters(code)]
        rules += [f"topic read {t}" for t in topics.agent_read_filters(code)]
        # The device publishes its retained will on its status topic and may read it back.
        rules = [r for r in rules if not r.endswith(f"/{code}/status")]
        rules.append(f"topic readwrite {topics.status_topic(code)}")
        parts.append(f"\nuser {code}\n" + "\n".join(rules) + "\n")
    return "".join(parts)
