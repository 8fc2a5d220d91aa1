"""Menu documents: the shape of a menu (YAML in `config/menus/`, JSON over the admin API).

    name: default
    languages: [en, sw, fr]          # the first is the default
    start: start                     # the first screen of a session
    home: home                       # where `00` goes (default: start)
    screens:
      main:
        type: menu
        text: {en: "Welcome {customer.first_name}", sw: "Karibu ...", fr: "Bienvenue ..."}
        options:
          - label: {en: Send money, sw: Tuma pesa, fr: Envoyer de l'argent}
            next: send_phone
      send_phone:
        type: input
        text: {en: Enter the phone number, ...}
        validate: {kind: msisdn}
        save: recipient
        next: send_amount

Screen types: `menu` (options, or `items` built from a list variable), `input` (a validator and
the variable to save), `confirm` (yes / no), `action` (calls an action; `next` on success,
`on_error` by error code), `router` (conditions on session and customer data), `end`.

`parse_document` checks the structure and returns one line per problem; `menus.validate` checks
the meaning (targets, reachability, translations, actions, lengths).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from menus.validators import KINDS

ID = r"^[a-z][a-z0-9_]{0,47}$"
VAR = r"^[a-z][a-z0-9_]{0,47}$"
LANG = r"^[a-z]{2,3}$"
MAX_SCREENS = 300
MAX_OPTIONS = 30
MAX_TEXT_CHARS = 1000
BEGIN = "__begin__"
SCREEN_TYPES = ("menu", "input", "confirm", "action", "router", "end")
DISPLAYED = frozenset({"menu", "input", "confirm", "end"})

ScreenId = Annotated[str, Field(pattern=ID)]
VarName = Annotated[str, Field(pattern=VAR)]
Texts = dict[Annotated[str, Field(pattern=LANG)], Annotated[str, Field(max_length=MAX_TEXT_CHARS)]]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Option(_Strict):
    label: Texts
    next: ScreenId | None = None
    when: str | None = None


class Items(_Strict):
    """Options built from a list variable: one option per element (a mapping), labelled by
    `label` (a template over the element's fields). Choosing one saves element[`value`] in the
    variable `save` and the rendered label in `<save>_label`."""

    source: VarName
    label: str = Field(max_length=200)
    value: str = Field(pattern=VAR)
    save: VarName
    next: ScreenId | None = None


class Check(_Strict):
    kind: Literal["digits", "amount", "msisdn", "pin", "regex", "length", "text"]
    min_length: int | None = Field(default=None, ge=1, le=160)
    max_length: int | None = Field(default=None, ge=1, le=160)
    pattern: str | None = Field(default=None, max_length=200)
    match: VarName | None = None


class Route(_Strict):
    when: str
    next: ScreenId | None = None


class MenuScreen(_Strict):
    type: Literal["menu"]
    text: Texts
    options: list[Option] = Field(default_factory=list, max_length=MAX_OPTIONS)
    items: Items | None = None


class InputScreen(_Strict):
    type: Literal["input"]
    text: Texts
    validate_: Check = Field(alias="validate")
    save: VarName
    secret: bool | None = None
    error: Texts | None = None
    next: ScreenId | None = None


class ConfirmScreen(_Strict):
    """`1` confirms, `2` cancels. (Not `yes:` / `no:`: YAML reads those keys as booleans.)"""

    type: Literal["confirm"]
    text: Texts
    confirm: ScreenId | None = None
    cancel: ScreenId | None = None


class ActionScreen(_Strict):
    type: Literal["action"]
    action: str = Field(min_length=1, max_length=64)
    params: dict[str, str | int | bool] = Field(default_factory=dict)
    next: ScreenId | None = None
    on_error: dict[str, ScreenId] = Field(default_factory=dict)


class RouterScreen(_Strict):
    type: Literal["router"]
    routes: list[Route] = Field(default_factory=list, max_length=MAX_OPTIONS)
    default: ScreenId | None = None


class EndScreen(_Strict):
    type: Literal["end"]
    text: Texts
    lines: VarName | None = None
    # `98` on the last page goes on to `more.next` while `more.when` holds (e.g. older lines of a
    # statement); until then the last page offers "98. More" and the session stays open.
    more: Route | None = None


Screen = MenuScreen | InputScreen | ConfirmScreen | ActionScreen | RouterScreen | EndScreen
_MODELS: dict[str, type[BaseModel]] = {
    "menu": MenuScreen,
    "input": InputScreen,
    "confirm": ConfirmScreen,
    "action": ActionScreen,
    "router": RouterScreen,
    "end": EndScreen,
}


class Document(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,63}$")
    title: str = Field(default="", max_length=200)
    service_code: str | None = Field(default=None, pattern=r"^\*\d{1,6}(\*\d{1,6})*#$")
    languages: list[Annotated[str, Field(pattern=LANG)]] = Field(min_length=1, max_length=10)
    start: ScreenId
    home: ScreenId | None = None
    samples: dict[VarName, Any] = Field(default_factory=dict)
    messages: dict[str, Texts] = Field(default_factory=dict)
    screens: dict[str, Screen]

    @property
    def default_language(self) -> str:
        return self.languages[0]

    @property
    def home_screen(self) -> str:
        return self.home or self.start


def _where(prefix: str, loc: tuple[Any, ...]) -> str:
    parts = [prefix] if prefix else []
    parts += [str(p) for p in loc if p != "validate_"]
    return ".".join(parts) or "document"


def _lines(exc: ValidationError, prefix: str) -> list[str]:
    out = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = tuple("validate" if p == "validate_" else p for p in err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif err["type"] == "missing":
            msg = "missing"
        out.append(f"{_where(prefix, loc)}: {msg}")
    return out


def parse_document(data: Any) -> tuple[Document | None, list[str]]:
    """Check the structure of a menu document. Returns the document, or None and one line per
    problem (`screens.pay.validate.kind: ...`)."""
    if not isinstance(data, Mapping):
        return None, ["document: expected a mapping of fields (name, languages, screens ...)"]
    problems: list[str] = []
    raw_screens = data.get("screens")
    screens: dict[str, Any] = {}
    if not isinstance(raw_screens, Mapping) or not raw_screens:
        problems.append("screens: expected a mapping of screen id to screen")
    elif len(raw_screens) > MAX_SCREENS:
        problems.append(f"screens: more than {MAX_SCREENS} screens")
    else:
        for sid, raw in raw_screens.items():
            screen = _parse_screen(str(sid), raw, problems)
            if screen is not None:
                screens[str(sid)] = screen
    head = {k: v for k, v in data.items() if k != "screens"}
    try:
        doc = Document.model_validate({**head, "screens": {}})
    except ValidationError as exc:
        problems.extend(_lines(exc, ""))
        return None, problems
    if problems:
        return None, problems
    return doc.model_copy(update={"screens": screens}), []


def _parse_screen(sid: str, raw: Any, problems: list[str]) -> Screen | None:
    where = f"screens.{sid}"
    if not re.match(ID, sid) or sid == BEGIN:
        problems.append(f"{where}: a screen id is lowercase letters, digits and _ (max 48)")
        return None
    if not isinstance(raw, Mapping):
        problems.append(f"{where}: expected a mapping")
        return None
    kind = raw.get("type")
    model = _MODELS.get(kind) if isinstance(kind, str) else None
    if model is None:
        allowed = ", ".join(SCREEN_TYPES)
        problems.append(f"{where}.type: unknown screen type {kind!r} (one of {allowed})")
        return None
    try:
        screen: Screen = model.model_validate(raw)  # type: ignore[assignment]
    except ValidationError as exc:
        problems.extend(_lines(exc, where))
        return None
    return screen


__all__ = [
    "BEGIN",
    "DISPLAYED",
    "KINDS",
    "SCREEN_TYPES",
    "ActionScreen",
    "Check",
    "ConfirmScreen",
    "Document",
    "EndScreen",
    "InputScreen",
    "Items",
    "MenuScreen",
    "Option",
    "Route",
    "RouterScreen",
    "Screen",
    "parse_document",
]
