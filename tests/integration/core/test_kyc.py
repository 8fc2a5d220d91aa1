"""KYC documents over real HTTP and PostgreSQL: upload (the file as the body), the same file
twice, four-eyes review, the tier rule, the audited download, encryption at rest, concurrent
reviews, and every way an upload or a review can be wrong (nothing stored)."""

from __future__ import annotations

import asyncio
import io
import secrets
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from config.settings import Settings
from core import kyc
from core.crypto import FieldCipher
from core.customers import get_customer
from tests.helpers import assert_error, auth, token_for
from tests.integration.core.conftest import make_customer

JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + secrets.token_bytes(2_000)
PDF = b"%PDF-1.7\n" + secrets.token_bytes(3_000)
PNG = b"\x89PNG\r\n\x1a\n" + secrets.token_bytes(1_000)


def docs_url(msisdn: str) -> str:
    return f"/api/v1/customers/{msisdn}/kyc-documents"


async def upload(
    client: TestClient,
    token: str,
    msisdn: str,
    data: Any,
    *,
    kind: str = "national_id",
    content_type: str = "image/jpeg",
) -> tuple[int, dict]:  # type: ignore[type-arg]
    resp = await client.post(
        docs_url(msisdn),
        params={"kind": kind},
        data=data,
        headers={**auth(token), "Content-Type": content_type},
    )
    return resp.status, await resp.json()


async def review(
    client: TestClient, token: str, msisdn: str, doc_id: int, decision: str, *, note: str = ""
) -> tuple[int, dict]:  # type: ignore[type-arg]
    resp = await client.post(
        f"{docs_url(msisdn)}/{doc_id}/review",
        json={"decision": decision, **({"note": note} if note else {})},
        headers=auth(token),
    )
    return resp.status, await resp.json()


async def set_tier(client: TestClient, token: str, msisdn: str, tier: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    resp = await client.put(
        f"/api/v1/customers/{msisdn}/tier", json={"tier": tier}, headers=auth(token)
    )
    return resp.status, await resp.json()


async def stored(db: asyncpg.Pool, msisdn: str) -> int:
    return int(
        await db.fetchval(
            "SELECT count(*) FROM kyc_documents d JOIN customers c ON c.id = d.customer_id "
            "WHERE c.msisdn = $1",
            msisdn,
        )
    )


async def test_documents_raise_the_tier_after_a_second_admin_accepts_them(
    app_client: TestClient, core_db: asyncpg.Pool, cipher: FieldCipher
) -> None:
    msisdn = await make_customer(core_db, cipher)
    clerk, checker = await token_for(app_client, "support"), await token_for(app_client, "support")

    status, body = await set_tier(app_client, clerk, msisdn, "Standard")
    assert (status, body["error_code"], body["details"]["missing"]) == (
        409,
        "KYC_DOCUMENTS_MISSING",
        ["identity"],
    )

    status, doc = await upload(app_client, clerk, msisdn, JPEG)
    assert status == 201, doc
    assert (doc["kind"], doc["content_type"], doc["size_bytes"], doc["status"]) == (
        "national_id",
        "image/jpeg",
        len(JPEG),
        "pending",
    )
    status, again = await upload(app_client, clerk, msisdn, JPEG, kind="passport")
    assert (status, again["id"], again["kind"]) == (200, doc["id"], "national_id")

    # A pending document does not count; its uploader cannot accept it.
    assert (await set_tier(app_client, clerk, msisdn, "Standard"))[0] == 409
    status, body = await review(app_client, clerk, msisdn, doc["id"], "accepted")
    assert (status, body["error_code"]) == (403, "FOUR_EYES")
    status, accepted = await review(
        app_client, checker, msisdn, doc["id"], "accepted", note="clear"
    )
    assert status == 200, accepted
    assert (accepted["status"], accepted["review_note"]) == ("accepted", "clear")
    status, body = await review(app_client, checker, msisdn, doc["id"], "rejected")
    assert (status, body["error_code"], body["details"]["status"]) == (409, "CONFLICT", "accepted")

    status, body = await set_tier(app_client, clerk, msisdn, "Standard")
    assert (status, body["tier"]) == (200, "Standard")
    status, body = await set_tier(app_client, clerk, msisdn, "Premium")
    assert (status, body["details"]["missing"]) == (409, ["proof_of_address"])

    # A rejected proof of address does not count either; an accepted one does.
    _, bill = await upload(
        app_client, clerk, msisdn, PDF, kind="proof_of_address", content_type="application/pdf"
    )
    status, rejected = await review(
        app_client, checker, msisdn, bill["id"], "rejected", note="blurry"
    )
    assert (status, rejected["status"]) == (200, "rejected")
    assert (await set_tier(app_client, clerk, msisdn, "Premium"))[0] == 409
    _, bill2 = await upload(
        app_client,
        clerk,
        msisdn,
        PDF + b"rescan",
        kind="proof_of_address",
        content_type="application/pdf",
    )
    assert (await review(app_client, checker, msisdn, bill2["id"], "accepted"))[0] == 200
    status, body = await set_tier(app_client, clerk, msisdn, "Premium")
    assert (status, body["tier"]) == (200, "Premium")
    # Down needs nothing.
    assert (await set_tier(app_client, clerk, msisdn, "Basic"))[1]["tier"] == "Basic"

    listed = await app_client.get(docs_url(msisdn), headers=auth(clerk))
    assert [d["id"] for d in (await listed.json())["documents"]] == [
        bill2["id"],
        bill["id"],
        doc["id"],
    ]
    actions = [
        r["action"]
        for r in await core_db.fetch(
            "SELECT action FROM audit_log WHERE target = $1 AND action LIKE 'kyc.%' ORDER BY id",
            msisdn,
        )
    ]
    assert actions == [
        "kyc.document_uploaded",
        "kyc.document_accepted",
        "kyc.document_uploaded",
        "kyc.document_rejected",
        "kyc.document_uploaded",
        "kyc.document_accepted",
    ]


async def test_the_file_comes_back_as_uploaded_audited_and_is_encrypted_at_rest(
    app_client: TestClient, core_db: asyncpg.Pool, cipher: FieldCipher
) -> None:
    msisdn = await make_customer(core_db, cipher)
    clerk, viewer = await token_for(app_client, "support"), await token_for(app_client, "viewer")
    _, doc = await upload(app_client, clerk, msisdn, PNG, kind="selfie", content_type="image/png")

    resp = await app_client.get(f"{docs_url(msisdn)}/{doc['id']}/content", headers=auth(viewer))
    assert resp.status == 200
    assert await resp.read() == PNG
    assert resp.content_type == "image/png"
    assert (
        resp.headers["Content-Disposition"] == f'attachment; filename="kyc-{doc["id"]}-selfie.png"'
    )
    assert resp.headers["Cache-Control"] == "no-store"
    viewed = await core_db.fetchval(
        "SELECT count(*) FROM audit_log WHERE target = $1 AND action = 'kyc.document_viewed'",
        msisdn,
    )
    assert viewed == 1

    row = await core_db.fetchrow(
        "SELECT content_enc, sha256 FROM kyc_documents WHERE id = $1", doc["id"]
    )
    assert PNG[8:40] not in bytes(row["content_enc"])
    assert cipher.decrypt_bytes(bytes(row["content_enc"])) == PNG
    assert row["sha256"] == doc["sha256"] and len(doc["sha256"]) == 64

    # Read-only staff can look, not upload or review.
    assert (await upload(app_client, viewer, msisdn, JPEG))[0] == 403
    assert (await review(app_client, viewer, msisdn, doc["id"], "accepted"))[0] == 403


async def test_bad_uploads_are_refused_and_store_nothing(
    app_client: TestClient, core_db: asyncpg.Pool, cipher: FieldCipher, settings: Settings
) -> None:
    msisdn = await make_customer(core_db, cipher)
    clerk = await token_for(app_client, "support")
    cases = [
        (
            {"kind": "national_id", "content_type": "text/plain"},
            JPEG,
            415,
            "UNSUPPORTED_MEDIA_TYPE",
        ),
        (
            {"kind": "national_id", "content_type": "application/json"},
            b"{}",
            415,
            "UNSUPPORTED_MEDIA_TYPE",
        ),
        ({"kind": "driving_licence"}, JPEG, 422, "VALIDATION_ERROR"),
        ({"kind": ""}, JPEG, 422, "VALIDATION_ERROR"),
        ({"kind": "national_id"}, b"", 422, "VALIDATION_ERROR"),
        ({"kind": "national_id"}, PNG, 422, "VALIDATION_ERROR"),  # declared JPEG, bytes PNG
        ({"kind": "national_id"}, b"MZ\x90\x00" + JPEG, 422, "VALIDATION_ERROR"),
        ({"kind": "national_id", "content_type": "application/pdf"}, JPEG, 422, "VALIDATION_ERROR"),
    ]
    for options, data, status, code in cases:
        got, body = await upload(app_client, clerk, msisdn, data, **options)
        assert (got, body["error_code"]) == (status, code), (options, body)
    _, body = await upload(app_client, clerk, msisdn, PNG)
    assert "look like image/png" in body["message"]

    # One byte too many: refused on its Content-Length, and sent chunked (no length) while
    # it streams in.
    limit = settings.kyc_max_document_bytes
    too_big = JPEG[:4] + b"\x00" * (limit - 3)  # limit + 1 bytes
    got, body = await upload(app_client, clerk, msisdn, io.BytesIO(too_big))
    assert (got, body["error_code"]) == (413, "PAYLOAD_TOO_LARGE")

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(too_big), 256 * 1024):
            yield too_big[start : start + 256 * 1024]

    got, body = await upload(app_client, clerk, msisdn, chunks())
    assert (got, body["error_code"]) == (413, "PAYLOAD_TOO_LARGE")
    # Exactly the limit is taken (and is then the only stored document).
    got, body = await upload(app_client, clerk, msisdn, io.BytesIO(too_big[:-1]))
    assert got == 201, body
    assert body["size_bytes"] == limit
    await core_db.execute("DELETE FROM kyc_documents WHERE id = $1", body["id"])

    got, body = await upload(app_client, clerk, "+254799999999", JPEG)
    assert (got, body["error_code"]) == (404, "CUSTOMER_NOT_FOUND")
    assert await stored(core_db, msisdn) == 0


async def test_bad_reviews_are_refused_and_change_nothing(
    app_client: TestClient, core_db: asyncpg.Pool, cipher: FieldCipher
) -> None:
    msisdn, other = await make_customer(core_db, cipher), await make_customer(core_db, cipher)
    clerk, checker = await token_for(app_client, "support"), await token_for(app_client, "support")
    finance = await token_for(app_client, "finance")
    _, doc = await upload(app_client, clerk, msisdn, JPEG)
    url = f"{docs_url(msisdn)}/{doc['id']}/review"
    for body, status, code in (
        ({"decision": "maybe"}, 422, "VALIDATION_ERROR"),
        ({"decision": "accepted", "note": "x" * 501}, 422, "VALIDATION_ERROR"),
        ({"decision": "accepted", "extra": 1}, 422, "VALIDATION_ERROR"),
        ({}, 422, "VALIDATION_ERROR"),
    ):
        resp = await app_client.post(url, json=body, headers=auth(checker))
        await assert_error(resp, status, code)
    resp = await app_client.post(url, data="accepted", headers=auth(checker))
    await assert_error(resp, 400, "INVALID_CONTENT_TYPE")
    assert (await review(app_client, finance, msisdn, doc["id"], "accepted"))[0] == 403
    # The document exists, but not for this customer; ids that are not ids.
    status, body = await review(app_client, checker, other, doc["id"], "accepted")
    assert (status, body["error_code"]) == (404, "NOT_FOUND")
    for raw in ("abc", "1" * 30, "-1"):
        resp = await app_client.post(
            f"{docs_url(msisdn)}/{raw}/review", json={"decision": "accepted"}, headers=auth(checker)
        )
        await assert_error(resp, 404)
        resp = await app_client.get(f"{docs_url(msisdn)}/{raw}/content", headers=auth(checker))
        await assert_error(resp, 404)
    resp = await app_client.get(f"{docs_url(other)}/{doc['id']}/content", headers=auth(checker))
    await assert_error(resp, 404, "NOT_FOUND")
    row = await core_db.fetchrow(
        "SELECT status, reviewed_by FROM kyc_documents WHERE id = $1", doc["id"]
    )
    assert (row["status"], row["reviewed_by"]) == ("pending", None)


async def test_two_reviewers_at_once_one_decision(
    core_db: asyncpg.Pool, cipher: FieldCipher
) -> None:
    msisdn = await make_customer(core_db, cipher)
    doc, _ = await kyc.upload(
        core_db,
        cipher,
        msisdn,
        kind="passport",
        content_type="application/pdf",
        data=PDF,
        actor="clerk",
        max_bytes=10**6,
    )
    results = await asyncio.gather(
        kyc.review(core_db, msisdn, doc.id, decision="accepted", note=None, actor="ann"),
        kyc.review(core_db, msisdn, doc.id, decision="rejected", note=None, actor="bob"),
        return_exceptions=True,
    )
    done = [r for r in results if isinstance(r, kyc.Document)]
    refused = [r for r in results if isinstance(r, Exception)]
    assert len(done) == 1 and len(refused) == 1
    assert getattr(refused[0], "error_code", None) == "CONFLICT"
    row = await core_db.fetchrow(
        "SELECT status, reviewed_by FROM kyc_documents WHERE id = $1", doc.id
    )
    assert (row["status"], row["reviewed_by"]) == (done[0].status, done[0].reviewed_by)


async def test_the_rule_can_be_turned_off_for_kyc_done_elsewhere(
    core_db: asyncpg.Pool, cipher: FieldCipher
) -> None:
    msisdn = await make_customer(core_db, cipher)
    with pytest.raises(kyc.KycDocumentsMissing):
        await kyc.change_tier(core_db, msisdn, "Business", actor="ann")
    changed = await kyc.change_tier(
        core_db, msisdn, "Business", actor="ann", require_documents=False
    )
    assert changed.tier == "Business" == (await get_customer(core_db, msisdn)).tier
