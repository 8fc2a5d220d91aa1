"""Rendering: GSM-7 / UCS-2 measurement, pagination, and every screen of the default menu in
every language fitting the limit with sample values."""

from __future__ import annotations

from typing import Any

import pytest

from menus.catalogue import CATALOGUE
from menus.compiled import CompiledMenu
from menus.gsm import GSM7_LIMIT, UCS2_LIMIT, measure
from menus.loader import load_file
from menus.render import paginate, render
from menus.seed import DEFAULT_MENU_FILE
from menus.validate import _notices, _sample_scope, check


@pytest.mark.parametrize(
    ("text", "encoding", "length"),
    [
        ("Hello", "gsm7", 5),
        ("Envoyé à Zoé", "gsm7", 12),  # é and à are in the GSM-7 alphabet
        ("Ç", "gsm7", 1),
        ("€5 [x]", "gsm7", 9),  # extension characters cost two septets
        ("Français", "ucs2", 8),  # ç is not in GSM-7
        ("Prêt", "ucs2", 4),
        ("Hi 👋", "ucs2", 5),  # an emoji is two UTF-16 units
    ],
)
def test_measure(text: str, encoding: str, length: int) -> None:
    m = measure(text)
    assert (m.encoding, m.length) == (encoding, length)
    assert m.limit == (GSM7_LIMIT if encoding == "gsm7" else UCS2_LIMIT)


def test_paginate_keeps_pages_within_the_limit_in_their_own_encoding() -> None:
    units = ["Choose"] + [f"{i}. Option number {i} with a long label" for i in range(1, 15)]
    pages = paginate(units, "98. More", "0. Back")
    assert len(pages) > 2
    assert pages[0].startswith("Choose\n1. Option") and pages[0].endswith("\n98. More")
    assert "0. Back" in pages[1] and pages[-1].endswith("0. Back")
    assert all(measure(p).fits for p in pages)
    joined = "\n".join(pages)
    assert all(u in joined for u in units)


def test_paginate_ucs2_pages_are_shorter() -> None:
    units = [f"{i}. Crédit numéro {i} à rembourser" for i in range(1, 8)]
    gsm_pages = paginate(units, "98. Suite", "0. Retour")
    ucs_pages = paginate([u + " ê" for u in units], "98. Suite", "0. Retour")
    assert len(ucs_pages) > len(gsm_pages)
    for page in ucs_pages:
        m = measure(page)
        assert m.encoding == "ucs2" and m.length <= UCS2_LIMIT


def test_paginate_splits_a_unit_longer_than_a_page() -> None:
    words = " ".join(f"word{i}" for i in range(80))
    pages = paginate([words], "98. More", "0. Back")
    assert len(pages) >= 3 and all(measure(p).fits for p in pages)
    rebuilt = " ".join(p.replace("\n98. More", "").replace("\n0. Back", "") for p in pages)
    assert rebuilt.split() == words.split()
    assert all(measure(p).fits for p in paginate(["x" * 500], "98. More", "0. Back"))


def test_an_end_screen_offers_no_way_back_on_its_last_page() -> None:
    assert paginate(["a"] * 3, "98", "0. Back", back_on_last=False) == ["a\na\na"]
    pages = paginate(["line " * 20] * 4, "98. More", "0. Back", back_on_last=False)
    assert "0. Back" in pages[1] and not pages[-1].endswith("0. Back")


@pytest.fixture(scope="module")
def default_menu() -> tuple[CompiledMenu, dict[str, Any]]:
    data, problems = load_file(DEFAULT_MENU_FILE)
    assert problems == []
    menu, problems = check(data, CATALOGUE)
    assert menu is not None, problems
    scope, _ = _sample_scope(menu, CATALOGUE)
    return menu, scope


def test_default_menu_is_valid_and_has_the_contract_labels(
    default_menu: tuple[CompiledMenu, dict[str, Any]],
) -> None:
    menu, scope = default_menu
    assert menu.languages == ["en", "sw", "fr"]
    main = render(menu, menu.nodes["main"], "en", scope).text
    for label in ("Send money", "Balance", "Withdraw", "Statement", "Loans", "My account"):
        assert label in main
    loans = render(menu, menu.nodes["loans"], "en", scope).text
    assert all(word in loans for word in ("Apply", "Repay", "Status"))
    account = render(menu, menu.nodes["account"], "en", scope).text
    assert "Change PIN" in account and "Language" in account
    languages = render(menu, menu.nodes["lang_menu"], "en", scope).text
    assert all(word in languages for word in ("English", "Kiswahili", "Francais"))
    assert "Register" in render(menu, menu.nodes["welcome"], "en", scope).text


def test_every_screen_of_the_default_menu_fits_in_every_language(
    default_menu: tuple[CompiledMenu, dict[str, Any]],
) -> None:
    menu, scope = default_menu
    checked = 0
    for node in menu.nodes.values():
        if not node.displayed:
            continue
        for lang in menu.languages:
            for notice in _notices(menu, node, lang):
                first = render(menu, node, lang, scope, notice=notice)
                for page in range(first.pages):
                    text = render(menu, node, lang, scope, page=page, notice=notice).text
                    m = measure(text)
                    assert m.fits, (node.id, lang, page, m, text)
                    checked += 1
    assert checked > 300


def test_a_last_page_that_goes_on_offers_more() -> None:
    """An end screen with older lines to fetch (`more`) keeps "98. More" on its last page."""
    assert paginate(["Statement"], "98. More", "0. Back", back_on_last=False) == ["Statement"]
    assert paginate(
        ["Statement"], "98. More", "0. Back", back_on_last=False, more_on_last=True
    ) == ["Statement\n98. More"]
    pages = paginate(
        ["x" * 100, "y" * 100, "z" * 100],
        "98. More",
        "0. Back",
        back_on_last=False,
        more_on_last=True,
    )
    assert len(pages) == 3 and all(p.endswith("\n98. More") and len(p) <= 182 for p in pages)
    assert "0. Back" in pages[1] and "0. Back" not in pages[2]
