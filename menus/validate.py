"""The menu validator: one line per problem, or none.

It rejects unknown screen types, dangling targets, unreachable screens, dead ends (a continuing
screen with no way on), missing translations, unknown actions (and error codes an action never
raises), loops among screens the user never sees, secret inputs shown on screen, variables with
no source, and any screen that renders over the limit in any language with sample values (its own
text must fit on one page; lists are paginated). Used by `gateway menus validate`, the admin API
and publish.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

from menus.actions import ActionSpec
from menus.compiled import CompiledMenu, Node, Texts, compile_menu
from menus.expr import paths as condition_paths
from menus.render import MAX_PAGES, measure_head, render
from menus.schema import DISPLAYED, Document, parse_document
from menus.validators import SAMPLES

CUSTOMER = "customer"
# Variables the engine itself provides to every screen.
BUILTIN_VARS = {"msisdn": "+254712345678", "language": "en"}
# Error details the core attaches to its errors, available on error screens.
ERROR_DETAIL_SAMPLES = {
    "attempts_left": 2,
    "limit": "daily debits",
    "retry_after_s": 900,
    "reason": "Your account is too new; try again in 30 days",  # a loan rule's refusal
    "owed": "KES 1,000,000.00",  # a loan repayment larger than the loan
}


def validate_data(data: Any, specs: Mapping[str, ActionSpec]) -> list[str]:
    """Every problem with a menu document (parsed YAML or JSON), one line each."""
    return check(data, specs)[1]


def check(
    data: Any, specs: Mapping[str, ActionSpec], version: int = 0
) -> tuple[CompiledMenu | None, list[str]]:
    doc, problems = parse_document(data)
    if doc is None:
        return None, problems
    menu, problems = compile_menu(doc, version)
    if menu is None:
        return None, problems
    problems = semantic_problems(menu, specs)
    return (menu if not problems else None), problems


def semantic_problems(menu: CompiledMenu, specs: Mapping[str, ActionSpec]) -> list[str]:
    doc = menu.doc
    nodes = menu.nodes
    problems: list[str] = []
    problems += _graph_problems(doc, nodes)
    problems += _action_problems(nodes, specs)
    problems += _translation_problems(doc, nodes, menu.messages)
    scope, sources = _sample_scope(menu, specs)
    problems += _variable_problems(menu, specs, sources)
    if not problems:
        problems += _length_problems(menu, scope)
    return problems


def _edges(node: Node) -> list[str]:
    return [t for _, t in node.targets() if t is not None]


def _graph_problems(doc: Document, nodes: Mapping[str, Node]) -> list[str]:
    problems = []
    for field, target in (("start", doc.start), ("home", doc.home)):
        if target is not None and target not in nodes:
            problems.append(f"{field}: no screen {target!r}")
    for node in nodes.values():
        for label, target in node.targets():
            if target is None:
                problems.append(
                    f"screens.{node.id}: dead end: the {node.type} screen has no {label} target"
                )
            elif target not in nodes:
                problems.append(f"screens.{node.id}.{label}: no screen {target!r}")
        if node.type == "menu" and not node.options and node.items_source is None:
            problems.append(f"screens.{node.id}: dead end: the menu has no options")
        if node.type == "router" and node.default is None and not node.routes:
            problems.append(f"screens.{node.id}: dead end: the router has no routes")
    seen = _reachable([doc.start, doc.home_screen], nodes)
    for sid in nodes:
        if sid not in seen:
            problems.append(f"screens.{sid}: unreachable from start")
    problems += _auto_loops(nodes)
    return problems


def _reachable(roots: Iterable[str], nodes: Mapping[str, Node]) -> set[str]:
    seen: set[str] = set()
    queue = deque(r for r in roots if r in nodes)
    while queue:
        sid = queue.popleft()
        if sid in seen:
            continue
        seen.add(sid)
        queue.extend(t for t in _edges(nodes[sid]) if t in nodes and t not in seen)
    return seen


def _auto_loops(nodes: Mapping[str, Node]) -> list[str]:
    """Cycles made only of action and router screens would spin without asking the user."""
    auto = {sid for sid, n in nodes.items() if not n.displayed}
    problems = []
    state: dict[str, int] = {}

    def visit(sid: str, path: list[str]) -> None:
        state[sid] = 1
        for t in _edges(nodes[sid]):
            if t not in auto:
                continue
            if state.get(t) == 1:
                loop = [*path[path.index(t) :], t]
                problems.append(f"screens.{t}: loop without user input: {' -> '.join(loop)}")
            elif t not in state:
                visit(t, [*path, t])
        state[sid] = 2

    for sid in sorted(auto):
        if sid not in state:
            visit(sid, [sid])
    return problems


def _action_problems(nodes: Mapping[str, Node], specs: Mapping[str, ActionSpec]) -> list[str]:
    problems = []
    for node in nodes.values():
        if node.type != "action" or node.action is None:
            continue
        spec = specs.get(node.action)
        if spec is None:
            problems.append(f"screens.{node.id}.action: unknown action {node.action!r}")
            continue
        for code in node.on_error:
            if code != "default" and code not in spec.errors:
                problems.append(
                    f"screens.{node.id}.on_error.{code}: {node.action} never raises {code}"
                )
    return problems


def _texts_of(node: Node) -> list[tuple[str, Texts]]:
    out: list[tuple[str, Texts]] = []
    if node.type in DISPLAYED:
        out.append((f"screens.{node.id}.text", node.text))
    out += [(f"screens.{node.id}.options.{o.index}.label", o.label) for o in node.options]
    if node.error is not None:
        out.append((f"screens.{node.id}.error", node.error))
    return out


def _translation_problems(
    doc: Document, nodes: Mapping[str, Node], messages: Mapping[str, Texts]
) -> list[str]:
    problems = []
    wanted = set(doc.languages)
    groups = [t for node in nodes.values() for t in _texts_of(node)]
    groups += [(f"messages.{key}", texts) for key, texts in messages.items()]
    for where, texts in groups:
        for lang in doc.languages:
            if lang not in texts:
                problems.append(f"{where}: missing translation for {lang!r}")
        if where.startswith("screens."):
            for lang in sorted(set(texts) - wanted):
                problems.append(f"{where}.{lang}: {lang!r} is not one of the menu's languages")
    return problems


def _sample_scope(
    menu: CompiledMenu, specs: Mapping[str, ActionSpec]
) -> tuple[dict[str, Any], dict[str, str]]:
    """Sample values for every variable some screen or action provides, and where each comes
    from ("input", "secret", "action", "detail" ...)."""
    scope: dict[str, Any] = dict(BUILTIN_VARS)
    sources: dict[str, str] = dict.fromkeys(BUILTIN_VARS, "builtin")
    customer: dict[str, Any] = {}
    for key, value in ERROR_DETAIL_SAMPLES.items():
        scope[key] = value
        sources[key] = "detail"
    for node in menu.nodes.values():
        if node.type == "input" and node.save and node.rule is not None:
            scope[node.save] = SAMPLES.get(node.rule.kind, "ABCDEFGHIJ")
            sources[node.save] = "secret" if node.secret else "input"
        if node.type == "menu" and node.save:
            scope[node.save] = "ABCDEFGHIJ"
            scope[f"{node.save}_label"] = "ABCDEFGHIJKLMNOPQRST"
            sources[node.save] = sources[f"{node.save}_label"] = "input"
        spec = specs.get(node.action or "") if node.type == "action" else None
        if spec is not None:
            for key, value in spec.outputs.items():
                scope.setdefault(key, value)
                sources.setdefault(key, "action")
            if spec.customer:
                customer.update(spec.customer)
    for key, value in menu.doc.samples.items():
        scope[key] = value
        sources.setdefault(key, "sample")
    scope[CUSTOMER] = {**customer, **(menu.doc.samples.get(CUSTOMER) or {})}
    sources[CUSTOMER] = "action"
    return scope, sources


def _used_paths(node: Node) -> list[tuple[str, str]]:
    """(where, variable path) for every variable a screen reads."""
    used: list[tuple[str, str]] = []
    for where, texts in _texts_of(node):
        for lang, tpl in texts.items():
            used += [(f"{where}.{lang}", p) for p in tpl.paths]
    for o in node.options:
        if o.when_source:
            where = f"screens.{node.id}.options.{o.index}.when"
            used += [(where, p) for p in condition_paths(o.when_source)]
    for i, (_, _, source) in enumerate(node.routes, start=1):
        used += [(f"screens.{node.id}.routes.{i}.when", p) for p in condition_paths(source)]
    if node.items_source:
        used.append((f"screens.{node.id}.items.source", node.items_source))
    if node.lines:
        used.append((f"screens.{node.id}.lines", node.lines))
    if node.more is not None:
        used += [(f"screens.{node.id}.more.when", p) for p in condition_paths(node.more[2])]
    return used


def _action_inputs(node: Node, spec: ActionSpec, saved: set[str], secrets: set[str]) -> list[str]:
    problems = []
    for var in spec.reads:
        if var not in saved:
            problems.append(f"screens.{node.id}: {spec.name} reads {var!r} but no screen saves it")
    for var in spec.secrets:
        if var not in secrets:
            problems.append(
                f"screens.{node.id}: {spec.name} needs the secret input {var!r}"
                " but no secret input saves it"
            )
    return problems


def _variable_problems(
    menu: CompiledMenu, specs: Mapping[str, ActionSpec], sources: Mapping[str, str]
) -> list[str]:
    problems = []
    saved = {k for k, s in sources.items() if s in {"input", "action", "sample", "builtin"}}
    secrets = {k for k, s in sources.items() if s == "secret"}
    for node in menu.nodes.values():
        for where, path in _used_paths(node):
            root = path.split(".")[0]
            if root in secrets:
                problems.append(f"{where}: {{{path}}} is a secret input and is never shown")
            elif root != CUSTOMER and root not in sources:
                problems.append(f"{where}: no screen, action or sample provides {{{path}}}")
        if node.rule is not None and node.rule.match and node.rule.match not in secrets:
            problems.append(
                f"screens.{node.id}.validate.match: no secret input saves {node.rule.match!r}"
            )
        spec = specs.get(node.action or "") if node.type == "action" else None
        if spec is not None:
            problems += _action_inputs(node, spec, saved, secrets)
    return problems


def _notices(menu: CompiledMenu, node: Node, lang: str) -> list[str | None]:
    if node.type in {"menu", "confirm"}:
        return [None, menu.message("invalid_choice", lang)]
    if node.type == "input":
        texts = node.error
        own = (texts.get(lang) if texts else None) or None
        keys = ["invalid_input", "mismatch", "invalid_pin"] if node.secret else ["invalid_input"]
        notes: list[str | None] = [None, *(menu.message(k, lang) for k in keys)]
        if own is not None:
            notes.append(own.render({}))
        return notes
    return [None]


def _length_problems(menu: CompiledMenu, scope: Mapping[str, Any]) -> list[str]:
    problems = []
    for node in menu.nodes.values():
        if not node.displayed:
            continue
        for lang in menu.languages:
            for notice in _notices(menu, node, lang):
                m = measure_head(menu, node, lang, scope, notice)
                if not m.fits:
                    with_notice = " with its error notice" if notice else ""
                    problems.append(
                        f"screens.{node.id} ({lang}): renders to {m.length} {m.encoding.upper()}"
                        f" characters{with_notice}, over the limit of {m.limit}"
                    )
                    break
            pages = render(menu, node, lang, scope).pages
            if pages >= MAX_PAGES:
                problems.append(
                    f"screens.{node.id} ({lang}): needs {pages} pages, more than {MAX_PAGES - 1}"
                )
    return problems
