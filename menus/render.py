"""Rendering: a screen in a language with variables, then cut into pages that each fit.

A displayed screen is made of units: an optional notice ("Invalid choice."), the screen's text,
then its list (menu options, items, or the lines of a list variable such as a statement), then
the confirm / cancel lines. When everything fits in one screen it is sent as is. Otherwise the
units are packed greedily into pages; every page but the last ends with "98. More", every page
but the first carries "0. Back". Each page is measured in the encoding it needs (182 GSM-7
septets, or 80 UTF-16 units once one character falls outside GSM-7), so a French page with "ç"
is cut shorter than an English one. A unit longer than a page is split between words.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from menus.compiled import CompiledMenu, Node
from menus.expr import lookup
from menus.gsm import Measure, fits, measure
from menus.template import format_value

MAX_PAGES = 12
MAX_LIST_ITEMS = 60
MAX_RENDERED = 4096  # cached pages of static screens per menu version (a bound, never reached)
EMPTY_SCOPE: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Rendered:
    text: str  # the page to send
    page: int
    pages: int
    more: bool = False  # an end screen whose last page goes on (`98`) to more lines

    @property
    def last(self) -> bool:
        return self.page >= self.pages - 1


def visible_options(node: Node, scope: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The choices on a menu screen, in order: ("option", Option) or ("item", element)."""
    out: list[tuple[str, Any]] = [
        ("option", o) for o in node.options if o.when is None or o.when(scope)
    ]
    if node.items_source is not None:
        items = lookup(scope, node.items_source)
        if isinstance(items, list):
            out += [("item", e) for e in items[:MAX_LIST_ITEMS] if isinstance(e, Mapping)]
    return out


def choice_label(node: Node, choice: tuple[str, Any], language: str, fallback: str) -> str:
    kind, value = choice
    if kind == "option":
        tpl = value.label.get(language) or value.label.get(fallback)
        return "" if tpl is None else tpl.render({})
    assert node.item_label is not None
    return node.item_label.render(value)


def _units(
    menu: CompiledMenu, node: Node, language: str, scope: Mapping[str, Any]
) -> tuple[list[str], list[str]]:
    """(head units, list units) of a screen."""
    fallback = menu.default_language
    tpl = node.text.get(language) or node.text.get(fallback)
    head = [tpl.render(scope)] if tpl is not None else []
    items: list[str] = []
    if node.type == "menu":
        for n, choice in enumerate(visible_options(node, scope), start=1):
            items.append(f"{n}. {choice_label(node, choice, language, fallback)}")
    elif node.type == "end" and node.lines is not None:
        lines = lookup(scope, node.lines)
        if isinstance(lines, list):
            items = [format_value(v) for v in lines[:MAX_LIST_ITEMS]]
        elif lines is not None:
            items = [format_value(lines)]
    elif node.type == "confirm":
        items = [menu.message("confirm", language), menu.message("cancel", language)]
    return head, items


def _split(unit: str, budget: list[str]) -> tuple[str, str]:
    """The longest prefix of `unit` (cut between words, else anywhere) that fits on a page
    with `budget`, and the rest."""
    words = unit.replace("\n", " \n ").split(" ")
    best = 0
    for i in range(1, len(words) + 1):
        if fits("\n".join([" ".join(words[:i]).replace(" \n ", "\n"), *budget])):
            best = i
        else:
            break
    if best == 0 or best == len(words):
        # One word longer than a page: cut it.
        cut = 1
        while cut < len(unit) and fits("\n".join([unit[: cut + 1], *budget])):
            cut += 1
        return unit[:cut], unit[cut:]
    head = " ".join(words[:best]).replace(" \n ", "\n").strip()
    rest = " ".join(words[best:]).replace(" \n ", "\n").strip()
    return head, rest


def paginate(
    units: Sequence[str],
    more: str,
    back: str,
    *,
    back_on_last: bool = True,
    more_on_last: bool = False,
) -> list[str]:
    """Pack units into pages that each fit, with the navigation lines. The last page of a
    screen that ends the session offers no way back (`back_on_last=False`); the last page of
    one that goes on to more (`more_on_last`) offers "98. More" like the others."""
    remaining = [u for u in units if u]
    pages: list[str] = []
    while remaining and len(pages) < MAX_PAGES:
        nav = [back] if pages else []
        last_nav = nav if back_on_last else []
        if more_on_last:
            last_nav = [*last_nav, more]
        if fits("\n".join([*remaining, *last_nav])):
            pages.append("\n".join([*remaining, *last_nav]))
            break
        page: list[str] = []
        while remaining and fits("\n".join([*page, remaining[0], *nav, more])):
            page.append(remaining.pop(0))
        if not page:
            head, rest = _split(remaining[0], [*nav, more])
            page.append(head)
            remaining[0] = rest
            if not rest:
                remaining.pop(0)
        pages.append("\n".join([*page, *nav, more]))
    return pages or [""]


def full_text(menu: CompiledMenu, node: Node, language: str, scope: Mapping[str, Any]) -> str:
    """The whole screen without pages (an SMS, which may run to several parts)."""
    head, items = _units(menu, node, language, scope)
    return "\n".join(u for u in head + items if u)


def render(
    menu: CompiledMenu,
    node: Node,
    language: str,
    scope: Mapping[str, Any],
    *,
    page: int = 0,
    notice: str | None = None,
) -> Rendered:
    """Page `page` of a screen. A static screen (`CompiledMenu.static`: no variables, no
    conditions, no lists) is rendered once per language, page and notice, then reused."""
    if node.id in menu.static:
        key = (node.id, language, page, notice)
        cached = menu.rendered.get(key)
        if cached is None:
            cached = _render(menu, node, language, EMPTY_SCOPE, page=page, notice=notice)
            if len(menu.rendered) < MAX_RENDERED:
                menu.rendered[key] = cached
        return cached
    return _render(menu, node, language, scope, page=page, notice=notice)


def _render(
    menu: CompiledMenu,
    node: Node,
    language: str,
    scope: Mapping[str, Any],
    *,
    page: int,
    notice: str | None,
) -> Rendered:
    head, items = _units(menu, node, language, scope)
    units = ([notice] if notice else []) + head + items
    goes_on = node.type == "end" and node.more_open(scope)
    pages = paginate(
        units,
        menu.message("more", language),
        menu.message("back", language),
        back_on_last=node.type != "end",
        more_on_last=goes_on,
    )
    index = min(max(page, 0), len(pages) - 1)
    return Rendered(pages[index], index, len(pages), more=goes_on)


def head_fits(
    menu: CompiledMenu, node: Node, language: str, scope: Mapping[str, Any], notice: str | None
) -> bool:
    """Whether the screen's own text (with `notice`) fits on one page beside the navigation
    lines: pagination only ever splits lists, so an admin's text must fit by itself."""
    return measure_head(menu, node, language, scope, notice).fits


def measure_head(
    menu: CompiledMenu, node: Node, language: str, scope: Mapping[str, Any], notice: str | None
) -> Measure:
    head, _ = _units(menu, node, language, scope)
    return measure(
        "\n".join([*([notice] if notice else []), *head, menu.message("more", language)])
    )


def page_count(menu: CompiledMenu, node: Node, language: str, scope: Mapping[str, Any]) -> int:
    return render(menu, node, language, scope).pages
