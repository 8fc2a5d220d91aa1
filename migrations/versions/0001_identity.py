"""Admin identity (users, roles, permissions) and the append-only audit log.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

PERMISSIONS = {
    "admins:manage": "Create admins and change their roles",
    "audit:read": "Read the audit log",
    "customers:read": "Read customers, wallets and statements",
    "customers:write": "Register, update, lock and unlock customers",
    "deposits:create": "Credit wallets from the bank's settlement account",
    "agents:read": "Read agents, positions and events",
    "agents:write": "Create agents, top up float, issue device credentials",
    "geofences:write": "Create geofences and assign them to agents",
    "loans:read": "Read loan products, applications and the portfolio",
    "loans:manage": "Approve and reject loan applications",
    "loans:products": "Create and change loan products",
    "menus:read": "Read menus and their versions",
    "menus:write": "Draft, validate, publish and roll back menus",
    "ledger:read": "Run the ledger check and read transfers",
    "ledger:reverse": "Reverse transfers",
    "messages:read": "Read SMS messages (PINs masked) and bind states",
}

ROLES = {
    "admin": ("Every permission", True, []),
    "finance": (
        "Money in and out",
        False,
        [
            "deposits:create",
            "customers:read",
            "ledger:read",
            "ledger:reverse",
            "agents:read",
            "agents:write",
        ],
    ),
    "support": (
        "Customer care",
        False,
        ["customers:read", "customers:write", "messages:read", "audit:read", "agents:read"],
    ),
    "loan_officer": ("Loan review", False, ["loans:read", "loans:manage", "customers:read"]),
    "viewer": (
        "Read only",
        False,
        ["customers:read", "agents:read", "loans:read", "menus:read", "ledger:read"],
    ),
}


def upgrade() -> None:
    op.create_table(
        "permissions",
        sa.Column("code", sa.String(64), primary_key=True),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
    )
    op.create_table(
        "roles",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("is_superuser", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.create_table(
        "role_permissions",
        sa.Column(
            "role_id", sa.Integer, sa.ForeignKey("roles.id", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column(
            "permission_code",
            sa.String(64),
            sa.ForeignKey("permissions.code", ondelete="CASCADE"),
            primary_key=True,
        ),
    )
    op.create_table(
        "admin_users",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("username", sa.String(64), nullable=False, unique=True),
        sa.Column("password_hash", sa.Text, nullable=False),
        sa.Column("totp_secret_enc", sa.Text, nullable=False),
        sa.Column("totp_last_step", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("failed_logins", sa.Integer, nullable=False, server_default="0"),
        sa.Column("locked_until", sa.DateTime(timezone=True)),
        sa.Column("is_active", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.CheckConstraint("username = lower(username)", name="admin_users_username_lower"),
    )
    op.create_table(
        "admin_user_roles",
        sa.Column(
            "user_id",
            sa.BigInteger,
            sa.ForeignKey("admin_users.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column(
            "role_id", sa.Integer, sa.ForeignKey("roles.id", ondelete="CASCADE"), primary_key=True
        ),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("actor_type", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(256), nullable=False, server_default=""),
        sa.Column("details", postgresql.JSONB, nullable=False, server_default="{}"),
        sa.CheckConstraint(
            "actor_type IN ('admin', 'channel', 'system', 'customer', 'agent')",
            name="audit_log_actor_type",
        ),
    )
    op.create_index("audit_log_at", "audit_log", ["at"])
    op.execute(
        """
        CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'audit_log is append-only' USING ERRCODE = 'insufficient_privilege';
        END $$;
        """
    )
    op.execute(
        "CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log "
        "FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()"
    )
    perms = sa.table("permissions", sa.column("code", sa.String), sa.column("description", sa.Text))
    op.bulk_insert(perms, [{"code": c, "description": d} for c, d in PERMISSIONS.items()])
    roles = sa.table(
        "roles",
        sa.column("id", sa.Integer),
        sa.column("name", sa.String),
        sa.column("description", sa.Text),
        sa.column("is_superuser", sa.Boolean),
    )
    op.bulk_insert(
        roles,
        [
            {"id": i, "name": name, "description": desc, "is_superuser": sup}
            for i, (name, (desc, sup, _)) in enumerate(ROLES.items(), start=1)
        ],
    )
    op.execute(f"SELECT setval('roles_id_seq', {len(ROLES)})")
    rp = sa.table(
        "role_permissions",
        sa.column("role_id", sa.Integer),
        sa.column("permission_code", sa.String),
    )
    op.bulk_insert(
        rp,
        [
            {"role_id": i, "permission_code": code}
            for i, (_, (_, _, codes)) in enumerate(ROLES.items(), start=1)
            for code in codes
        ],
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS audit_log_no_change ON audit_log")
    op.execute("DROP FUNCTION IF EXISTS audit_log_append_only()")
    op.drop_table("audit_log")
    op.drop_table("admin_user_roles")
    op.drop_table("admin_users")
    op.drop_table("role_permissions")
    op.drop_table("roles")
    op.drop_table("permissions")
