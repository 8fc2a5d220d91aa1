"""Reading menu files: YAML (`.yaml`, `.yml`) or JSON (`.json`), with problems as lines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

MAX_FILE_BYTES = 1024 * 1024


def _parse(path: Path, text: str) -> tuple[Any, list[str]]:
    try:
        if path.suffix.lower() == ".json":
            return json.loads(text), []
        return yaml.safe_load(text), []
    except json.JSONDecodeError as exc:
        return None, [f"not valid JSON (line {exc.lineno}: {exc.msg})"]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        return None, [f"not valid YAML ({where}{problem})"]
    except RecursionError:  # both parsers recurse once per level of nesting
        return None, ["nested too deeply to be a menu document"]


def load_file(path: Path) -> tuple[Any, list[str]]:
    """The parsed document, or None and one line saying why it could not be read."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return None, [f"cannot read the file: {exc.strerror or exc}"]
    if len(raw) > MAX_FILE_BYTES:
        return None, [f"larger than {MAX_FILE_BYTES} bytes"]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, ["not UTF-8 text"]
    return _parse(path, text)
