"""The SMS command grammar (CONTRACTS.md, "SMS"), as a pure parser.

    HELP                                   the command list
    REG <first> <last> <national id> <PIN>
    BAL <PIN>
    SEND <phone> <amount> <PIN>
    MINI <PIN>
    PIN <old PIN> <new PIN>
    LANG <en|sw|fr>
    LOAN <amount> <PIN> | REPAY <amount> <PIN> | LOAN STATUS <PIN>
    LOAN <product code> <amount> <PIN>     a compatible extension: that product, not the choice
                                           (HELP writes both LOAN forms as LOAN [product] ...)
    YES <code>                             confirms a pending SEND (when confirmation is on)
    STOP | CANCEL                          ends a dialog (words after it are ignored)

Malformed and unknown text gets a one-line hint in the customer's language (`hint`; the texts
are in `channels.sms.texts`); the keywords are the same in every language.

`REG` with fewer than four words starts the registration dialog (`channels.sms.registration`),
which asks for the same fields one SMS at a time and checks each with `REGISTER_SPEC`.

Keywords are case-insensitive and any run of whitespace separates words. `parse` returns one
command object, or `Malformed` (a known keyword with wrong arguments) or `Unknown`; both carry
a one-line hint. Nothing here checks a PIN against the core or moves money: the executor does
that (wave 2). Amounts stay text: the core's `parse_amount` owns the currency rules.

`mask_secrets` is what gets stored and logged instead of the text: the PIN positions of a
well-formed command (and the national id and confirmation code) become `****`; in anything else
every run of up to 8 digits is masked (a phone number, 9 digits or more, stays), because a
mistyped command still carries a PIN, or part of one. A message that is one word of 4 to 20
letters and digits with a digit in it (the shape of an ID number or a PIN sent alone, as the
registration dialog asks for them) is masked whole. The rule needs no context: the message
store masks an MO when it arrives, before anyone knows whether a dialog is waiting for it.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

from channels.sms.texts import hint_text, text
from core.customers import NAME_MAX

PIN_DIGITS = 4
MASK = "****"
MAX_TEXT_CHARS = 480  # three concatenated SMS; longer is not a command
LANGUAGES = ("en", "sw", "fr")

# Digits are ASCII digits: `\d` also takes other scripts' (full-width, Arabic-Indic), which the
# core compares as they are, so the right PIN typed in them was counted as a wrong one.
_PIN = re.compile(rf"[0-9]{{{PIN_DIGITS}}}")
_PHONE = re.compile(r"\+?[0-9]{9,15}")
_AMOUNT = re.compile(r"[0-9]{1,9}(\.[0-9]{1,2})?")
_NONZERO = re.compile(r"[1-9]")
# One name as the core's registration takes it (core.customers.check_name: letters, joined by
# one apostrophe, dot or hyphen, a dot at the end, at most NAME_MAX characters); a looser rule
# let REG, and the registration dialog after four answers, end in the core's refusal.
_NAME = re.compile(rf"(?=.{{1,{NAME_MAX}}}\Z)[^\W\d_]+(?:['.-][^\W\d_]+)*\.?")
_NATIONAL_ID = re.compile(r"[A-Za-z0-9]{4,20}")
_CODE = re.compile(r"[A-Za-z0-9]{4,8}")
# A loan product's code (core.loans.products.CODE_RE, any case). `LOAN` with three words names
# a product only when the first has a letter: `LOAN 500 1234 5678` (a slip) is malformed
# ("wrong number of words"), not a product "500".
_PRODUCT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{1,31}")
_TOKEN = re.compile(r"\S+")
_DIGIT_RUN = re.compile(r"(?<!\d)\d{1,8}(?!\d)")
_ALONE_SECRET = re.compile(r"\s*(?=[A-Za-z]*\d)[A-Za-z0-9]{4,20}\s*")
_ANY_DIGIT = re.compile(r"\d")  # any script's decimal digit (Unicode category Nd)


@dataclass(frozen=True, slots=True)
class Help:
    pass


@dataclass(frozen=True, slots=True)
class Register:
    first_name: str
    last_name: str
    national_id: str
    pin: str


@dataclass(frozen=True, slots=True)
class Balance:
    pin: str


@dataclass(frozen=True, slots=True)
class Send:
    phone: str
    amount: str
    pin: str


@dataclass(frozen=True, slots=True)
class Mini:
    pin: str


@dataclass(frozen=True, slots=True)
class ChangePin:
    old_pin: str
    new_pin: str


@dataclass(frozen=True, slots=True)
class Language:
    code: str


@dataclass(frozen=True, slots=True)
class Loan:
    amount: str
    pin: str
    product: str | None = None  # `LOAN <product code> <amount> <PIN>`; upper case


@dataclass(frozen=True, slots=True)
class Repay:
    amount: str
    pin: str


@dataclass(frozen=True, slots=True)
class LoanStatus:
    pin: str


@dataclass(frozen=True, slots=True)
class Confirm:
    code: str


@dataclass(frozen=True, slots=True)
class Stop:
    """STOP or CANCEL: end the dialog waiting for this number's next message."""


@dataclass(frozen=True, slots=True)
class Malformed:
    """A known keyword with wrong arguments; `problem` is a stable code, `hint` one line in
    English (`hint(result, language)` gives it in the customer's language)."""

    keyword: str
    problem: str
    hint: str


@dataclass(frozen=True, slots=True)
class Unknown:
    """Not a command: `problem` is "unknown" or "too_long"; `hint` as for Malformed."""

    hint: str
    problem: str = "unknown"


Command = (
    Help
    | Register
    | Balance
    | Send
    | Mini
    | ChangePin
    | Language
    | Loan
    | Repay
    | LoanStatus
    | Confirm
    | Stop
)
ParseResult = Command | Malformed | Unknown

HELP_TEXT = text("help", "en")  # the catalogue's, so the two never drift apart


def _bad(keyword: str, problem: str) -> Malformed:
    return Malformed(keyword, problem, hint_text(keyword, problem, "en"))


def _check(
    keyword: str, args: list[str], spec: tuple[tuple[re.Pattern[str], str], ...]
) -> Malformed | None:
    if len(args) != len(spec):
        return _bad(keyword, "arguments")
    for value, (pattern, problem) in zip(args, spec, strict=True):
        if not pattern.fullmatch(value):
            return _bad(keyword, problem)
        if pattern is _AMOUNT and not _NONZERO.search(value):
            return _bad(keyword, "zero_amount")  # the core refuses it, after the PIN check
    return None


_PIN_ARG = (_PIN, "pin")
_AMOUNT_ARG = (_AMOUNT, "amount")
_NAME_ARG = (_NAME, "name")
_LOAN_WITH_PRODUCT = ((_PRODUCT, "product"), _AMOUNT_ARG, _PIN_ARG)
# REG's words after the keyword; the registration dialog checks its answers against these too.
REGISTER_SPEC = (_NAME_ARG, _NAME_ARG, (_NATIONAL_ID, "national_id"), _PIN_ARG)


def _parse_loan(args: list[str]) -> ParseResult:
    if args and args[0].upper() == "STATUS":
        return _check("LOAN", args[1:], (_PIN_ARG,)) or LoanStatus(args[1])
    if len(args) == len(_LOAN_WITH_PRODUCT) and re.search("[A-Za-z]", args[0]):
        bad = _check("LOAN", args, _LOAN_WITH_PRODUCT)
        return bad or Loan(args[1], args[2], product=args[0].upper())
    return _check("LOAN", args, (_AMOUNT_ARG, _PIN_ARG)) or Loan(args[0], args[1])


def _parse_pin_change(args: list[str]) -> ParseResult:
    bad = _check("PIN", args, (_PIN_ARG, _PIN_ARG))
    if bad:
        return bad
    if args[0] == args[1]:
        return _bad("PIN", "same_pin")
    return ChangePin(args[0], args[1])


def _parse_register(args: list[str]) -> ParseResult:
    return _check("REG", args, REGISTER_SPEC) or Register(
        args[0], args[1], args[2].upper(), args[3]
    )


def starts_registration(text: str) -> bool:
    """`REG` with fewer words than the one-shot form: the start of the registration dialog."""
    words = text.split()
    return bool(words) and words[0].upper() == "REG" and len(words) <= len(REGISTER_SPEC)


def _parse_language(args: list[str]) -> ParseResult:
    if len(args) != 1:
        return _bad("LANG", "arguments")
    code = args[0].lower()
    return Language(code) if code in LANGUAGES else _bad("LANG", "language")


def _one_pin(keyword: str, make: Callable[[str], Command]) -> Parser:
    return lambda args: _check(keyword, args, (_PIN_ARG,)) or make(args[0])


def _parse_send(args: list[str]) -> ParseResult:
    spec = ((_PHONE, "phone"), _AMOUNT_ARG, _PIN_ARG)
    return _check("SEND", args, spec) or Send(args[0], args[1], args[2])


def _parse_repay(args: list[str]) -> ParseResult:
    return _check("REPAY", args, (_AMOUNT_ARG, _PIN_ARG)) or Repay(args[0], args[1])


def _parse_confirm(args: list[str]) -> ParseResult:
    return _check("YES", args, ((_CODE, "code"),)) or Confirm(args[0])


Parser = Callable[[list[str]], ParseResult]
_PARSERS: dict[str, Parser] = {
    "HELP": lambda _args: Help(),
    "BAL": _one_pin("BAL", Balance),
    "MINI": _one_pin("MINI", Mini),
    "SEND": _parse_send,
    "PIN": _parse_pin_change,
    "LANG": _parse_language,
    "LOAN": _parse_loan,
    "REPAY": _parse_repay,
    "REG": _parse_register,
    "YES": _parse_confirm,
    "STOP": lambda _args: Stop(),
    "CANCEL": lambda _args: Stop(),
}


def parse(text: str) -> ParseResult:
    """One SMS text to a command, or a Malformed/Unknown with a one-line hint."""
    if len(text) > MAX_TEXT_CHARS:
        return Unknown(hint_text(None, "too_long", "en"), "too_long")
    words = ascii_digits(text).split()
    parser = _PARSERS.get(words[0].upper()) if words else None
    if parser is None:
        return Unknown(hint_text(None, "unknown", "en"))
    return parser(words[1:])


def ascii_digits(text: str) -> str:
    """`text` with the digits of any script (Arabic-Indic, full-width ...) written as ASCII.
    A phone writes a PIN, a number or an amount in its keyboard's digits. Before, `\\d` took
    them for digits and the core's bcrypt check compared their bytes: the right PIN written in
    Arabic-Indic digits counted as a wrong PIN, and the third locked the wallet."""
    if text.isascii():
        return text
    return _ANY_DIGIT.sub(lambda m: str(unicodedata.decimal(m.group())), text)


def hint(result: Malformed | Unknown, language: str = "en") -> str:
    """The one-line hint in `language` (en, sw, fr; English otherwise)."""
    keyword = result.keyword if isinstance(result, Malformed) else None
    return hint_text(keyword, result.problem, language)


# Word positions (0 = keyword) holding a secret, per well-formed command.
_SECRET_POSITIONS: dict[type, tuple[int, ...]] = {
    Register: (3, 4),
    Balance: (1,),
    Send: (3,),
    Mini: (1,),
    ChangePin: (1, 2),
    Loan: (2,),
    Repay: (2,),
    LoanStatus: (2,),
    Confirm: (1,),
}


def mask_secrets(text: str) -> str:
    """`text` with PINs (and ID numbers, confirmation codes) replaced by `****`."""
    result = parse(text)
    positions = _SECRET_POSITIONS.get(type(result))
    if isinstance(result, Loan) and result.product is not None:
        positions = (3,)
    tokens = list(_TOKEN.finditer(text))
    if isinstance(result, Malformed) and result.keyword == "REG":
        # A REG that does not fit still has the ID number and PIN at their places (an ID of 9
        # digits or more would escape the digit runs); the names keep their digit runs masked.
        positions = tuple(range(_SECRET_POSITIONS[Register][0], len(tokens)))
        return _DIGIT_RUN.sub(MASK, _mask_positions(text, tokens, positions))
    if positions is None:
        if _ALONE_SECRET.fullmatch(text):
            return MASK
        return _DIGIT_RUN.sub(MASK, text)
    return _mask_positions(text, tokens, positions)


def _mask_positions(text: str, tokens: list[re.Match[str]], positions: tuple[int, ...]) -> str:
    out, last = [], 0
    for index in positions:
        match = tokens[index]
        out.append(text[last : match.start()])
        out.append(MASK)
        last = match.end()
    out.append(text[last:])
    return "".join(out)
