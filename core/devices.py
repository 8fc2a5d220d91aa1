"""Agent devices: identity (MQTT credentials and a device token, stored only as hashes),
location history and geofence events.

Agents are keyed by their code here; the agents table itself belongs to the banking core
(`core/agents.py`), and the foreign key from these tables to it is added when both land.
"""

from __future__ import annotations

import re

# Agent codes appear in MQTT topics and in the broker's password file: no '/', '+', '#', ':'.
AGENT_CODE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{1,31}")
