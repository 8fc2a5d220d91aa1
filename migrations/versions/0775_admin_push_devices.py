"""Admins' phones for push: each admin registers the FCM registration token of the staff app on
their phone, and breach alerts go to the registered phones of the admins who may see agents
(`AGENT_ALERT_RECIPIENTS=devices`), each in its phone's language (NULL: the deployment's
AGENT_ALERT_LANGUAGE). A token FCM reports gone (`UNREGISTERED`) or bound to
another sender is disabled, not sent to again.

A token names one app installation, so it is unique across admins: registered by another admin
(the phone changed hands, someone else signed in on it), it moves to them.

Revision ID: 0775_admin_push_devices
Revises: 0770_queue_autovacuum
"""

from __future__ import annotations

from alembic import op

revision = "0775_admin_push_devices"
down_revision = "0770_queue_autovacuum"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE admin_push_devices (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            admin_id bigint NOT NULL REFERENCES admin_users (id) ON DELETE CASCADE,
            token text NOT NULL UNIQUE CHECK (token ~ '^[!-~]+$' AND length(token) <= 4096),
            platform text NOT NULL CHECK (platform IN ('android', 'ios', 'web')),
            label text NOT NULL DEFAULT '' CHECK (length(label) <= 64),
            language text CHECK (language IN ('en', 'sw', 'fr')),
            created_at timestamptz NOT NULL DEFAULT now(),
            last_seen_at timestamptz NOT NULL DEFAULT now(),
            disabled_at timestamptz,
            disabled_reason text,
            CHECK ((disabled_at IS NULL) = (disabled_reason IS NULL))
        )
        """
    )
    op.execute("CREATE INDEX admin_push_devices_admin ON admin_push_devices (admin_id, id)")


def downgrade() -> None:
    op.execute("DROP TABLE admin_push_devices")
