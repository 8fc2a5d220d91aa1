"""Admins' password history and single-use reset tokens.

An admin who forgot their password or lost their phone had no way back: a manager could only
deactivate them and make a new account (a new username, a broken audit trail). A manager now
issues a reset token, handed over out of band (admins have no address or number on file), and
the admin sets a new password and gets a new TOTP secret with it (core.credentials).

- `admin_password_history` keeps the hashes an admin's password had before (the current one
  is `admin_users.password_hash`), so a change cannot go back to one of the last five; only
  the newest few are kept.
- `admin_reset_tokens` keeps a SHA-256 of each token, never the token (it is 256 random bits:
  a fast hash is enough and lets the look-up use the unique index). At most one token per
  admin is live (neither used nor revoked): issuing another revokes the one before, and the
  partial unique index refuses a second live one even under a race. Used and revoked rows
  stay, as the record of who reset whom and when. `issued_by_id` is the manager (NULL for the
  CLI): deactivating a manager voids the unused tokens they issued, which they may still hold.

Revision ID: 0800_admin_credentials
Revises: 0790_audit_action_index
"""

from __future__ import annotations

from alembic import op

revision = "0800_admin_credentials"
down_revision = "0790_audit_action_index"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE admin_password_history (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            admin_id bigint NOT NULL REFERENCES admin_users (id) ON DELETE CASCADE,
            password_hash text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("CREATE INDEX admin_password_history_admin ON admin_password_history (admin_id, id)")
    op.execute(
        """
        CREATE TABLE admin_reset_tokens (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            admin_id bigint NOT NULL REFERENCES admin_users (id) ON DELETE CASCADE,
            token_hash text NOT NULL UNIQUE CHECK (token_hash ~ '^[0-9a-f]{64}$'),
            issued_by text NOT NULL CHECK (length(issued_by) BETWEEN 1 AND 128),
            issued_by_id bigint REFERENCES admin_users (id) ON DELETE SET NULL,
            created_at timestamptz NOT NULL,
            expires_at timestamptz NOT NULL,
            used_at timestamptz,
            revoked_at timestamptz,
            CHECK (expires_at > created_at),
            CHECK (used_at IS NULL OR revoked_at IS NULL)
        )
        """
    )
    op.execute(
        "CREATE UNIQUE INDEX admin_reset_tokens_live ON admin_reset_tokens (admin_id) "
        "WHERE used_at IS NULL AND revoked_at IS NULL"
    )
    op.execute(
        "CREATE INDEX admin_reset_tokens_issuer ON admin_reset_tokens (issued_by_id) "
        "WHERE used_at IS NULL AND revoked_at IS NULL"
    )


def downgrade() -> None:
    op.execute("DROP TABLE admin_reset_tokens")
    op.execute("DROP TABLE admin_password_history")
