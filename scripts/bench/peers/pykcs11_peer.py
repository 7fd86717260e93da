# peers.sh's Python peer: PyKCS11 (Debian python3-pykcs11), the JWT built by
# hand: claims JSON, base64url, the host's SHA-256 (DigestInfo for RS256,
# the input itself for EdDSA), C_SignInit + C_Sign (session.sign).
#   python3 pykcs11_peer.py MODULE TOKEN PIN ALG KEY_ID_HEX KID SECONDS
import base64, hashlib, json, sys, time
import PyKCS11

module, label, pin, alg, id_hex, kid, seconds = sys.argv[1:8]
lib = PyKCS11.PyKCS11Lib()
lib.load(module)
slot = next(s for s in lib.getSlotList(tokenPresent=True) if lib.getTokenInfo(s).label.strip() == label)
session = lib.openSession(slot, PyKCS11.CKF_SERIAL_SESSION)
session.login(pin)
key = session.findObjects([(PyKCS11.CKA_CLASS, PyKCS11.CKO_PRIVATE_KEY),
                           (PyKCS11.CKA_ID, bytes.fromhex(id_hex))])[0]
DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")
mechanism = PyKCS11.Mechanism({"EdDSA": 0x1057, "RS256": PyKCS11.CKM_RSA_PKCS,
                               "ES256": PyKCS11.CKM_ECDSA}[alg], None)


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


header = b64(json.dumps({"alg": alg, "kid": kid, "typ": "JWT"}, separators=(",", ":")).encode())


def sign():
    now = int(time.time())
    claims = {"iss": "https://issuer.example", "sub": "user-1234567890", "aud": "client-app",
              "scope": "openid profile", "iat": now, "exp": now + 300}
    signing_input = header + "." + b64(json.dumps(claims, separators=(",", ":")).encode())
    data = signing_input.encode()
    if alg != "EdDSA":
        digest = hashlib.sha256(data).digest()
        data = DIGEST_INFO + digest if alg == "RS256" else digest
    return signing_input + "." + b64(bytes(session.sign(key, data, mechanism)))


for _ in range(20):
    token = sign()
ops, start, elapsed, cpu_start = 0, time.monotonic(), 0.0, time.process_time()
while elapsed < float(seconds):
    for _ in range(8):
        token = sign()
    ops += 8
    elapsed = time.monotonic() - start
print(f"rate {ops / elapsed:.1f}\ncpu_rate {ops / (time.process_time() - cpu_start):.1f}\ntoken {token}")
session.logout()
session.closeSession()
