"""Encryption at rest and keyed look-up hashes for sensitive fields.

`FieldCipher` wraps cryptography's MultiFernet: the first key encrypts, every key decrypts, so a
key can rotate by putting a new one first and re-encrypting at leisure (`rotate`). Look-ups on an
encrypted field (a national id, say) go through `lookup_hash`, an HMAC-SHA256 under a key derived
from the secret, so equal values match without the value being stored in clear.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


def derive_key(secret: str, purpose: str, length: int = 32) -> bytes:
    """A key for one purpose from the gateway secret (HKDF-SHA256, purpose as info)."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=purpose.encode())
    return hkdf.derive(secret.encode())


class FieldCipher:
    """Encrypt and decrypt short text fields; derive look-up hashes."""

    def __init__(self, secret: str, extra_fernet_keys: Sequence[str] = ()) -> None:
        primary = base64.urlsafe_b64encode(derive_key(secret, "field-encryption"))
        keys = [Fernet(k) for k in extra_fernet_keys] + [Fernet(primary)]
        self._fernet = MultiFernet(keys)
        self._hash_key = derive_key(secret, "lookup-hash")

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise ValueError("ciphertext was not made by any configured key") from None

    def encrypt_bytes(self, plaintext: bytes) -> bytes:
        """For files (a KYC document): the Fernet token as bytes."""
        return self._fernet.encrypt(plaintext)

    def decrypt_bytes(self, token: bytes) -> bytes:
        try:
            return self._fernet.decrypt(token)
        except InvalidToken:
            raise ValueError("ciphertext was not made by any configured key") from None

    def rotate(self, token: str) -> str:
        """Re-encrypt under the primary key (for a background re-keying job)."""
        return self._fernet.rotate(token.encode()).decode()

    def lookup_hash(self, value: str) -> str:
        return hmac.new(self._hash_key, value.encode(), hashlib.sha256).hexdigest()
