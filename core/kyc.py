"""KYC documents: the evidence behind a customer's tier, and the rule that a tier above Basic
needs it.

An admin uploads a document (a scan or photo of an ID, a proof of address, a business
registration) for a customer; the bytes must be what they claim to be (JPEG, PNG or PDF by
their first bytes, not by the declared type alone) and are stored encrypted with the field
cipher. A second admin reviews it: accepted or rejected, once, with a note (four eyes: the one
who uploaded a document cannot review it). Uploading the same file again for the same customer
returns the first upload. Every upload, review and read of a document's content is audited.

Raising a customer's tier (`change_tier`) needs accepted documents for what the new tier asks
(`TIER_REQUIREMENTS`); moving down needs nothing. Deployments whose KYC happens elsewhere turn
the check off (`KYC_DOCUMENTS_REQUIRED=false`); the documents can still be kept here.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from core import errors as E
from core.audit import record
from core.crypto import FieldCipher
from core.customers import Customer, get_customer, set_tier
from core.limits import TIERS, normalise_tier
from core.pg import Db, connection

KINDS = ("national_id", "passport", "proof_of_address", "business_registration", "selfie")
CONTENT_TYPES = ("image/jpeg", "image/png", "application/pdf")
DECISIONS = ("accepted", "rejected")
MAX_NOTE = 500
MAX_DOCUMENTS_LISTED = 100

# What a tier needs, as named requirements: each is met by one accepted document of any kind
# in its set.
REQUIREMENTS: dict[str, frozenset[str]] = {
    "identity": frozenset({"national_id", "passport"}),
    "proof_of_address": frozenset({"proof_of_address"}),
    "business_registration": frozenset({"business_registration"}),
}
TIER_REQUIREMENTS: dict[str, tuple[str, ...]] = {
    "Basic": (),
    "Standard": ("identity",),
    "Premium": ("identity", "proof_of_address"),
    "Business": ("identity", "business_registration"),
}

_MAGIC = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"%PDF-", "application/pdf"),
)


class KycDocumentsMissing(E.Conflict):
    code = "KYC_DOCUMENTS_MISSING"


class FourEyes(E.Forbidden):
    code = "FOUR_EYES"


@dataclass(frozen=True, slots=True)
class Document:
    id: int
    msisdn: str
    kind: str
    content_type: str
    size_bytes: int
    sha256: str
    status: str
    uploaded_by: str
    reviewed_by: str | None
    reviewed_at: datetime | None
    review_note: str | None
    created_at: datetime

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "msisdn": self.msisdn,
            "kind": self.kind,
            "content_type": self.content_type,
            "size_bytes": self.size_bytes,
            "sha256": self.sha256,
            "status": self.status,
            "uploaded_by": self.uploaded_by,
            "reviewed_by": self.reviewed_by,
            "reviewed_at": self.reviewed_at.isoformat() if self.reviewed_at else None,
            "review_note": self.review_note,
            "created_at": self.created_at.isoformat(),
        }


_COLUMNS = """d.id, c.msisdn, d.kind, d.content_type, d.size_bytes, d.sha256, d.status,
              d.uploaded_by, d.reviewed_by, d.reviewed_at, d.review_note, d.created_at"""


def _document(row: Any) -> Document:
    return Document(**{k: row[k] for k in Document.__slots__})


def _seal(cipher: FieldCipher, data: bytes) -> tuple[str, bytes]:
    return hashlib.sha256(data).hexdigest(), cipher.encrypt_bytes(data)


def sniff(data: bytes) -> str | None:
    """The content type the bytes themselves show (JPEG, PNG or PDF), or None."""
    for magic, content_type in _MAGIC:
        if data.startswith(magic):
            return content_type
    return None


def check_upload(kind: str, content_type: str, data: bytes, max_bytes: int) -> None:
    """ValidationFailed for anything that is not a document we keep."""
    if kind not in KINDS:
        raise E.ValidationFailed(f"kind is one of {', '.join(KINDS)}", field="kind")
    if content_type not in CONTENT_TYPES:
        raise E.ValidationFailed(
            f"The document must be one of {', '.join(CONTENT_TYPES)}", field="content_type"
        )
    if not data:
        raise E.ValidationFailed("The document is empty", field="body")
    if len(data) > max_bytes:
        raise E.ValidationFailed(
            f"A document is at most {max_bytes} bytes", field="body", max_bytes=max_bytes
        )
    shown = sniff(data)
    if shown != content_type:
        raise E.ValidationFailed(
            f"The bytes are not a {content_type} file"
            + (f" (they look like {shown})" if shown else ""),
            field="body",
        )


async def upload(
    db: Db,
    cipher: FieldCipher,
    msisdn: str,
    *,
    kind: str,
    content_type: str,
    data: bytes,
    actor: str,
    max_bytes: int,
    country_code: str = "254",
) -> tuple[Document, bool]:
    """Keep a document for a customer; (document, created). The same bytes again for the same
    customer return the first upload (created False) whatever kind they were sent as."""
    check_upload(kind, content_type, data, max_bytes)
    customer = await get_customer(db, msisdn, country_code)
    # Hashing and encrypting a few MB takes tens of ms: off the event loop, which USSD
    # sessions share.
    digest, token = await asyncio.to_thread(_seal, cipher, data)
    async with connection(db) as conn, conn.transaction():
        try:
            async with conn.transaction():
                doc_id = await conn.fetchval(
                    """INSERT INTO kyc_documents (customer_id, kind, content_type, size_bytes,
                                                  sha256, content_enc, uploaded_by)
                       VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id""",
                    customer.id,
                    kind,
                    content_type,
                    len(data),
                    digest,
                    token,
                    actor,
                )
        except asyncpg.UniqueViolationError:
            doc_id = await conn.fetchval(
                "SELECT id FROM kyc_documents WHERE customer_id = $1 AND sha256 = $2",
                customer.id,
                digest,
            )
            return await _get(conn, customer, doc_id), False
        await record(
            conn,
            actor_type="admin",
            actor=actor,
            action="kyc.document_uploaded",
            target=customer.msisdn,
            details={"document": doc_id, "kind": kind, "size_bytes": len(data)},
        )
        return await _get(conn, customer, doc_id), True


async def _get(db: Db, customer: Customer, doc_id: int, *, lock: bool = False) -> Document:
    row = await db.fetchrow(
        f"SELECT {_COLUMNS} FROM kyc_documents d JOIN customers c ON c.id = d.customer_id "  # noqa: S608 (constants)
        "WHERE d.id = $1 AND d.customer_id = $2" + (" FOR UPDATE OF d" if lock else ""),
        doc_id,
        customer.id,
    )
    if row is None:
        raise E.NotFound(f"No KYC document {doc_id} for {customer.msisdn}", document=doc_id)
    return _document(row)


async def documents(db: Db, msisdn: str, *, country_code: str = "254") -> list[Document]:
    """A customer's documents, newest first (metadata only)."""
    customer = await get_customer(db, msisdn, country_code)
    rows = await db.fetch(
        f"SELECT {_COLUMNS} FROM kyc_documents d JOIN customers c ON c.id = d.customer_id "  # noqa: S608 (constants)
        "WHERE d.customer_id = $1 ORDER BY d.id DESC LIMIT $2",
        customer.id,
        MAX_DOCUMENTS_LISTED,
    )
    return [_document(r) for r in rows]


async def content(
    db: Db, cipher: FieldCipher, msisdn: str, doc_id: int, *, actor: str, country_code: str = "254"
) -> tuple[Document, bytes]:
    """A document and its bytes; every read is audited (it is a copy of someone's ID)."""
    customer = await get_customer(db, msisdn, country_code)
    doc = await _get(db, customer, doc_id)
    token = await db.fetchval("SELECT content_enc FROM kyc_documents WHERE id = $1", doc_id)
    await record(
        db,
        actor_type="admin",
        actor=actor,
        action="kyc.document_viewed",
        target=customer.msisdn,
        details={"document": doc_id},
    )
    return doc, await asyncio.to_thread(cipher.decrypt_bytes, bytes(token))


async def review(
    db: Db,
    msisdn: str,
    doc_id: int,
    *,
    decision: str,
    note: str | None,
    actor: str,
    country_code: str = "254",
) -> Document:
    """Accept or reject a pending document, once. The uploader cannot review it (FourEyes);
    a document already reviewed is a Conflict that names the decision and who made it."""
    if decision not in DECISIONS:
        raise E.ValidationFailed("decision is accepted or rejected", field="decision")
    if note is not None and len(note) > MAX_NOTE:
        raise E.ValidationFailed(f"note is at most {MAX_NOTE} characters", field="note")
    customer = await get_customer(db, msisdn, country_code)
    async with connection(db) as conn, conn.transaction():
        doc = await _get(conn, customer, doc_id, lock=True)
        if doc.status != "pending":
            raise E.Conflict(
                f"Document {doc_id} was already {doc.status} by {doc.reviewed_by}",
                status=doc.status,
                reviewed_by=doc.reviewed_by,
            )
        if doc.uploaded_by == actor:
            raise FourEyes("A document is reviewed by someone other than who uploaded it")
        await conn.execute(
            """UPDATE kyc_documents SET status = $2, reviewed_by = $3, reviewed_at = now(),
                   review_note = $4 WHERE id = $1""",
            doc_id,
            decision,
            actor,
            note,
        )
        await record(
            conn,
            actor_type="admin",
            actor=actor,
            action=f"kyc.document_{decision}",
            target=customer.msisdn,
            details={"document": doc_id, "kind": doc.kind},
        )
        return await _get(conn, customer, doc_id)


async def missing_for(db: Db, customer: Customer, tier: str) -> list[str]:
    """The requirements of `tier` that the customer's accepted documents do not meet."""
    needed = TIER_REQUIREMENTS[tier]
    if not needed:
        return []
    kinds = {
        r["kind"]
        for r in await db.fetch(
            "SELECT DISTINCT kind FROM kyc_documents WHERE customer_id = $1 "
            "AND status = 'accepted'",
            customer.id,
        )
    }
    return [name for name in needed if not REQUIREMENTS[name] & kinds]


async def change_tier(
    db: Db,
    msisdn: str,
    tier: str,
    *,
    actor: str,
    require_documents: bool = True,
    country_code: str = "254",
) -> Customer:
    """An admin's tier change: raising it needs the new tier's accepted documents
    (KycDocumentsMissing names what is missing); moving down or sideways needs nothing."""
    new_tier = normalise_tier(tier)
    customer = await get_customer(db, msisdn, country_code)
    if require_documents and TIERS.index(new_tier) > TIERS.index(customer.tier):
        missing = await missing_for(db, customer, new_tier)
        if missing:
            raise KycDocumentsMissing(
                f"Tier {new_tier} needs accepted documents for: {', '.join(missing)}",
                tier=new_tier,
                missing=missing,
            )
    return await set_tier(db, customer.msisdn, new_tier, actor=actor, country_code=country_code)
