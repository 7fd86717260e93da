#!/usr/bin/python3
"""Independent check of a compact JWS with python3-jwcrypto.

usage: jwcrypto_verify.py JWKS_FILE TOKEN_FILE
Prints "valid" and the payload, or "invalid: reason"; exits 0 or 1.
"""
import sys

from jwcrypto import jwk, jws


def main():
    with open(sys.argv[1]) as f:
        keys = jwk.JWKSet.from_json(f.read())
    with open(sys.argv[2]) as f:
        token = f.read().strip()
    obj = jws.JWS()
    try:
        obj.deserialize(token)
        header = obj.jose_header
        candidates = [k for k in keys if k.get("kid") == header.get("kid")] or list(keys)
        last = None
        for key in candidates:
            try:
                obj.verify(key, alg=header.get("alg"))
                print("valid")
                print(obj.payload.decode())
                return 0
            except Exception as e:  # try the next key
                last = e
        print("invalid: %s" % (last or "no key"))
        return 1
    except Exception as e:
        print("invalid: %s" % e)
        return 1


sys.exit(main())
