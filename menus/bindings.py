"""Where menu actions meet the banking core: `bind(bindings, ...)` puts one implementation per
catalogued action (`menus.catalogue`) and the late-result notifier into `MenuBindings`.

Each implementation is a small adapter: read `ctx.vars` / `ctx.secrets`, call the core function
with `ctx.idempotency_key` for money, return an `ActionResult` whose `vars` carry the outputs the
catalogue lists (display strings such as "KES 1,234.00"), and let the core's typed errors
propagate (their `error_code` picks the menu's error screen). See `menus.actions`.

Until the core lands nothing is bound: menus still validate and publish (against the catalogue),
and an action screen answers "temporarily unavailable".
"""

from __future__ import annotations

from typing import Any

from menus.actions import MenuBindings


def bind(bindings: MenuBindings, **resources: Any) -> None:
    """Bind the core implementations. `resources` are what they need from the composition root
    (`pool`, `cipher`, `settings`)."""
    del bindings, resources  # the core binding is written when the core is merged
