"""Menus, dialogs and the shared state machines (`transitions`) that channels run on."""
