#!/usr/bin/python3
"""An RSA private key of exactly BITS bits whose members agree (n = p q,
d inverts e, the CRT members match) although p and q are not prime, as a
hostile key file would be: OpenSSL checks primality only when asked to.
Deterministic: the seed is the size.

    /usr/bin/python3 spec/helpers/rsa_of_size.py BITS   # JSON {pem, jwk}

Used by spec/core/hostile_keys_spec.lua and spec/fuzz/make_corpus.py."""
import base64
import json
import math
import random
import sys

E = 65537


def members(bits):
    rng = random.Random(bits)

    def odd(size):
        while True:
            v = rng.getrandbits(size) | (1 << (size - 1)) | 1
            if (v - 1) % E:
                return v
    while True:
        p, q = odd((bits + 1) // 2), odd(bits // 2 + 1)
        if (p * q).bit_length() == bits and math.gcd(p, q) == 1:
            break
    d = pow(E, -1, (p - 1) * (q - 1) // math.gcd(p - 1, q - 1))
    return dict(n=p * q, e=E, d=d, p=p, q=q, dp=d % (p - 1), dq=d % (q - 1), qi=pow(q, -1, p))


def _der_length(n):
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _der_integer(v):
    raw = v.to_bytes(v.bit_length() // 8 + 1, "big")  # a leading zero keeps it positive
    return b"\x02" + _der_length(len(raw)) + raw


def der(m):
    """The PKCS#1 RSAPrivateKey ("RSA PRIVATE KEY") encoding."""
    body = _der_integer(0) + b"".join(_der_integer(m[k]) for k in ("n", "e", "d", "p", "q", "dp", "dq", "qi"))
    return b"\x30" + _der_length(len(body)) + body


def pem(m):
    return ("-----BEGIN RSA PRIVATE KEY-----\n" + base64.encodebytes(der(m)).decode() +
            "-----END RSA PRIVATE KEY-----\n")


def jwk(m):
    def b64url(v):
        return base64.urlsafe_b64encode(v.to_bytes((v.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()
    out = {k: b64url(v) for k, v in m.items()}
    out["kty"] = "RSA"
    return out


if __name__ == "__main__":
    m = members(int(sys.argv[1]))
    print(json.dumps({"pem": pem(m), "jwk": jwk(m)}))
