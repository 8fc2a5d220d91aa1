"""Screen texts with variables: `"Send {amount} to {recipient_name}?"`, compiled once per version.

A placeholder is a variable path (`{customer.first_name}`); `{{` and `}}` are literal braces.
Values come from the session variables at render time; a missing value renders as nothing (the
validator has already checked that every placeholder has a source). No format specs, no
attribute calls: texts are data an admin edits, not code.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from menus.expr import lookup

_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)\}")


class TemplateError(ValueError):
    """A brace that opens no valid placeholder."""


def format_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, list | tuple):
        return "\n".join(format_value(v) for v in value)
    return str(value)


@dataclass(frozen=True, slots=True)
class Template:
    """Literal parts and variable paths, in order; `paths` lists the variables used."""

    source: str
    parts: tuple[str | tuple[str], ...]

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(p[0] for p in self.parts if isinstance(p, tuple))

    def render(self, scope: Mapping[str, Any]) -> str:
        out = []
        for part in self.parts:
            if isinstance(part, tuple):
                out.append(format_value(lookup(scope, part[0])))
            else:
                out.append(part)
        return "".join(out)


def compile_template(source: str) -> Template:
    parts: list[str | tuple[str]] = []
    pos = 0
    literal: list[str] = []
    for match in _PLACEHOLDER.finditer(source):
        chunk = source[pos : match.start()]
        if "{" in chunk or "}" in chunk:
            raise TemplateError(f"unbalanced brace in {source!r}")
        literal.append(chunk)
        token = match.group(0)
        if token == "{{":
            literal.append("{")
        elif token == "}}":
            literal.append("}")
        else:
            if literal:
                parts.append("".join(literal))
                literal = []
            parts.append((match.group(1),))
        pos = match.end()
    tail = source[pos:]
    if "{" in tail or "}" in tail:
        raise TemplateError(f"unbalanced brace in {source!r}")
    literal.append(tail)
    if "".join(literal):
        parts.append("".join(literal))
    return Template(source, tuple(parts))
