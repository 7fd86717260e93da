#!/usr/bin/python3
"""Writes the seed corpus of the libFuzzer targets into spec/fuzz/corpus/<target>/.

The seeds are the RFC examples (spec/vectors), well-formed and malformed
tokens, JSON texts and keys in the byte layout each target reads
(spec/fuzz/fuzz_input.h: a selector byte, then fields with a two-byte length).
Run it again after changing a target's input layout (only that target's
seeds are rewritten when targets are named):

    /usr/bin/python3 fuzz/make_corpus.py [--out DIR] [TARGET...]

Every run writes the same bytes (spec/project/corpus_spec.lua checks that the
committed seeds are what it writes): keys come from the RFC examples or from
fixed private values, never from a generator. DIR defaults to spec/fuzz/corpus.
"""
import base64
import json
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))  # the repository


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def field(data):
    return struct.pack(">H", len(data)) + data


OUT = os.path.join(HERE, "corpus")


def write(target, name, data):
    folder = os.path.join(OUT, target)
    os.makedirs(folder, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)


def vector(name):
    with open(os.path.join(ROOT, "spec", "vectors", name + ".json")) as f:
        return json.load(f)


def examples():
    """(name, jwk, protected, payload, signature) of every RFC example."""
    out = []
    for e in vector("rfc7515")["examples"]:
        out.append(("rfc7515-" + e["section"], e["jwk"], e["protected"], e["payload"], e["signature"]))
    v = vector("rfc7520")
    for e in v["examples"]:
        out.append(("rfc7520-" + e["section"], v["keys"][e["key"]], e["protected"], e["payload"], e["signature"]))
    v = vector("rfc8037")
    for e in v["examples"]:
        out.append(("rfc8037-" + e["section"], v["jwk"], e["protected"], e["payload"], e["signature"]))
    return out


def b64url_seeds():
    for i, text in enumerate(["", "A", "AA", "AAA", "AAAA", "QQ", "QQ==", "QUI", "QUI=", "QUJD",
                              "-_-_", "a+b/", "AB==", "AQ", "AR", "____", "eyJhbGciOiJFUzI1NiJ9",
                              "Zm9v\n", "Zm9v=", "Zm9=v", "=", "=="]):
        write("b64url", "seed-%02d" % i, text)
    for name, _, protected, payload, signature in examples():
        write("b64url", name + "-signature", signature)


def jws_seeds():
    for name, _, protected, payload, signature in examples():
        write("jws", name + ".jws", "%s.%s.%s" % (protected, payload, signature))
    h = b64(b'{"alg":"ES256","kid":"k1"}')
    p = b64(b'{"sub":"a","exp":1700000000}')
    s = b64(bytes(range(64)))
    tokens = {
        "good": "%s.%s.%s" % (h, p, s),
        "padded": "%s.%s.%s==" % (h, p, s),
        "two-segments": "%s.%s" % (h, p),
        "four-segments": "%s.%s.%s.%s" % (h, p, s, s),
        "jwe": "a.b.c.d.e",
        "empty-payload": "%s..%s" % (h, s),
        "empty-signature": "%s.%s." % (h, p),
        "whitespace": "%s.%s.%s\n" % (h, p, s),
        "json-serialization": '{"payload":"%s","signatures":[]}' % p,
        "duplicate-alg": "%s.%s.%s" % (b64(b'{"alg":"ES256","alg":"none"}'), p, s),
        "escaped-duplicate": "%s.%s.%s" % (b64(b'{"alg":"ES256","\\u0061lg":"none"}'), p, s),
        "array-header": "%s.%s.%s" % (b64(b"[1,2]"), p, s),
        "nested-header": "%s.%s.%s" % (b64(b'{"a":' + b"[" * 40 + b"]" * 40 + b"}"), p, s),
        "utf8-header": "%s.%s.%s" % (b64('{"alg":"ES256","x":"\u00e9\U0001F600"}'.encode()), p, s),
        "surrogates": "%s.%s.%s" % (b64(b'{"x":"\\ud83d\\ude00","y":"\\ud800"}'), p, s),
    }
    for name, token in tokens.items():
        write("jws", name + ".jws", token)
    texts = {
        "header": '{"alg":"RS256","kid":"2011-04-29","typ":"JWT","crit":["exp"],"exp":1}',
        "claims": '{"iss":"joe",\r\n "exp":1300819380,\r\n "aud":["a","b"],"n":-1.5e+3,"t":true,"f":false,"z":null}',
        "jwks": json.dumps({"keys": [vector("rfc7638")["jwk"], {"kty": "EC", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}),
        "numbers": '[0,-0,1e5,1E-5,0.5,-12.25e+10,123456789012345678901234567890]',
        "bad-number": '{"a":01}',
        "nan": '{"a":NaN}',
        "trailing": '{"a":1} x',
        "control": '{"a":"\x01"}',
        "escapes": '{"a":"\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9"}',
    }
    for name, text in texts.items():
        write("jws", name + ".json", text)


def jwk_seeds():
    for name, key, protected, payload, signature in examples():
        sig = unb64(signature)
        data = (protected + "." + payload).encode()[:256]
        if key["kty"] == "RSA":
            write("jwk", name + "-rsa", b"\x00" + field(unb64(key["n"])) + field(unb64(key["e"])) + field(sig) + field(data))
        elif key["kty"] == "EC":
            curve = {"P-256": 0, "P-384": 1, "P-521": 2}[key["crv"]]
            write("jwk", name + "-ec", bytes([1 | curve << 2]) + field(unb64(key["x"])) + field(unb64(key["y"])) + field(sig) + field(data))
            # the private key, through the software key import
            members = [b"", b"", unb64(key["d"]), unb64(key["x"]), unb64(key["y"])]
            write("jwk", name + "-ec-private", b"\x03" + bytes([1 | curve << 2]) + b"".join(field(m) for m in members))
        else:
            write("jwk", name + "-okp", b"\x02" + field(unb64(key["x"])) + field(sig) + field(data))
            members = [b"", b"", unb64(key["d"]), unb64(key["x"]), b""]
            write("jwk", name + "-okp-private", b"\x03" + bytes([2 | 3 << 2]) + b"".join(field(m) for m in members))
    # an RSA private key with its CRT members: RFC 7515 A.2's, so every run
    # writes the same bytes (a key generated here would dirty the checkout)
    rsa_key = next(key for _, key, _, _, _ in examples() if key["kty"] == "RSA" and "p" in key)
    n, e, d = (unb64(rsa_key[m]) for m in ("n", "e", "d"))
    crt = [unb64(rsa_key[m]) for m in ("p", "q", "dp", "dq", "qi")]
    write("jwk", "rsa-private", b"\x03" + bytes([0]) + field(n) + field(e) + field(d) + field(b"") + field(b""))
    write("jwk", "rsa-private-crt", b"\x03" + bytes([0x40]) + field(n) + field(e) + field(d) + b"".join(field(c) for c in crt) + field(b"") + field(b""))
    # an even modulus: never a valid RSA key
    even = (int.from_bytes(n, "big") - 1).to_bytes(len(n), "big")
    write("jwk", "rsa-even", b"\x00" + field(even) + field(e))
    write("jwk", "rsa-tiny", b"\x00" + field(b"\xc1\x02\x03\x05") + field(b"\x01\x00\x01"))
    write("jwk", "ec-zero", b"\x01" + field(b"\x00" * 32) + field(b"\x00" * 32))
    write("jwk", "okp-x25519", b"\x06" + field(b"\x09" * 32))


def ec_seeds():
    oids = {
        "P-256": bytes.fromhex("06082a8648ce3d030107"),
        "P-384": bytes.fromhex("06052b81040022"),
        "P-521": bytes.fromhex("06052b81040023"),
        "Ed25519": bytes.fromhex("06032b6570"),
    }
    printable = b"\x13\x0cedwards25519"
    for name, key, protected, payload, signature in examples():
        if key["kty"] == "RSA":
            continue
        sig = unb64(signature)
        if key["kty"] == "EC":
            point = b"\x04" + unb64(key["x"]) + unb64(key["y"])
            params = oids[key["crv"]]
        else:
            point = unb64(key["x"])
            params = printable
        wrapped = bytes([0x04]) + (bytes([len(point)]) if len(point) < 128 else bytes([0x81, len(point)])) + point
        write("ec", name + "-der", b"\x00" + field(params) + field(wrapped) + field(sig))
        write("ec", name + "-raw", b"\x00" + field(params) + field(point) + field(sig))
    write("ec", "ed448", b"\x03" + field(b"\x13\x0aedwards448") + field(b"\x00" * 57) + field(b""))
    write("ec", "unknown-oid", b"\x00" + field(bytes.fromhex("06082a8648ce3d030106")) + field(b"\x04" * 65) + field(b""))
    write("ec", "long-length", b"\x01" + field(b"") + field(b"\x04\x82\x00\x41" + b"\x04" * 65) + field(b""))


def p11_map_seeds():
    """Key pairs as a token fills the engine's template (core/p11_map.c):
    CKA_CLASS, CKA_KEY_TYPE, CKA_ID, CKA_SIGN, CKA_DECRYPT, CKA_MODULUS,
    CKA_PUBLIC_EXPONENT, CKA_EC_PARAMS, CKA_EC_POINT, CKA_ALLOWED_MECHANISMS;
    CK_ULONGs little-endian."""
    def ulong(v):
        return struct.pack("<Q", v)

    def attribute(v):
        # mode 0: the length written; 1 (absent): unavailable; 2: (value, reported length)
        if v is None:
            return b"\x01" + field(b"")
        if isinstance(v, tuple):
            return b"\x02" + field(v[0]) + struct.pack(">Q", v[1])
        return b"\x00" + field(v)

    def obj(values, rv=0):
        return bytes([rv]) + b"".join(attribute(v) for v in values)

    def pair(key_type, kid, public_values, params=None, allowed=None):
        modulus, exponent, point = public_values
        private = [ulong(3), ulong(key_type), kid, b"\x01", None, modulus, exponent, params, None, allowed]
        public = [ulong(2), ulong(key_type), kid, None, None, modulus, exponent, params, point, None]
        return obj(private) + obj(public)

    def mechanisms(*types):
        return b"".join(ulong(t) for t in types)
    CKM_RSA_PKCS, CKM_RSA_PKCS_PSS, CKM_SHA384_RSA_PKCS_PSS = 0x01, 0x0D, 0x44

    p256 = bytes.fromhex("06082a8648ce3d030107")
    for name, key, protected, payload, signature in examples():
        if key["kty"] == "EC" and key["crv"] == "P-256":
            point = b"\x04" + unb64(key["x"]) + unb64(key["y"])
            write("p11_map", name + "-ec", b"\x02" + pair(3, b"ec-1", (None, None, b"\x04\x41" + point), p256))
            write("p11_map", name + "-ec-raw-point", b"\x02" + pair(3, b"ec-2", (None, None, point), p256))
        elif key["kty"] == "OKP":
            write("p11_map", name + "-ed25519", b"\x02" + pair(0x40, b"ed", (None, None, b"\x04\x20" + unb64(key["x"])), b"\x13\x0cedwards25519"))
    # RFC 7515 A.2's modulus: every run writes the same bytes
    n = next(unb64(key["n"]) for _, key, _, _, _ in examples() if key["kty"] == "RSA")
    write("p11_map", "rsa2048", b"\x02" + pair(0, b"rsa", (n, b"\x01\x00\x01", None)))
    # CKA_ALLOWED_MECHANISMS: a PSS-only mark naming SHA-384 (PS384), one
    # that also allows PKCS#1 v1.5 (RS256), and a length that is not a
    # whole number of CK_MECHANISM_TYPEs
    rsa = (n, b"\x01\x00\x01", None)
    write("p11_map", "rsa-allowed-ps384", b"\x02" + pair(0, b"ps", rsa, None, mechanisms(CKM_RSA_PKCS_PSS, CKM_SHA384_RSA_PKCS_PSS)))
    write("p11_map", "rsa-allowed-pkcs1-and-pss", b"\x02" + pair(0, b"rs", rsa, None, mechanisms(CKM_RSA_PKCS_PSS, CKM_RSA_PKCS)))
    write("p11_map", "rsa-allowed-ragged-length", b"\x02" + pair(0, b"ps", rsa, None, mechanisms(CKM_RSA_PKCS_PSS)[:5]))
    # the common non-conformance: a real length reported for a too-small
    # buffer, with CKR_ATTRIBUTE_TYPE_INVALID (the template mixes RSA and EC)
    private = obj([ulong(3), ulong(0), b"rsa", b"\x01", None, n, b"\x01\x00\x01", None, None, None])
    public = obj([ulong(2), ulong(0), b"rsa", None, None, (n, 2060), b"\x01\x00\x01", None, None, None], rv=1)
    write("p11_map", "rsa-modulus-real-length", b"\x02" + private + public)
    write("p11_map", "ec-point-absurd-length", b"\x01" + obj([ulong(2), ulong(3), b"ec", None, None, None, None, p256, (b"\x04" * 67, 2 ** 64 - 2), None]))



def pem_seeds():
    """Keys as PEM text (selector 0) and as bare DER for the target to wrap
    in a block of its kind (1 PRIVATE KEY, 2 RSA PRIVATE KEY, 3 EC PRIVATE
    KEY, 4 PUBLIC KEY). The keys are fixed (RFC 7515 A.2's RSA key, fixed
private values for the curves), so every run writes the same bytes."""
    from cryptography.hazmat.primitives import serialization as s
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
    sys.path.insert(0, os.path.join(ROOT, "spec", "helpers"))
    import rsa_of_size
    jwk = next(key for _, key, _, _, _ in examples() if key["kty"] == "RSA" and "p" in key)
    n, e, d, p, q, dp, dq, qi = (int.from_bytes(unb64(jwk[m]), "big")
                                 for m in ("n", "e", "d", "p", "q", "dp", "dq", "qi"))
    keys = {
        "rsa2048": rsa.RSAPrivateNumbers(p, q, d, dp, dq, qi, rsa.RSAPublicNumbers(e, n)).private_key(),
        "p256": ec.derive_private_key(0x1234567, ec.SECP256R1()),
        "p384": ec.derive_private_key(0x2345678, ec.SECP384R1()),
        "p521": ec.derive_private_key(0x3456789, ec.SECP521R1()),
        "secp256k1": ec.derive_private_key(0x456789A, ec.SECP256K1()),
        "ed25519": ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32))),
        "ed448": ed448.Ed448PrivateKey.from_private_bytes(bytes(range(57))),
    }
    for name, key in keys.items():
        write("pem", name + "-pkcs8.pem", b"\x00" + key.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption()))
        write("pem", name + "-public.pem", b"\x00" + key.public_key().public_bytes(s.Encoding.PEM, s.PublicFormat.SubjectPublicKeyInfo))
        write("pem", name + "-pkcs8.der", b"\x01" + key.private_bytes(s.Encoding.DER, s.PrivateFormat.PKCS8, s.NoEncryption()))
        write("pem", name + "-public.der", b"\x04" + key.public_key().public_bytes(s.Encoding.DER, s.PublicFormat.SubjectPublicKeyInfo))
    for name in ("rsa2048", "p256", "p521"):
        traditional = (b"\x02" if name.startswith("rsa") else b"\x03") + keys[name].private_bytes(
            s.Encoding.DER, s.PrivateFormat.TraditionalOpenSSL, s.NoEncryption())
        write("pem", name + "-traditional.der", traditional)
        write("pem", name + "-traditional.pem", b"\x00" + keys[name].private_bytes(
            s.Encoding.PEM, s.PrivateFormat.TraditionalOpenSSL, s.NoEncryption()))
    # an encrypted key, which import refuses without asking for a password
    # (legacy form with a fixed IV: real encryption would salt every run)
    body = base64.encodebytes(keys["p384"].private_bytes(
        s.Encoding.DER, s.PrivateFormat.TraditionalOpenSSL, s.NoEncryption())).decode()
    write("pem", "p384-encrypted.pem", b"\x00" + ("-----BEGIN EC PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n"
          "DEK-Info: AES-128-CBC,00112233445566778899AABBCCDDEEFF\n\n" + body +
          "-----END EC PRIVATE KEY-----\n").encode())
    params = "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n"
    write("pem", "p256-with-params.pem", b"\x00" + params.encode() + keys["p256"].private_bytes(
        s.Encoding.PEM, s.PrivateFormat.TraditionalOpenSSL, s.NoEncryption()))
    # issue 10 defect 1: one bit past the supported maximum, members consistent
    write("pem", "rsa-16391-bits.pem", b"\x00" + rsa_of_size.pem(rsa_of_size.members(16391)).encode())


def x509_seeds():
    """Certificates as a token's CKA_VALUE or a row's x5c holds them, for
    the fixed Ed25519 key of fuzz_x509.c (private bytes 00..1f): one of its
    own (Ed25519 signatures are deterministic, and serial and dates are
    fixed, so every run writes the same bytes), one holding another key,
    and the first cut short and with a byte after it."""
    import datetime
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization as s
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from cryptography.x509.oid import NameOID

    def certificate(key, cn):
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        start = datetime.datetime(2026, 1, 1)
        return (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(key.public_key()).serial_number(0x4a5f).not_valid_before(start)
                .not_valid_after(start + datetime.timedelta(days=365))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(key, None).public_bytes(s.Encoding.DER))

    own = certificate(ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32))), "fuzz")
    other = certificate(ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33))), "other")
    write("x509", "own", b"\x00" + field(own))
    write("x509", "other-key", b"\x00" + field(other))
    write("x509", "truncated", b"\x00" + field(own[:-9]))
    write("x509", "trailing-byte", b"\x00" + field(own + b"\x00"))
    # the issuer's SEQUENCE tagged primitive (0x10): OpenSSL reads it and
    # hands the bytes back as read (a fuzzer's find)
    issuer = own.index(b"\x30\x0f\x31\x0d", 20)
    write("x509", "issuer-primitive-tag", b"\x00" + field(own[:issuer] + b"\x10" + own[issuer + 1:]))


def records_seeds():
    """Key-state record sets (lua/jwkengine/lifecycle/records.lua): valid
    ones, and each corruption issue 19 lists (what another process or a
    fault writes into a set's data object)."""
    import json

    def record(state, **times):
        return {"state": state, "times": times}

    valid = {
        "valid-one-key": {"version": 1, "writer": "w", "records": {"a": record("current", current=1000)}},
        "valid-four-states-policy": {
            "version": 7, "writer": "nginx-1",
            "records": {"k1": record("retired", next=10, current=100, previous=200, retired=300),
                        "k2": record("previous", next=150, current=200, previous=400),
                        "k3": record("current", next=350, current=400),
                        "k4": record("next", next=700)},
            "policy": {"period": 300, "prepublish": 100, "retain": 200, "destroy_after": 1000}},
        "valid-destroyed": {"version": 3, "records": {"a": record("destroyed", destroyed=1.5)}},
        # structurally valid: what the rule makes of it is the rule's business
        "rival-every-key-current": {"version": 99, "records": {"a": record("current", current=1),
                                                               "b": record("current", current=1)}},
    }
    for name, value in valid.items():
        write("records", name, json.dumps(value, separators=(",", ":")))
    one = '"records":{"a":{"state":"current","times":{"current":1}}}'
    write("records", "corrupt-version-string", '{"version":"2",' + one + "}")
    write("records", "corrupt-records-not-object", '{"version":2,"records":5}')
    write("records", "corrupt-truncated", '{"version":2,"records":{"a":{"state":"current","ti')
    write("records", "corrupt-version-inf", '{"version":1e999,' + one + "}")
    write("records", "corrupt-record-without-times", '{"version":2,"records":{"a":{"state":"current"}}}')
    write("records", "corrupt-records-list", '{"version":2,"records":[{"kid":"a","state":"current"}]}')
    write("records", "corrupt-duplicate-member", '{"version":2,"records":{},"version":3}')
    write("records", "corrupt-policy-period",
          '{"version":2,' + one + ',"policy":{"prepublish":10,"retain":1,"period":5}}')
    # 16 digits: more than the 14 significant digits lua-cjson writes
    write("records", "version-beyond-14-digits", '{"version":9007199254740991,"records":{}}')
    write("records", "empty", "")


SEEDS = {"b64url": b64url_seeds, "jws": jws_seeds, "jwk": jwk_seeds, "ec": ec_seeds,
         "p11_map": p11_map_seeds, "pem": pem_seeds, "x509": x509_seeds,
         "records": records_seeds}

if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--out"]:
        OUT, args = args[1], args[2:]
    # every target, or only those named (seeds of others stay as they are)
    for target in args or SEEDS:
        SEEDS[target]()
