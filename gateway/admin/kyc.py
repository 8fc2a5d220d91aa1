"""`/api/v1/customers/{msisdn}/kyc-documents`: the documents behind a customer's KYC tier.

Upload is the file itself as the body (`Content-Type: image/jpeg`, `image/png` or
`application/pdf`, `?kind=national_id`), so `curl --data-binary @id.jpg` does it; the body is
read in chunks up to `KYC_MAX_DOCUMENT_BYTES` (413 past it), independently of the JSON body
limit. A second admin with `kyc:review` accepts or rejects it; reading a document's content
needs `customers:read` and is audited.
"""

from __future__ import annotations

from typing import Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from channels.http_body import read_within
from core import errors as E
from core import kyc
from gateway.admin.customers import path_msisdn
from gateway.api import ApiRoutes, HttpError, json_response, whole_number
from gateway.keys import CIPHER, PG_POOL, PRINCIPAL_KEY, SETTINGS

routes = ApiRoutes(tag="customers")
CHUNK = 64 * 1024


class DocumentOut(BaseModel):
    id: int
    msisdn: str
    kind: str
    content_type: str
    size_bytes: int
    sha256: str
    status: Literal["pending", "accepted", "rejected"]
    uploaded_by: str
    reviewed_by: str | None
    reviewed_at: str | None
    review_note: str | None
    created_at: str


class DocumentsOut(BaseModel):
    documents: list[DocumentOut]


class ReviewIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    decision: Literal["accepted", "rejected"]
    note: str | None = Field(default=None, max_length=kyc.MAX_NOTE)


def _doc_id(request: web.Request) -> int:
    raw = request.match_info["id"]
    doc_id = whole_number(raw)
    if doc_id is None:
        raise E.NotFound(f"No KYC document {raw[:32]!r}")
    return doc_id


async def _read_file(request: web.Request, max_bytes: int) -> bytes:
    """The body, refused with 413 as soon as it passes `max_bytes` (before reading it all)."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise HttpError(413, "PAYLOAD_TOO_LARGE", f"A document is at most {max_bytes} bytes")
    chunks, size = [], 0
    while chunk := await read_within(request.content.read(CHUNK)):
        size += len(chunk)
        if size > max_bytes:
            raise HttpError(413, "PAYLOAD_TOO_LARGE", f"A document is at most {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


@routes.post(
    "/api/v1/customers/{msisdn}/kyc-documents",
    response=DocumentOut,
    status=201,
    permission="customers:write",
    summary="Upload a KYC document: the file as the body (image/jpeg, image/png or "
    "application/pdf); 201 when new, 200 with the first upload when the same file was sent before",
    query=(("kind", f"one of {', '.join(kyc.KINDS)}"),),
    files=kyc.CONTENT_TYPES,
)
async def upload_document(request: web.Request) -> web.StreamResponse:
    content_type = request.content_type
    if content_type not in kyc.CONTENT_TYPES:
        raise HttpError(
            415,
            "UNSUPPORTED_MEDIA_TYPE",
            f"A document is sent as one of {', '.join(kyc.CONTENT_TYPES)}",
        )
    kind = request.query.get("kind", "")
    if kind not in kyc.KINDS:
        raise E.ValidationFailed(f"kind is one of {', '.join(kyc.KINDS)}", field="kind")
    settings = request.app[SETTINGS]
    data = await _read_file(request, settings.kyc_max_document_bytes)
    doc, created = await kyc.upload(
        request.app[PG_POOL],
        request.app[CIPHER],
        path_msisdn(request),
        kind=kind,
        content_type=content_type,
        data=data,
        actor=request[PRINCIPAL_KEY].username,
        max_bytes=settings.kyc_max_document_bytes,
        country_code=settings.default_country_code,
    )
    return json_response(doc.as_json(), status=201 if created else 200)


@routes.get(
    "/api/v1/customers/{msisdn}/kyc-documents",
    response=DocumentsOut,
    permission="customers:read",
    summary="A customer's KYC documents, newest first (metadata; the file is at .../content)",
)
async def list_documents(request: web.Request) -> web.StreamResponse:
    docs = await kyc.documents(
        request.app[PG_POOL],
        path_msisdn(request),
        country_code=request.app[SETTINGS].default_country_code,
    )
    return json_response({"documents": [d.as_json() for d in docs]})


@routes.get(
    "/api/v1/customers/{msisdn}/kyc-documents/{id}/content",
    permission="customers:read",
    summary="The document's file, as uploaded (audited)",
)
async def document_content(request: web.Request) -> web.StreamResponse:
    doc, data = await kyc.content(
        request.app[PG_POOL],
        request.app[CIPHER],
        path_msisdn(request),
        _doc_id(request),
        actor=request[PRINCIPAL_KEY].username,
        country_code=request.app[SETTINGS].default_country_code,
    )
    extension = {"image/jpeg": "jpg", "image/png": "png", "application/pdf": "pdf"}
    return web.Response(
        body=data,
        content_type=doc.content_type,
        headers={
            "Content-Disposition": f'attachment; filename="kyc-{doc.id}-{doc.kind}.'
            f'{extension[doc.content_type]}"',
            "Cache-Control": "no-store",
        },
    )


@routes.post(
    "/api/v1/customers/{msisdn}/kyc-documents/{id}/review",
    body=ReviewIn,
    response=DocumentOut,
    permission="kyc:review",
    summary="Accept or reject a pending document, once; not by who uploaded it "
    "(403 FOUR_EYES; 409 when already reviewed)",
)
async def review_document(request: web.Request, body: ReviewIn) -> web.StreamResponse:
    doc = await kyc.review(
        request.app[PG_POOL],
        path_msisdn(request),
        _doc_id(request),
        decision=body.decision,
        note=body.note,
        actor=request[PRINCIPAL_KEY].username,
        country_code=request.app[SETTINGS].default_country_code,
    )
    return json_response(doc.as_json())
