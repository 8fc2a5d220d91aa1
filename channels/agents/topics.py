"""The agent topics of CONTRACTS.md and who may use which.

    owntracks/{code}/{device}   device -> gateway   OwnTracks location (and its will)
    agents/{code}/location      device -> gateway   native location
    agents/{code}/cmd           device -> gateway   commands
    agents/{code}/reply         gateway -> device   replies (QoS 1)
    agents/{code}/events        gateway -> device   enter / exit / breach / online / offline
    agents/{code}/status        device (will) and gateway, retained: online / offline

The same rules feed the Mosquitto ACL file and the embedded broker's plugin: an agent publishes
only under its own code and reads only its own replies, events and status.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from core.devices import AGENT_CODE_RE

SUBSCRIPTIONS = ("owntracks/+/+", "agents/+/location", "agents/+/cmd", "agents/+/status")


class Kind(StrEnum):
    OWNTRACKS = "owntracks"
    LOCATION = "location"
    CMD = "cmd"
    STATUS = "status"


@dataclass(frozen=True, slots=True)
class Inbound:
    kind: Kind
    agent_code: str
    device: str | None = None  # OwnTracks: the topic's device level


def subscriptions(share_group: str | None) -> list[str]:
    """The gateway's topic filters; shared (`$share/{group}/...`) when the broker speaks MQTT 5."""
    if share_group:
        return [f"$share/{share_group}/{t}" for t in SUBSCRIPTIONS]
    return list(SUBSCRIPTIONS)


def classify(topic: str) -> Inbound | None:
    """What an inbound topic carries and for which agent (None: not ours or a bad code)."""
    parts = topic.split("/")
    if len(parts) != 3:
        return None
    root, code, leaf = parts
    if not AGENT_CODE_RE.fullmatch(code):
        return None
    if root == "owntracks" and leaf:
        return Inbound(Kind.OWNTRACKS, code, leaf)
    if root == "agents" and leaf in ("location", "cmd", "status"):
        return Inbound(Kind(leaf), code)
    return None


def reply_topic(code: str) -> str:
    return f"agents/{code}/reply"


def owntracks_cmd_topic(code: str, device: str) -> str:
    """Where an OwnTracks app with remote commands enabled listens (the agent may read it)."""
    return f"owntracks/{code}/{device}/cmd"


def events_topic(code: str) -> str:
    return f"agents/{code}/events"


def status_topic(code: str) -> str:
    return f"agents/{code}/status"


def agent_publish_filters(code: str) -> list[str]:
    return [
        f"agents/{code}/location",
        f"agents/{code}/cmd",
        f"agents/{code}/status",
        f"owntracks/{code}/+",
    ]


def agent_read_filters(code: str) -> list[str]:
    return [
        f"agents/{code}/reply",
        f"agents/{code}/events",
        f"agents/{code}/status",
        f"owntracks/{code}/+/cmd",
    ]


def filter_within(requested: str, allowed: str) -> bool:
    """True when every topic `requested` can match is matched by `allowed` (a topic is a filter
    without wildcards). A wildcard level in `requested` is only covered by the same or broader."""
    req, alw = requested.split("/"), allowed.split("/")
    for i, level in enumerate(alw):
        if level == "#":
            return True
        if i >= len(req):
            return False
        if level == "+":
            if req[i] == "#":
                return False
            continue
        if req[i] != level:
            return False
    return len(req) == len(alw)


def agent_may_publish(code: str, topic: str) -> bool:
    return any(filter_within(topic, f) for f in agent_publish_filters(code))


def agent_may_read(code: str, topic_or_filter: str) -> bool:
    return any(filter_within(topic_or_filter, f) for f in agent_read_filters(code))
