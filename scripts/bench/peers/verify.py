# peers.sh's verifier, independent of every peer: python3-jwcrypto checks
# each sample token's signature against the set's public JWK Set (by kid),
# that the header names the algorithm and kid, and that the claims parse.
#   python3 verify.py JWKS_FILE ALG KID < tokens (one per line: "peer token")
import json, sys
from jwcrypto import jwk, jws

jwks_file, alg, kid = sys.argv[1:4]
keys = jwk.JWKSet.from_json(open(jwks_file).read())
key = keys.get_key(kid)
failed = 0
for line in sys.stdin:
    peer, token = line.split()
    try:
        sig = jws.JWS()
        sig.deserialize(token)
        sig.verify(key, alg=alg)
        header = sig.jose_header
        claims = json.loads(sig.payload)
        assert header["alg"] == alg and header["kid"] == kid, header
        assert claims["exp"] > claims["iat"], claims
    except Exception as e:  # a peer that made a wrong token: say which
        print(f"{alg} {peer}: token does not verify: {e!r}")
        failed += 1
sys.exit(1 if failed else 0)
