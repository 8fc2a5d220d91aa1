"""`gateway menus validate FILE...` and `gateway simulate ussd --msisdn M [--code C] [--url U]`.

`menus validate` checks menu files against the action catalogue without touching any server or
database: one line per problem (`FILE: problem`), exit 1 when there is any.

`simulate ussd` is an interactive session against a running gateway, in Africa's Talking's
format: it prints each screen, reads your answer from the terminal (or stdin), and stops at an
END screen or end of input. When `USSD_AFRICASTALKING_SECRET` is set it sends it, like the
aggregator would.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from config.settings import Settings

HTTP_TIMEOUT_S = 20.0


def cmd_menus_validate(args: argparse.Namespace, settings: Settings) -> int:
    from menus.catalogue import CATALOGUE
    from menus.loader import load_file
    from menus.validate import validate_data

    failed = False
    for name in args.files:
        data, problems = load_file(Path(name))
        if not problems:
            problems = validate_data(data, CATALOGUE)
        for problem in problems:
            print(f"{name}: {problem}")
        if problems:
            failed = True
        else:
            print(f"{name}: ok")
    return 1 if failed else 0


def _post(url: str, form: dict[str, str], secret: str | None) -> tuple[int, str]:
    data = urllib.parse.urlencode(form).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if secret:
        headers["X-Ussd-Secret"] = secret
    request = urllib.request.Request(url, data=data, headers=headers, method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as resp:  # noqa: S310
            return resp.status, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


def _error_line(status: int, body: str) -> str:
    try:
        message = json.loads(body).get("message", body)
    except ValueError:
        message = body
    return f"gateway: HTTP {status}: {str(message)[:200]}"


def cmd_simulate_ussd(args: argparse.Namespace, settings: Settings) -> int:
    base = (args.url or f"http://{settings.host}:{settings.port}").rstrip("/")
    url = f"{base}/ussd/africastalking"
    secret = settings.ussd_provider("africastalking").secret
    session = f"SIM_{secrets.token_hex(8)}"
    inputs: list[str] = []
    interactive = sys.stdin.isatty()
    while True:
        form = {
            "sessionId": session,
            "serviceCode": args.code or settings.ussd_service_code,
            "phoneNumber": args.msisdn,
            "networkCode": "63902",
            "text": "*".join(inputs),
        }
        try:
            status, body = _post(url, form, secret)
        except OSError as exc:
            print(f"gateway: cannot reach {url}: {exc}", file=sys.stderr)
            return 1
        if status != 200:
            print(_error_line(status, body), file=sys.stderr)
            return 1
        kind, _, screen = body.partition(" ")
        print(screen)
        if kind != "CON":
            return 0
        if interactive:
            print("> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line:
            return 0
        inputs.append(line.strip())
        if not interactive:
            print(f"> {inputs[-1]}")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    menus = sub.add_parser("menus", help="menu documents")
    menus_sub = menus.add_subparsers(dest="menus_command", required=True)
    validate = menus_sub.add_parser("validate", help="check menu files; one line per problem")
    validate.add_argument("files", nargs="+", metavar="FILE")
    validate.set_defaults(func=cmd_menus_validate)

    simulate = sub.add_parser("simulate", help="simulate a channel against a running gateway")
    simulate_sub = simulate.add_subparsers(dest="simulate_command", required=True)
    ussd = simulate_sub.add_parser("ussd", help="an interactive USSD session (Africa's Talking)")
    ussd.add_argument("--msisdn", required=True)
    ussd.add_argument("--code", help="the service code dialled (default USSD_SERVICE_CODE)")
    ussd.add_argument("--url", help="the gateway (default http://GATEWAY_HOST:GATEWAY_PORT)")
    ussd.set_defaults(func=cmd_simulate_ussd)
