"""The pure parts of KYC documents: what the bytes show, and what each tier asks for."""

from __future__ import annotations

import pytest

from core import kyc
from core.errors import ValidationFailed
from core.limits import TIERS


@pytest.mark.parametrize(
    ("data", "shown"),
    [
        (b"\xff\xd8\xff\xe1rest", "image/jpeg"),
        (b"\x89PNG\r\n\x1a\nrest", "image/png"),
        (b"%PDF-1.4 rest", "application/pdf"),
        (b"\x89PNG\r\n", None),  # cut short
        (b"GIF89a", None),
        (b"<html>", None),
        (b"", None),
    ],
)
def test_sniff(data: bytes, shown: str | None) -> None:
    assert kyc.sniff(data) == shown


@pytest.mark.parametrize(
    ("kind", "content_type", "data", "field"),
    [
        ("national_id", "image/jpeg", b"", "body"),
        ("national_id", "image/jpeg", b"%PDF-1.4", "body"),
        ("national_id", "image/gif", b"GIF89a", "content_type"),
        ("visa", "image/jpeg", b"\xff\xd8\xff", "kind"),
        ("national_id", "image/jpeg", b"\xff\xd8\xff" + b"\x00" * 10, "body"),  # too big
    ],
)
def test_check_upload_refuses(kind: str, content_type: str, data: bytes, field: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        kyc.check_upload(kind, content_type, data, max_bytes=12)
    assert caught.value.details["field"] == field


def test_every_tier_has_requirements_that_documents_can_meet() -> None:
    assert set(kyc.TIER_REQUIREMENTS) == set(TIERS)
    assert kyc.TIER_REQUIREMENTS["Basic"] == ()
    for needs in kyc.TIER_REQUIREMENTS.values():
        for name in needs:
            assert kyc.REQUIREMENTS[name] <= set(kyc.KINDS)
