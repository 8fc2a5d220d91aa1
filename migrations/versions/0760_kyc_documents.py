"""KYC documents: the evidence behind a tier (an ID, a proof of address, a business
registration), stored encrypted, each reviewed by a second admin; and the `kyc:review`
permission (support) that accepts or rejects them.

The file is kept in the database (Fernet-encrypted bytea, at most a few MB) so it is backed up,
replicated and access-controlled with the customer it belongs to; `sha256` of the clear bytes
makes a second upload of the same file return the first.

Revision ID: 0760_kyc_documents
Revises: 0740_agent_language
"""

from __future__ import annotations

from alembic import op

revision = "0760_kyc_documents"
down_revision = "0740_agent_language"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE kyc_documents (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            customer_id bigint NOT NULL REFERENCES customers (id) ON DELETE RESTRICT,
            kind text NOT NULL CHECK (kind IN ('national_id', 'passport', 'proof_of_address',
                                               'business_registration', 'selfie')),
            content_type text NOT NULL
                CHECK (content_type IN ('image/jpeg', 'image/png', 'application/pdf')),
            size_bytes integer NOT NULL CHECK (size_bytes > 0),
            sha256 text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
            content_enc bytea NOT NULL,
            status text NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'accepted', 'rejected')),
            uploaded_by text NOT NULL,
            reviewed_by text,
            reviewed_at timestamptz,
            review_note text CHECK (length(review_note) <= 500),
            created_at timestamptz NOT NULL DEFAULT now(),
            UNIQUE (customer_id, sha256),
            CHECK ((status = 'pending') = (reviewed_by IS NULL)),
            CHECK (reviewed_by IS NULL OR reviewed_by <> uploaded_by)
        )
        """
    )
    op.execute("CREATE INDEX kyc_documents_customer ON kyc_documents (customer_id, id DESC)")
    op.execute(
        "INSERT INTO permissions (code, description) VALUES "
        "('kyc:review', 'Accept or reject KYC documents (not ones you uploaded)')"
    )
    op.execute(
        "INSERT INTO role_permissions (role_id, permission_code) "
        "SELECT id, 'kyc:review' FROM roles WHERE name = 'support'"
    )


def downgrade() -> None:
    op.execute("DELETE FROM permissions WHERE code = 'kyc:review'")
    op.execute("DROP TABLE kyc_documents")
