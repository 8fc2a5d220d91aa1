"""A menu version compiled once: templates, conditions and input rules parsed, the screen graph
indexed. Immutable after compilation; every session on that version shares it (and the engine
attaches the version's one state machine to it)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from menus import messages as msg
from menus.expr import Condition, ExpressionError, compile_condition
from menus.schema import (
    DISPLAYED,
    ActionScreen,
    ConfirmScreen,
    Document,
    EndScreen,
    InputScreen,
    MenuScreen,
    RouterScreen,
    Screen,
)
from menus.template import Template, TemplateError, compile_template
from menus.validators import Rule

Texts = Mapping[str, Template]


@dataclass(frozen=True, slots=True)
class Option:
    index: int  # 1-based position in the document: the trigger is `option_<index>`
    label: Texts
    next: str | None
    when: Condition | None
    when_source: str | None


@dataclass(frozen=True, slots=True)
class Node:
    """One compiled screen."""

    id: str
    type: str
    text: Texts = field(default_factory=dict)
    options: tuple[Option, ...] = ()
    items_source: str | None = None
    item_label: Template | None = None
    item_value: str | None = None
    rule: Rule | None = None
    save: str | None = None
    secret: bool = False
    error: Texts | None = None
    next: str | None = None
    yes: str | None = None
    no: str | None = None
    action: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    on_error: Mapping[str, str] = field(default_factory=dict)
    routes: tuple[tuple[Condition, str | None, str], ...] = ()
    default: str | None = None
    lines: str | None = None
    more: tuple[Condition, str | None, str] | None = None  # an end screen's (when, next, source)

    @property
    def displayed(self) -> bool:
        return self.type in DISPLAYED

    def targets(self) -> list[tuple[str, str | None]]:
        """Every forward edge as (label, target); a None target is a dead end."""
        edges: list[tuple[str, str | None]] = []
        if self.type == "menu":
            edges += [(f"option {o.index}", o.next) for o in self.options]
            if self.items_source is not None:
                edges.append(("items", self.next))
        elif self.type == "input":
            edges.append(("next", self.next))
        elif self.type == "confirm":
            edges += [("confirm", self.yes), ("cancel", self.no)]
        elif self.type == "action":
            edges.append(("next", self.next))
            edges += [(f"on_error.{code}", t) for code, t in self.on_error.items()]
        elif self.type == "router":
            edges += [(f"route {i + 1}", t) for i, (_, t, _) in enumerate(self.routes)]
            edges.append(("default", self.default))
        elif self.type == "end" and self.more is not None:
            edges.append(("more", self.more[1]))
        return edges

    def more_open(self, scope: Mapping[str, Any]) -> bool:
        """Whether `98` on this end screen's last page goes on to `more.next`."""
        return self.more is not None and bool(self.more[0](scope))


@dataclass
class CompiledMenu:
    name: str
    version: int
    doc: Document
    nodes: Mapping[str, Node]
    messages: Mapping[str, Texts]
    machine: Any = None  # the version's shared AsyncMachine (menus.machine)
    # the machine's transitions with nothing to run but conditions (menus.machine.plain_moves)
    plain: dict[tuple[str, str], Any] = field(default_factory=dict)
    # screens whose pages depend only on the language (no variables, no conditions, no lists):
    # rendered once per (screen, language, page, notice) into `rendered` (menus.render)
    static: frozenset[str] = frozenset()
    rendered: dict[tuple[str, str, int, str | None], Any] = field(default_factory=dict)

    @property
    def languages(self) -> list[str]:
        return self.doc.languages

    @property
    def default_language(self) -> str:
        return self.doc.default_language

    def language(self, wanted: str | None) -> str:
        return wanted if wanted in self.doc.languages else self.doc.default_language

    def message(self, key: str, language: str, scope: Mapping[str, Any] | None = None) -> str:
        texts = self.messages.get(key, {})
        tpl = texts.get(language) or texts.get(self.default_language)
        if tpl is None:
            return msg.default_text(key, language)
        return tpl.render(scope or {})


def _texts(raw: Mapping[str, str], where: str, problems: list[str]) -> dict[str, Template]:
    out = {}
    for lang, text in raw.items():
        try:
            out[lang] = compile_template(text)
        except TemplateError as exc:
            problems.append(f"{where}.{lang}: {exc}")
    return out


def _condition(text: str, where: str, problems: list[str]) -> Condition | None:
    try:
        return compile_condition(text)
    except ExpressionError as exc:
        problems.append(f"{where}: condition {text!r}: {exc}")
        return None


def _menu_fields(where: str, screen: MenuScreen, problems: list[str]) -> dict[str, Any]:
    options = []
    for i, opt in enumerate(screen.options, start=1):
        when = _condition(opt.when, f"{where}.options.{i}", problems) if opt.when else None
        label = _texts(opt.label, f"{where}.options.{i}.label", problems)
        options.append(Option(i, MappingProxyType(label), opt.next, when, opt.when))
    fields: dict[str, Any] = {"options": tuple(options)}
    if screen.items is not None:
        try:
            fields["item_label"] = compile_template(screen.items.label)
        except TemplateError as exc:
            problems.append(f"{where}.items.label: {exc}")
        fields.update(
            items_source=screen.items.source,
            item_value=screen.items.value,
            save=screen.items.save,
            next=screen.items.next,
        )
    return fields


def _input_fields(where: str, screen: InputScreen, problems: list[str]) -> dict[str, Any]:
    check = screen.validate_
    if check.pattern is not None:
        try:
            re.compile(check.pattern)
        except re.error as exc:
            problems.append(f"{where}.validate.pattern: not a valid regex ({exc})")
    fields: dict[str, Any] = {
        "rule": Rule(check.kind, check.min_length, check.max_length, check.pattern, check.match),
        "save": screen.save,
        "secret": screen.secret if screen.secret is not None else check.kind == "pin",
        "next": screen.next,
    }
    if screen.error is not None:
        fields["error"] = MappingProxyType(_texts(screen.error, f"{where}.error", problems))
    return fields


def _router_fields(where: str, screen: RouterScreen, problems: list[str]) -> dict[str, Any]:
    routes = []
    for i, route in enumerate(screen.routes, start=1):
        cond = _condition(route.when, f"{where}.routes.{i}", problems)
        if cond is not None:
            routes.append((cond, route.next, route.when))
    return {"routes": tuple(routes), "default": screen.default}


def _node(sid: str, screen: Screen, problems: list[str]) -> Node:
    where = f"screens.{sid}"
    fields: dict[str, Any] = {"id": sid, "type": screen.type}
    if not isinstance(screen, ActionScreen | RouterScreen):
        fields["text"] = MappingProxyType(_texts(screen.text, f"{where}.text", problems))
    if isinstance(screen, MenuScreen):
        fields.update(_menu_fields(where, screen, problems))
    elif isinstance(screen, InputScreen):
        fields.update(_input_fields(where, screen, problems))
    elif isinstance(screen, ConfirmScreen):
        fields.update(yes=screen.confirm, no=screen.cancel)
    elif isinstance(screen, ActionScreen):
        fields.update(
            action=screen.action,
            params=MappingProxyType(dict(screen.params)),
            next=screen.next,
            on_error=MappingProxyType(dict(screen.on_error)),
        )
    elif isinstance(screen, RouterScreen):
        fields.update(_router_fields(where, screen, problems))
    elif isinstance(screen, EndScreen):
        fields["lines"] = screen.lines
        if screen.more is not None:
            cond = _condition(screen.more.when, f"{where}.more.when", problems)
            if cond is not None:
                fields["more"] = (cond, screen.more.next, screen.more.when)
    return Node(**fields)


def _static(node: Node) -> bool:
    """Whether a displayed screen renders the same for every session (per language)."""
    if node.type not in ("menu", "input", "confirm", "end"):
        return False
    if any(t.paths for t in node.text.values()):
        return False
    if node.type == "menu":
        if node.items_source is not None:
            return False
        for option in node.options:
            if option.when is not None or any(t.paths for t in option.label.values()):
                return False
    return not (node.type == "end" and (node.lines is not None or node.more is not None))


def compile_menu(doc: Document, version: int = 0) -> tuple[CompiledMenu | None, list[str]]:
    """Compile a structurally valid document. Returns the menu, or None and the problems
    (templates with stray braces, conditions outside the language, bad regexes)."""
    problems: list[str] = []
    nodes = {sid: _node(sid, screen, problems) for sid, screen in doc.screens.items()}
    messages: dict[str, Texts] = {}
    for key, defaults in msg.DEFAULTS.items():
        merged = dict(defaults)
        merged.update(doc.messages.get(key, {}))
        messages[key] = MappingProxyType(_texts(merged, f"messages.{key}", problems))
    for key in doc.messages:
        if key not in msg.DEFAULTS:
            problems.append(f"messages.{key}: unknown message (one of {', '.join(msg.KEYS)})")
    if problems:
        return None, problems
    menu = CompiledMenu(doc.name, version, doc, MappingProxyType(nodes), MappingProxyType(messages))
    menu.static = frozenset(sid for sid, node in nodes.items() if _static(node))
    return menu, []
