#!/usr/bin/python3
"""Ory Hydra's key-row sealing, done independently with python3-cryptography.

  hydra_aead.py seal SECRET < plaintext   -> base64url(nonce || ct || tag), padded
  hydra_aead.py open SECRET < sealed      -> plaintext

key = SHA-256(secret), 12-byte random nonce, no additional data.
"""
import base64
import hashlib
import os
import sys

from cryptography.hazmat.primitives.ciphers.aead import AESGCM


def main():
    mode, secret = sys.argv[1], sys.argv[2].encode()
    aead = AESGCM(hashlib.sha256(secret).digest())
    data = sys.stdin.buffer.read()
    if mode == "seal":
        nonce = os.urandom(12)
        sys.stdout.write(base64.urlsafe_b64encode(nonce + aead.encrypt(nonce, data, None)).decode())
    else:
        raw = base64.urlsafe_b64decode(data.strip())
        sys.stdout.buffer.write(aead.decrypt(raw[:12], raw[12:], None))


main()
