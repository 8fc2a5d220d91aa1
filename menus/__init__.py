"""Menus: definitions (schema, loader, validator), the shared session engine that USSD menus,
SMS dialogs and agent devices run on, rendering, and bindings from actions to core calls."""
