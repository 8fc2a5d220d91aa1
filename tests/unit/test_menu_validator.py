"""The menu validator: a case for every rejection, each a small change to a valid menu."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from menus.catalogue import CATALOGUE
from menus.loader import load_file
from menus.validate import validate_data

Doc = dict[str, Any]


def base() -> Doc:
    return {
        "name": "sample",
        "languages": ["en", "sw"],
        "start": "who",
        "screens": {
            "who": {
                "type": "action",
                "action": "customer.lookup",
                "next": "route",
                "on_error": {"default": "sorry"},
            },
            "route": {
                "type": "router",
                "routes": [{"when": "customer.registered", "next": "main"}],
                "default": "sorry",
            },
            "main": {
                "type": "menu",
                "text": {"en": "Hello {customer.first_name}", "sw": "Habari {customer.first_name}"},
                "options": [{"label": {"en": "Balance", "sw": "Salio"}, "next": "pin"}],
            },
            "pin": {
                "type": "input",
                "text": {"en": "PIN:", "sw": "PIN:"},
                "validate": {"kind": "pin"},
                "save": "pin",
                "next": "bal",
            },
            "bal": {
                "type": "action",
                "action": "balance",
                "next": "done",
                "on_error": {"WRONG_PIN": "pin", "default": "sorry"},
            },
            "done": {"type": "end", "text": {"en": "Balance {balance}", "sw": "Salio {balance}"}},
            "sorry": {"type": "end", "text": {"en": "Sorry.", "sw": "Samahani."}},
        },
    }


def edit(fn: Callable[[Doc], None]) -> Doc:
    doc = copy.deepcopy(base())
    fn(doc)
    return doc


def long_text(doc: Doc) -> None:
    doc["screens"]["done"]["text"]["en"] = "Balance {balance}. " + "x" * 170


def long_ucs2(doc: Doc) -> None:
    doc["screens"]["done"]["text"]["sw"] = "Salio ê {balance} " + "y" * 60


def auto_loop(doc: Doc) -> None:
    doc["screens"]["route"]["default"] = "who"
    doc["screens"]["who"]["on_error"] = {"default": "route"}


REJECTIONS: list[tuple[str, Callable[[Doc], None], str]] = [
    (
        "unknown screen type",
        lambda d: d["screens"]["sorry"].update(type="carousel"),
        "screens.sorry.type: unknown screen type 'carousel'",
    ),
    (
        "dangling target",
        lambda d: d["screens"]["pin"].update(next="nowhere"),
        "screens.pin.next: no screen 'nowhere'",
    ),
    (
        "dangling more target",
        lambda d: d["screens"]["done"].update(more={"when": "balance", "next": "older"}),
        "screens.done.more: no screen 'older'",
    ),
    (
        "more without a source",
        lambda d: d["screens"]["done"].update(more={"when": "older_lines", "next": "bal"}),
        "screens.done.more.when",
    ),
    (
        "more that does not parse",
        lambda d: d["screens"]["done"].update(more={"when": "__import__('os')", "next": "bal"}),
        "screens.done.more.when: condition",
    ),
    ("dangling start", lambda d: d.update(start="nope"), "start: no screen 'nope'"),
    (
        "unreachable screen",
        lambda d: d["screens"].update(orphan={"type": "end", "text": {"en": "x", "sw": "x"}}),
        "screens.orphan: unreachable from start",
    ),
    (
        "dead end: input without next",
        lambda d: d["screens"]["pin"].pop("next"),
        "screens.pin: dead end: the input screen has no next target",
    ),
    (
        "dead end: menu without options",
        lambda d: d["screens"]["main"].update(options=[]),
        "screens.main: dead end: the menu has no options",
    ),
    (
        "dead end: confirm without cancel",
        lambda d: (
            d["screens"].update(main={**d["screens"]["main"], "type": "confirm", "confirm": "pin"})
            or d["screens"]["main"].pop("options")
        ),
        "screens.main: dead end: the confirm screen has no cancel target",
    ),
    (
        "missing translation",
        lambda d: d["screens"]["sorry"]["text"].pop("sw"),
        "screens.sorry.text: missing translation for 'sw'",
    ),
    (
        "missing translation of an option",
        lambda d: d["screens"]["main"]["options"][0]["label"].pop("sw"),
        "screens.main.options.1.label: missing translation for 'sw'",
    ),
    (
        "missing translation of a message in a new language",
        lambda d: d.update(languages=["en", "sw", "yo"]),
        "messages.invalid_choice: missing translation for 'yo'",
    ),
    (
        "unknown action",
        lambda d: d["screens"]["bal"].update(action="balance.steal"),
        "screens.bal.action: unknown action 'balance.steal'",
    ),
    (
        "an error the action never raises",
        lambda d: d["screens"]["bal"]["on_error"].update(INSUFFICIENT_FUNDS="sorry"),
        "screens.bal.on_error.INSUFFICIENT_FUNDS: balance never raises INSUFFICIENT_FUNDS",
    ),
    (
        "over the limit in GSM-7",
        long_text,
        "screens.done (en): renders to 205 GSM7 characters, over the limit of 182",
    ),
    (
        "over the limit in UCS-2",
        long_ucs2,
        "screens.done (sw): renders to 95 UCS2 characters, over the limit of 80",
    ),
    ("a loop without user input", auto_loop, "loop without user input"),
    (
        "a secret shown on screen",
        lambda d: d["screens"]["done"]["text"].update(en="Your PIN {pin}"),
        "screens.done.text.en: {pin} is a secret input and is never shown",
    ),
    (
        "a variable nothing provides",
        lambda d: d["screens"]["done"]["text"].update(en="Hi {nickname}"),
        "screens.done.text.en: no screen, action or sample provides {nickname}",
    ),
    (
        "an action input nothing saves",
        lambda d: d["screens"]["pin"].update(save="code", secret=True),
        "screens.bal: balance needs the secret input 'pin' but no secret input saves it",
    ),
    (
        "a condition outside the language",
        lambda d: d["screens"]["route"]["routes"][0].update(when="__import__('os')"),
        "screens.route.routes.1: condition \"__import__('os')\": unsupported syntax: Call",
    ),
    (
        "a stray brace",
        lambda d: d["screens"]["sorry"]["text"].update(en="Sorry {"),
        "screens.sorry.text.en: unbalanced brace",
    ),
    (
        "a bad regex",
        lambda d: d["screens"]["pin"].update(validate={"kind": "regex", "pattern": "(["}),
        "screens.pin.validate.pattern: not a valid regex",
    ),
    (
        "an unknown validator",
        lambda d: d["screens"]["pin"].update(validate={"kind": "iris-scan"}),
        "screens.pin.validate.kind: Input should be",
    ),
    (
        "match names no secret input",
        lambda d: d["screens"]["pin"]["validate"].update(match="other"),
        "screens.pin.validate.match: no secret input saves 'other'",
    ),
    (
        "an unknown field",
        lambda d: d["screens"]["sorry"].update(colour="red"),
        "screens.sorry.colour: unknown field",
    ),
    (
        "a language not in the list",
        lambda d: d["screens"]["sorry"]["text"].update(fr="Désolé."),
        "screens.sorry.text.fr: 'fr' is not one of the menu's languages",
    ),
    (
        "an unknown message",
        lambda d: d.update(messages={"hello": {"en": "x", "sw": "y"}}),
        "messages.hello: unknown message",
    ),
    (
        "a bad screen id",
        lambda d: d["screens"].update({"Bad-Id": {"type": "end"}}),
        "screens.Bad-Id: a screen id is lowercase letters",
    ),
    ("no name", lambda d: d.pop("name"), "name: missing"),
    ("no screens", lambda d: d.update(screens={}), "screens: expected a mapping"),
]


def test_the_base_menu_is_valid() -> None:
    assert validate_data(base(), CATALOGUE) == []


@pytest.mark.parametrize(("label", "change", "line"), REJECTIONS, ids=[r[0] for r in REJECTIONS])
def test_rejection(label: str, change: Callable[[Doc], None], line: str) -> None:
    problems = validate_data(edit(change), CATALOGUE)
    assert any(line in p for p in problems), problems
    assert all("\n" not in p for p in problems)  # one line per problem


def test_not_a_mapping() -> None:
    assert validate_data(["screens"], CATALOGUE) == [
        "document: expected a mapping of fields (name, languages, screens ...)"
    ]


def test_too_many_pages() -> None:
    doc = base()
    doc["screens"]["main"]["options"] = [
        {
            "label": {"en": f"Option number {i} " + "z" * 60, "sw": f"Chaguo {i} " + "z" * 60},
            "next": "pin",
        }
        for i in range(30)
    ]
    problems = validate_data(doc, CATALOGUE)
    assert any("screens.main (en): needs" in p and "pages" in p for p in problems), problems


@pytest.mark.parametrize(
    ("content", "suffix", "problem"),
    [
        ("name: [unclosed", ".yaml", "not valid YAML (line 1"),
        ("{", ".json", "not valid JSON (line 1"),
        (b"\xff\xfe", ".yaml", "not UTF-8 text"),
        # Both parsers recurse once per level: this was a RecursionError traceback.
        ("a: " + "[" * 5000 + "]" * 5000, ".yaml", "nested too deeply"),
        ("[" * 5000 + "]" * 5000, ".json", "nested too deeply"),
    ],
)
def test_unreadable_files(tmp_path: Path, content: str | bytes, suffix: str, problem: str) -> None:
    path = tmp_path / f"menu{suffix}"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    data, problems = load_file(path)
    assert data is None and problems and problem in problems[0]
    assert load_file(tmp_path / "missing.yaml")[1][0].startswith("cannot read the file")
