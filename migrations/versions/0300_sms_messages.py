"""SMS message store: MO and MT messages (PINs masked), MO de-duplication, concatenated-MO parts
waiting for their siblings, and the SMSC message ids of MT parts for delivery receipts.

Revision ID: 0300_sms_messages
Revises: 0200_menus
"""

from __future__ import annotations

from alembic import op

revision = "0300_sms_messages"
down_revision = "0200_menus"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE sms_messages (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            direction text NOT NULL CHECK (direction IN ('mo', 'mt')),
            smsc text NOT NULL DEFAULT '',
            msisdn text NOT NULL,
            short_code text NOT NULL DEFAULT '',
            body text NOT NULL DEFAULT '',
            encoding text NOT NULL DEFAULT '',
            parts smallint NOT NULL DEFAULT 1 CHECK (parts BETWEEN 1 AND 255),
            complete boolean NOT NULL DEFAULT true,
            status text NOT NULL,
            error text,
            ref text,
            dedupe_key text,
            concat_ref integer,
            body_enc text,
            attempts integer NOT NULL DEFAULT 0,
            lease_until timestamptz,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT sms_messages_status CHECK (
                (direction = 'mo' AND status IN ('received', 'processing', 'processed', 'failed'))
                OR (direction = 'mt'
                    AND status IN ('queued', 'submitted', 'delivered', 'failed', 'expired'))
            )
        )
        """
    )
    op.execute(
        "CREATE UNIQUE INDEX sms_messages_mt_ref ON sms_messages (ref) "
        "WHERE direction = 'mt' AND ref IS NOT NULL"
    )
    op.execute("CREATE INDEX sms_messages_msisdn ON sms_messages (msisdn, id DESC)")
    op.execute(
        "CREATE INDEX sms_messages_mo_pending ON sms_messages (lease_until) "
        "WHERE direction = 'mo' AND status IN ('received', 'processing')"
    )
    op.execute(
        """
        CREATE TABLE sms_mo_seen (
            dedupe_key text PRIMARY KEY,
            seen_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("CREATE INDEX sms_mo_seen_at ON sms_mo_seen (seen_at)")
    op.execute(
        """
        CREATE TABLE sms_mo_parts (
            group_key text NOT NULL,
            seq smallint NOT NULL,
            total smallint NOT NULL CHECK (total BETWEEN 2 AND 255),
            smsc text NOT NULL,
            msisdn text NOT NULL,
            short_code text NOT NULL,
            data_coding smallint NOT NULL,
            payload_enc text NOT NULL,
            received_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (group_key, seq),
            CHECK (seq BETWEEN 1 AND total)
        )
        """
    )
    op.execute("CREATE INDEX sms_mo_parts_received ON sms_mo_parts (received_at)")
    # One row per submitted MT part, keyed by the SMSC's message id. A receipt that arrives
    # before its submit is recorded makes a row with mt_id NULL, which the submit then claims.
    op.execute(
        """
        CREATE TABLE sms_mt_parts (
            smsc text NOT NULL,
            message_key text NOT NULL,
            message_id text NOT NULL,
            mt_id bigint REFERENCES sms_messages (id) ON DELETE CASCADE,
            part_no smallint,
            status text NOT NULL DEFAULT 'submitted'
                CHECK (status IN ('submitted', 'delivered', 'failed', 'expired')),
            error text,
            updated_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (smsc, message_key)
        )
        """
    )
    op.execute("CREATE INDEX sms_mt_parts_mt ON sms_mt_parts (mt_id)")
    op.execute("CREATE INDEX sms_mt_parts_orphans ON sms_mt_parts (updated_at) WHERE mt_id IS NULL")


def downgrade() -> None:
    op.execute("DROP TABLE sms_mt_parts")
    op.execute("DROP TABLE sms_mo_parts")
    op.execute("DROP TABLE sms_mo_seen")
    op.execute("DROP TABLE sms_messages")
