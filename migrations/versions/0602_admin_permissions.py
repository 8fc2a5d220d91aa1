"""Permissions for the admin routes added with the banking core's wave 3: replaying
dead-lettered outbox messages (support) and changing KYC tier limits and tariffs (finance).
Reading dead letters needs `messages:read`, reading limits and tariffs `ledger:read`, closing a
customer `customers:write` (existing permissions).

Revision ID: 0602_admin_permissions
Revises: 0601_outbox_dedupe_key
"""

from __future__ import annotations

from alembic import op

revision = "0602_admin_permissions"
down_revision = "0601_outbox_dedupe_key"
branch_labels = None
depends_on = None

PERMISSIONS = {
    "messages:replay": ("Send dead-lettered outbox messages again", ("support",)),
    "pricing:write": ("Change KYC tier limits and tariffs", ("finance",)),
}


def upgrade() -> None:
    for code, (description, roles) in PERMISSIONS.items():
        op.execute(
            f"INSERT INTO permissions (code, description) VALUES ('{code}', '{description}')"  # noqa: S608 (constants)
        )
        for role in roles:
            op.execute(
                "INSERT INTO role_permissions (role_id, permission_code) "  # noqa: S608 (constants)
                f"SELECT id, '{code}' FROM roles WHERE name = '{role}'"
            )


def downgrade() -> None:
    for code in PERMISSIONS:
        op.execute(f"DELETE FROM permissions WHERE code = '{code}'")  # noqa: S608 (constants)
