"""The gateway secret: from GATEWAY_SECRET_KEY, or generated once and kept in the data folder.

It signs JWTs and derives the field-encryption and look-up keys, so it must survive restarts:
a bare-machine install writes it to `GATEWAY_DATA_DIR/secret_key` (mode 0600) on first start.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from config.settings import Settings


def resolve_secret(settings: Settings) -> str:
    if settings.secret_key:
        return settings.secret_key
    path = Path(settings.data_dir) / "secret_key"
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(48)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process won the race; use its secret
        return path.read_text().strip()
    with os.fdopen(fd, "w") as fh:
        fh.write(value)
    return value
